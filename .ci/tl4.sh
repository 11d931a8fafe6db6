#!/usr/bin/env bash
# CI stage 2: the suite on TransformerLens 4.x (which has no HookedTransformer), in its own venv
# (TL4_VENV, default .venv-tl4) so the main stage keeps TL 3.9. Test modules that build
# HookedTransformers skip themselves here with the reason (tests/model_zoo.py, planted.py,
# test_target.py); the bridge backend, analysis on bridges (test_analysis_bridge.py), the target
# as a native bridge (test_target_model.py), the CLI end to end (test_cli.py) and the tutorials
# run. Then a real `tl-vpd main --quick`. See the README for the measured duration.
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
tl-vpd main --quick --out "$RUN" --no-progress
rm -rf "$RUN"
