#!/usr/bin/env bash
# The recipe end to end: preprocess -> export -> inference -> decode (s1) -> COCO AP (s2),
# then boxes drawn on a few of the evaluated images (CenterNet_demo.py).
#
#   bash run_all.sh                       # real weights + COCO if present, else the demo
#   bash run_all.sh --demo                # generated data + random weights (smoke test)
#   bash run_all.sh --limit 500           # the first 500 val2017 images, for a quick real run
#   bash run_all.sh --backend ascend      # ATC + ais_bench on an Ascend NPU
#   bash run_all.sh --backend torch --device cuda --precision fp16   # PyTorch on a GPU, no export
#
# Sets up .venv on first use. Every intermediate goes under --workdir; a re-run
# after an interruption resumes (finished bins and outputs are kept).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  cat <<'USAGE'
usage: bash run_all.sh [options]
  --weights PATH     ctdet DLA-34 checkpoint (default: ./ctdet_coco_dla_2x.pth)
  --data DIR         dataset root with coco/val2017 and coco/annotations/instances_val2017.json
                     (default: ./data)
  --demo             run on generated data and random weights instead (AP means nothing)
  --demo-images N    number of generated images for the demo (default: 24)
  --batchsize B      inference batch size (default: 1)
  --backend NAME     onnxruntime | ascend | torch (default: onnxruntime); torch runs the
                     checkpoint in PyTorch (CPU or CUDA) with no export
  --device NAME      cpu | cuda | tensorrt (ONNX Runtime), cpu | cuda (torch) (default: cpu)
  --precision P      torch only: fp32 | tf32 | fp16 | bf16 (default: fp32)
  --threads N        CPU intra-op threads, 0 = all cores (default: 0)
  --workdir DIR      folder for every intermediate (default: ./work, ./work/demo for --demo)
  --limit N          only the first N images (by file name) (default: all)
  --stream           one streaming pass (CenterNet_eval.py) instead of the staged scripts:
                     no .bin files on disk (default: staged)
  --soc_version S    Ascend chip for ATC, e.g. Ascend310P3 (default: read from npu-smi)
  --keep             keep the input/output .bin files after a successful run
                     (default: delete them once the AP is computed; 43 GB for full val2017)
  -h, --help         this text
USAGE
}

die() { echo "error: $*" >&2; exit 2; }

weights=""; data=""; demo=0; demo_images=24; batchsize=1; backend=onnxruntime; device=cpu; threads=0
workdir=""; limit=""; stream=0; soc=""; keep=0; precision=fp32
while [ $# -gt 0 ]; do
  case "$1" in
    --weights) weights="${2:?}"; shift 2 ;;
    --data) data="${2:?}"; shift 2 ;;
    --demo) demo=1; shift ;;
    --demo-images) demo_images="${2:?}"; shift 2 ;;
    --batchsize) batchsize="${2:?}"; shift 2 ;;
    --backend) backend="${2:?}"; shift 2 ;;
    --device) device="${2:?}"; shift 2 ;;
    --threads) threads="${2:?}"; shift 2 ;;
    --precision) precision="${2:?}"; shift 2 ;;
    --workdir) workdir="${2:?}"; shift 2 ;;
    --limit) limit="${2:?}"; shift 2 ;;
    --stream) stream=1; shift ;;
    --soc_version) soc="${2:?}"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done
case "$backend" in onnxruntime|ascend|torch) ;; *) die "--backend must be onnxruntime, ascend or torch" ;; esac
case "$precision" in fp32|tf32|fp16|bf16) ;; *) die "--precision must be fp32, tf32, fp16 or bf16" ;; esac
[ "$precision" = fp32 ] || [ "$backend" = torch ] || die "--precision is for --backend torch"
[ "$backend" != torch ] || [ "$device" = cpu ] || [ "$device" = cuda ] || die "--backend torch runs on cpu or cuda"
[[ "$batchsize" =~ ^[1-9][0-9]*$ ]] || die "--batchsize must be a positive integer"
[ -z "$limit" ] || [[ "$limit" =~ ^[1-9][0-9]*$ ]] || die "--limit must be a positive integer"
[ "$stream" = 0 ] || [ "$backend" != ascend ] || die "--stream runs on ONNX Runtime or torch, not ascend"

cd "$here"
source tools/venv.sh

weights="${weights:-./ctdet_coco_dla_2x.pth}"
data="${data:-./data}"
ann="$data/coco/annotations/instances_val2017.json"
images="$data/coco/val2017"
if [ "$demo" = 0 ]; then
  missing=()
  [ -f "$weights" ] || missing+=("weights: $weights not found. Download ctdet_coco_dla_2x.pth from the upstream model zoo (https://github.com/xingyizhou/CenterNet/blob/master/readme/MODEL_ZOO.md, COCO ctdet DLA-34 2x) or the recipe's link, and put it there or pass --weights.")
  [ -d "$images" ] || missing+=("images: $images not found. Download COCO 2017 Val images (http://images.cocodataset.org/zips/val2017.zip) and unzip into $data/coco/.")
  [ -f "$ann" ] || missing+=("annotations: $ann not found. Download 2017 Train/Val annotations (http://images.cocodataset.org/annotations/annotations_trainval2017.zip) and unzip into $data/coco/.")
  if [ ${#missing[@]} -gt 0 ]; then
    echo "The real run needs files that are not here:"
    printf '  - %s\n' "${missing[@]}"
    echo "Running the demo instead (generated data, random weights)."
    echo
    demo=1
  fi
fi
if [ "$demo" = 1 ]; then
  workdir="${workdir:-./work/demo}"
  echo "== DEMO: a smoke test on generated images with random weights; its AP means nothing =="
  "$PY" -m centernet.demo "$workdir" --images "$demo_images"
  data="$workdir/data"; weights="$workdir/ctdet_demo.pth"
  ann="$data/coco/annotations/instances_val2017.json"; images="$data/coco/val2017"
fi
workdir="${workdir:-./work}"
mkdir -p "$workdir"

prep="$workdir/prep_dataset"
dump="dumpout_bs$batchsize"
results="$workdir/save/results.json"
evaldir="$workdir/run_eval_result"
limit_args=(); [ -z "$limit" ] || limit_args=(--limit "$limit")

declare -a stage_names=() stage_secs=()
stage() {  # stage NAME CMD...: run, time, and record
  local name="$1"; shift
  echo
  echo "== $name: $*"
  local t0="$EPOCHREALTIME"
  "$@"
  local t; t=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
  stage_names+=("$name"); stage_secs+=("$t")
  printf '== %s done in %.1f s\n' "$name" "$t"
}

# The torch backend runs the checkpoint itself: no export stage.
torch_args=(); [ "$backend" != torch ] || torch_args=(--backend torch --precision "$precision")
if [ "$stream" = 1 ]; then
  if [ "$backend" = torch ]; then
    model="$weights"
  else
    model="$workdir/CenterNet.onnx"
    [ "$model" -nt "$weights" ] || stage export "$PY" CenterNet_pth2onnx.py "$weights" "$model"
  fi
  stage stream-eval "$PY" CenterNet_eval.py --model "$model" --dataset "$data" --batchsize "$batchsize" \
    --device "$device" --threads "$threads" --output "$results" --resultfolder "$evaldir" \
    "${limit_args[@]}" "${torch_args[@]}"
else
  stage preprocess "$PY" CenterNet_preprocess.py "$images" "$prep" "${limit_args[@]}"
  if [ "$backend" = torch ]; then
    stage infer bash run_infer.sh --model "$weights" --input "$prep" --output "$workdir/result" \
      --output_dirname "$dump" --batchsize "$batchsize" --device "$device" --threads "$threads" --skip-existing \
      "${torch_args[@]}"
  elif [ "$backend" = onnxruntime ]; then
    model="$workdir/CenterNet.onnx"
    # Export is skipped when a complete (atomically written) file newer than the weights exists.
    if [ "$model" -nt "$weights" ]; then echo; echo "== export: $model is up to date"
    else stage export "$PY" CenterNet_pth2onnx.py "$weights" "$model"; fi
    stage infer bash run_infer.sh --model "$model" --input "$prep" --output "$workdir/result" \
      --output_dirname "$dump" --batchsize "$batchsize" --device "$device" --threads "$threads" --skip-existing
  else
    onnx="$workdir/CenterNet_ascend.onnx"
    [ "$onnx" -nt "$weights" ] || stage export "$PY" CenterNet_pth2onnx.py "$weights" "$onnx" --target ascend
    soc_args=(); [ -z "$soc" ] || soc_args=(--soc_version "$soc")
    om="$workdir/CenterNet_bs$batchsize.om"
    [ "$om" -nt "$onnx" ] || stage convert bash convert_om.sh "$onnx" --batchsizes "$batchsize" \
      --output_prefix "$workdir/CenterNet" "${soc_args[@]}"
    stage infer bash run_infer.sh --model "$om" --input "$prep" --output "$workdir/result" \
      --output_dirname "$dump" --batchsize "$batchsize"
  fi
  stage postprocess_s1 "$PY" CenterNet_postprocess_s1.py --bin_data_path="$workdir/result/$dump/" \
    --dataset="$data" --meta "$prep/meta.json" --output "$results"
  stage postprocess_s2 "$PY" CenterNet_postprocess_s2.py --dataset="$data" --results "$results" \
    --resultfolder "$evaldir" --meta "$prep/meta.json"
  if [ "$keep" = 0 ]; then
    echo; echo "== cleanup: removing $prep and $workdir/result (use --keep to keep them)"
    rm -rf "$prep" "$workdir/result"
  fi
fi

# See what the detector sees on a few of the evaluated images (the first by
# file name, as --limit takes them). The ONNX Runtime export when there is
# one, else the checkpoint (exported once, cached beside it); with --backend
# torch, the checkpoint in PyTorch.
annotate() {  # never fails the run: the evaluation above stands either way
  "$PY" CenterNet_demo.py "$@" || echo "warning: CenterNet_demo.py exited with status $? (see above)"
}
annotated="$workdir/demo_out"
demo_model="$workdir/CenterNet.onnx"; [ "$demo_model" -nt "$weights" ] || demo_model="$weights"
[ "$backend" != torch ] || demo_model="$weights"
stage annotate annotate --model "$demo_model" "$images" --limit 4 --output "$annotated" \
  --device "$device" --threads "$threads" --no-progress "${torch_args[@]}"

echo
echo "== summary ($([ "$demo" = 1 ] && echo "DEMO, AP means nothing" || echo "$weights on $data"))"
for i in "${!stage_names[@]}"; do printf '  %-16s %8.1f s\n' "${stage_names[$i]}" "${stage_secs[$i]}"; done
"$PY" -m centernet.report "$evaldir/metrics.json"
echo
echo "pictures:"
echo "  annotated images: $annotated/ (detections.json beside them)"
echo "  precision-recall: $evaldir/pr_curves.png"
echo "  AP per class:     $evaldir/per_class_ap.png"
