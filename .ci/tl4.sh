#!/usr/bin/env bash
# CI stage 2: TransformerLens 4.x (which has no HookedTransformer), in its own venv (TL4_VENV,
# default .venv-tl4) so the main stage keeps TL 3.9. It proves what issue #15 asks of TL 4:
#   1. the non-slow suite (test modules that build HookedTransformers skip themselves, with the
#      reason: tests/model_zoo.py, planted.py, test_target.py); this includes `tl-vpd main` on
#      tiny configs (test_cli.py) and the tutorials in their quick setting;
#   2. the real `tl-vpd main --quick`, its target built and trained as a native TransformerBridge;
#   3. tutorial 03 in its full setting on that run: it loads the run's target and decomposition
#      and runs each of its analysis entry points on them (tests/test_tutorials.py).
# Steps 2 and 3 run on one torch thread: on a shared 2-core machine two threads spin-wait for
# each other, and a decomposition step cost 3-5 s of CPU instead of 0.26-0.33 s (measured
# 2026-12-02 under load 4-5; this, not the bridge, made the quick main take 15.6 min). Measured
# there under load: pip ~2.5-3.5 min, suite ~5 min, step 2 3.8 min (1 thread, load 2-3.4),
# step 3 24 s; the whole stage ~12-13 min.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TL4_VENV:-.venv-tl4}"
python3 -m venv "$VENV"
. "$VENV/bin/activate"
pip install -q --upgrade pip
pip install -q -c <(grep "^torch==" constraints.txt) -e ".[dev,vis]" "transformer-lens>=4,<5"
python -c "import importlib.metadata as m; print('transformer-lens', m.version('transformer-lens'))"
python -m pytest -q -m "not slow"
RUN="$(mktemp -d)"
trap 'rm -rf "$RUN"' EXIT
SECONDS=0
tl-vpd --threads 1 main --quick --out "$RUN/main" --no-progress
echo "tl-vpd main --quick on TL 4: ${SECONDS}s"
SECONDS=0
TL_VPD_MAIN_RUN="$RUN/main" python -m pytest -q tests/test_tutorials.py -k main_run
echo "tutorial 03 on its run: ${SECONDS}s"
