#!/usr/bin/env bash
# CI stage 2: the suite on TransformerLens 4.x (which has no HookedTransformer), in its own venv
# (TL4_VENV, default .venv-tl4) so the main stage keeps TL 3.9. Test modules that build
# HookedTransformers skip themselves here with the reason (tests/model_zoo.py, planted.py,
# test_target.py); the bridge backend, analysis on bridges (test_analysis_bridge.py), the target
# as a native bridge (test_target_model.py), `tl-vpd main` end to end on tiny configs
# (test_cli.py) and the tutorials run. Measured on the shared 2-core machine under load: pip
# ~2.5-3.5 min, suite 5.2 min. The real `tl-vpd main --quick` took 15.6 min there (target 186 s,
# decompose 744 s), so it runs only with TL4_QUICK_MAIN=1.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TL4_VENV:-.venv-tl4}"
python3 -m venv "$VENV"
. "$VENV/bin/activate"
pip install -q --upgrade pip
pip install -q -c <(grep "^torch==" constraints.txt) -e ".[dev,vis]" "transformer-lens>=4,<5"
python -c "import importlib.metadata as m; print('transformer-lens', m.version('transformer-lens'))"
python -m pytest -q -m "not slow"
if [ "${TL4_QUICK_MAIN:-0}" = 1 ]; then
  RUN="$(mktemp -d)"
  tl-vpd main --quick --out "$RUN" --no-progress
  rm -rf "$RUN"
fi
