#!/usr/bin/env bash
# Set-up behind `make test` and `make bench`: find or make a Python with torch and triton, and
# install softlight into it (editable). It writes the interpreter's path to .python.
#
# - PYTHON=/path/to/python make test: use that interpreter.
# - A python3 that already imports torch and triton (a GPU machine, maybe with no package
#   index): install into it, offline, reusing its torch and triton. A virtual environment made
#   from it would not see them (--system-site-packages from inside another virtual environment
#   sees the base interpreter's packages, not the outer environment's), so none is made.
# - Otherwise: a .venv here. Without an NVIDIA GPU it gets the CPU build of torch
#   (torch==2.13.0), never the CUDA packages a plain `pip install torch` pulls.
set -euo pipefail
cd "$(dirname "$0")/.."

# Triton 3.6 is what the GPU machines run. (Its interpreter's conversion that NumPy 2.4 refuses
# is corrected in kernels/interpreter.py, so any NumPy does.)
TRITON_PIN="triton==3.6.0"
CPU_TORCH_PIN="torch==2.13.0"

has_torch_and_triton() { "$1" -c "import torch, triton" >/dev/null 2>&1; }

if [ -n "${PYTHON:-}" ]; then
    py=$(command -v "$PYTHON")
elif has_torch_and_triton python3; then
    py=$(python3 -c "import sys; print(sys.executable)")
else
    py=$PWD/.venv/bin/python
fi

if [ "$py" = "$PWD/.venv/bin/python" ]; then
    [ -x "$py" ] || python3 -m venv .venv
    if ! has_torch_and_triton "$py"; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
            torch_req=torch   # a GPU: the regular (CUDA) build
        else
            torch_req=$CPU_TORCH_PIN
        fi
        echo "setup: installing $torch_req and $TRITON_PIN into .venv"
        "$py" -m pip install --quiet "$torch_req" "$TRITON_PIN"
    fi
    echo "setup: installing softlight (editable) with its test and Hugging Face extras into .venv"
    "$py" -m pip install --quiet -e ".[test,hf]"
else
    echo "setup: using $py, which already has torch and triton; installing softlight into it (no downloads)"
    "$py" -m pip install --quiet --no-deps --no-build-isolation -e .
    # The runtime and test dependencies it lacks, by distribution name (module sklearn is scikit-learn).
    # transformers and accelerate are left as they are: without them the Hugging Face tests skip.
    missing=$("$py" -c "
import importlib.util
needed = {'numpy': 'numpy', 'pandas': 'pandas', 'matplotlib': 'matplotlib', 'tqdm': 'tqdm', 'pytest': 'pytest',
          'hypothesis': 'hypothesis', 'scipy': 'scipy', 'sklearn': 'scikit-learn'}
print(' '.join(dist for module, dist in needed.items() if importlib.util.find_spec(module) is None))")
    if [ -n "$missing" ]; then
        echo "setup: $py lacks: $missing; trying to install them"
        "$py" -m pip install --quiet $missing
    fi
fi

"$py" -c "import softlight, softlight.reference, softlight.bench" || { echo "setup: softlight does not import" >&2; exit 1; }
echo "$py" > .python
echo "setup: done ($("$py" -c 'import torch, triton; print(f"torch {torch.__version__}, triton {triton.__version__}")'))"
