#!/usr/bin/env bash
# Installs SeqGAN Studio (editable) with its test tools.
# torch: an existing install is kept as it is (a user's CUDA build keeps working). Where there is none, the
# pinned 2.13.0 is installed first; on this project's CPU machines that resolves to a local CPU wheel, so pip
# never pulls the several GB of CUDA packages that an open "torch>=..." requirement would.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet "torch==2.13.0"
elif ! "$PYTHON" -c "import sys, torch; sys.exit(tuple(map(int, torch.__version__.split('.')[:2])) < (2, 1))"; then
    # pip would replace it (with its newest build, on Linux several GB of CUDA packages): say so instead
    echo "setup.sh: torch $("$PYTHON" -c 'import torch; print(torch.__version__)') is older than 2.1, which" \
         "SeqGAN Studio needs: upgrade it (your CUDA build: see pytorch.org) or use a fresh environment" >&2
    exit 1
fi
"$PYTHON" -m pip install --quiet -e ".[test]"
"$PYTHON" -c "import torch, seqgan; print(f'seqgan {seqgan.__version__} with torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
