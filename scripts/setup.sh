#!/usr/bin/env bash
# Idempotent set-up: a .venv with the CPU build of torch first, then adapterkit (editable) with dev tools and
# the serve extra (FastAPI + uvicorn: the server tests start a real HTTP server).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
# torch first, so that nothing pulls a GPU build: the CPU wheel comes from this machine's wheel folder.
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0"
fi
"${PIP[@]}" -e ".[dev,serve]"
