# Shared set-up of the GPU benchmark scripts (sourced): repo root, Python, output folder, workers, CUDA check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
OUT_DIR="${OUT:-benchmarks/results}"
WORKERS="${WORKERS:-8}"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
