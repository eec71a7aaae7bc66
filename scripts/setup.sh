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
fi
"$PYTHON" -m pip install --quiet -e ".[test]"
"$PYTHON" -c "import torch, seqgan; print(f'seqgan {seqgan.__version__} with torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
