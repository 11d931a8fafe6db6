#!/usr/bin/env bash
# CI stage 2: the TransformerBridge backend on TransformerLens 4.x (which has no HookedTransformer),
# in its own venv (TL4_VENV, default .venv-tl4) so the main stage keeps TL 3.9. Runs
# tests/test_bridge.py only; about 2-3.5 min on the shared 2-core machine, nearly all of it pip.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TL4_VENV:-.venv-tl4}"
python3 -m venv "$VENV"
. "$VENV/bin/activate"
pip install -q --upgrade pip
pip install -q -c <(grep "^torch==" constraints.txt) -e ".[dev]" "transformer-lens>=4,<5"
python -c "import importlib.metadata as m; print('transformer-lens', m.version('transformer-lens'))"
python -m pytest -q tests/test_bridge.py
