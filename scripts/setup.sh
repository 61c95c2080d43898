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
    # Without build isolation the interpreter's own setuptools reads pyproject.toml, whose SPDX
    # `license` needs setuptools 77 or later.
    # With no package index, a setuptools wheel carried in .whl/ (pip download setuptools -d .whl)
    # is the way to a newer one.
    new_enough() { "$py" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" 2>/dev/null; }
    if ! new_enough; then
        "$py" -m pip install --quiet --no-index --find-links .whl 'setuptools>=77' 2>/dev/null \
            || "$py" -m pip install --quiet 'setuptools>=77' 2>/dev/null || true
    fi
    if ! new_enough; then
        echo "setup: $py needs setuptools >= 77 to install softlight (it reads the licence as an SPDX expression);" \
             "carry a wheel (pip download setuptools -d .whl) or upgrade it" >&2
        exit 1
    fi
    "$py" -m pip install --quiet --no-deps --no-build-isolation -e .
    # What the tests need besides torch and triton: the runtime dependencies and the test and
    # bench extras, read from pyproject.toml so that this list cannot drift from it.
    # transformers (the hf extra) is left as it is: without it the Hugging Face tests skip.
    missing=$("$py" -c "
import importlib.metadata, re, tomllib
project = tomllib.load(open('pyproject.toml', 'rb'))['project']
extras = project['optional-dependencies']
wanted, missing = list(project['dependencies']) + extras['test'], set()
while wanted:
    requirement = wanted.pop()
    name = re.match(r'[A-Za-z0-9._-]+', requirement).group()
    if name == project['name']:  # softlight[bench] and the like: the extras it names
        wanted += [r for extra in re.findall(r'[A-Za-z0-9._-]+', requirement[len(name):]) for r in extras[extra]]
        continue
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        missing.add(name)
print(' '.join(sorted(missing - {'torch', 'triton'})))")
    if [ -n "$missing" ]; then
        echo "setup: $py lacks: $missing; trying to install them"
        "$py" -m pip install --quiet $missing
    fi
    # Only tests/test_opinfo.py needs expecttest, and skips without it: its absence (a GPU machine
    # with no package index that was not given its wheel in .whl/) must not stop the set-up.
    if ! "$py" -c "import expecttest" >/dev/null 2>&1; then
        "$py" -m pip install --quiet expecttest \
            || echo "setup: could not install expecttest; tests/test_opinfo.py will skip"
    fi
fi

"$py" -c "import softlight, softlight.reference, softlight.bench" || { echo "setup: softlight does not import" >&2; exit 1; }
echo "$py" > .python
echo "setup: done ($("$py" -c 'import torch, triton; print(f"torch {torch.__version__}, triton {triton.__version__}")'))"
