#!/usr/bin/env bash
# Create or reuse the repository's virtual environment (.venv) and install sharewise into it.
# torch: when the environment has none, install torch==2.13.0 first (a CPU build that these
# machines keep on disk), so that pip never pulls a multi-GB CUDA build; a torch that is
# already there (in .venv or, through --system-site-packages, the user's own) is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv --system-site-packages .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "sharewise setup: torch not found, installing torch==2.13.0"
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
else
  echo "sharewise setup: using torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
fi
.venv/bin/python -m pip install --quiet -e ".[test,volumes,fast]"
touch .venv/.installed
