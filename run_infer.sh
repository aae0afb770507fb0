#!/usr/bin/env bash
# ais_bench's command line for every backend:
#   bash run_infer.sh --model CenterNet.onnx --input prep_dataset --output result \
#       --output_dirname dumpout_bs1 --batchsize 1
#   bash run_infer.sh --model CenterNet_bs1.om --input prep_dataset ...   (Ascend: ais_bench)
#   bash run_infer.sh --model CenterNet.onnx --loop 20 --batchsize 4      (pure throughput)
# See `python CenterNet_infer.py --help` for the ONNX Runtime options.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py=python3
# How to name this script in a message ("to resume, run: bash run_infer.sh ... --skip-existing").
CENTERNET_INFER_PROG="bash $(printf %q "$0")" exec "$py" "$here/CenterNet_infer.py" "$@"
