#!/usr/bin/env bash
# The recipe end to end: preprocess -> export -> inference -> decode (s1) -> COCO AP (s2),
# then boxes drawn on a few of the evaluated images (CenterNet_demo.py).
#
#   bash run_all.sh                       # real weights + COCO if present, else the demo
#   bash run_all.sh --demo                # the stand-in detector on generated shapes (a real AP, not COCO's)
#   bash run_all.sh --limit 500           # the first 500 val2017 images, for a quick real run
#   bash run_all.sh --backend ascend      # ATC + ais_bench on an Ascend NPU
#   bash run_all.sh --keep-res --flip     # upstream's test modes (also --scales, streaming only)
#   bash run_all.sh --backend torch --device cuda --precision fp16   # PyTorch on a GPU, no export
#
# Sets up .venv on first use. Every intermediate goes under --workdir; a re-run
# after an interruption resumes (finished bins and outputs are kept).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
run_t0="$EPOCHREALTIME"

usage() {
  cat <<'USAGE'
usage: bash run_all.sh [options]
  --weights PATH     upstream checkpoint, ctdet or multi_pose, any of its COCO networks
                     (default: ./ctdet_coco_dla_2x.pth)
  --data DIR         dataset root with coco/val2017 and coco/annotations/instances_val2017.json
                     (person_keypoints_val2017.json for a multi_pose checkpoint)
                     (default: ./data)
  --demo             run the stand-in detector (ResNet-18 + DCN trained on generated shapes; it
                     detects shapes, not COCO objects) on its held-out generated images instead
  --demo-images N    the first N held-out images for the demo (default: all 200, on which the
                     stand-in's AP was recorded)
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
  --keep-res         keep resolution (upstream's 37.4 AP mode): each image at its own size,
                     rounded up to a multiple of 32, with a dynamic-size model (default: fixed 512)
  --flip             flip test (39.2 AP with --keep-res): staged, the exported graph holds it;
                     with --backend torch it runs the streaming evaluation (default: off)
  --scales LIST      multi-scale test, e.g. 0.5,0.75,1,1.25,1.5 (41.7 AP with --keep-res --flip);
                     runs the streaming evaluation (default: 1)
  --upstream-rounding  boxes and scores rounded to 2 decimals as upstream's results JSON
                     (default: full precision)
  --soc_version S    Ascend chip for ATC, e.g. Ascend310P3 (default: read from npu-smi)
  --keep             keep the input/output .bin files after a successful run
                     (default: delete them once the AP is computed; 43 GB for full val2017)
  -h, --help         this text
USAGE
}

die() { echo "error: $*" >&2; exit 2; }
source "$here/tools/options.sh"  # unknown_option: the one line for a mistyped option

weights=""; data=""; weights_given=""; data_given=""; demo=0; demo_images=""; batchsize=1; backend=onnxruntime; device=cpu; threads=0
workdir=""; limit=""; stream=0; soc=""; keep=0; keep_res=0; flip=0; scales=1; rounding=0; precision=fp32
while [ $# -gt 0 ]; do
  case "$1" in
    --weights) weights="${2:?}"; weights_given=1; shift 2 ;;
    --data) data="${2:?}"; data_given=1; shift 2 ;;
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
    --keep-res) keep_res=1; shift ;;
    --flip) flip=1; shift ;;
    --scales) scales="${2:?}"; shift 2 ;;
    --upstream-rounding) rounding=1; shift ;;
    --soc_version) soc="${2:?}"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) unknown_option "$1" ;;
  esac
done
case "$backend" in onnxruntime|ascend|torch) ;; *) die "--backend must be onnxruntime, ascend or torch" ;; esac
case "$precision" in fp32|tf32|fp16|bf16) ;; *) die "--precision must be fp32, tf32, fp16 or bf16" ;; esac
[ "$precision" = fp32 ] || [ "$backend" = torch ] || die "--precision is for --backend torch"
[ "$backend" != torch ] || [ "$device" = cpu ] || [ "$device" = cuda ] || die "--backend torch runs on cpu or cuda"
[[ "$batchsize" =~ ^[1-9][0-9]*$ ]] || die "--batchsize must be a positive integer"
[ -z "$limit" ] || [[ "$limit" =~ ^[1-9][0-9]*$ ]] || die "--limit must be a positive integer"
[[ "$scales" =~ ^[0-9.]+(,[0-9.]+)*$ ]] || die "--scales wants comma-separated numbers, e.g. 0.5,0.75,1,1.25,1.5"
if [ "$scales" != 1 ] && [ "$stream" = 0 ]; then
  [ "$backend" != ascend ] || die "--scales runs in the streaming evaluation, on ONNX Runtime or torch"
  echo "note: the multi-scale test runs in the streaming evaluation (CenterNet_eval.py): --stream"
  stream=1
fi
if [ "$flip" = 1 ] && [ "$backend" = torch ] && [ "$stream" = 0 ]; then
  # Staged, the flip test lives in an exported graph; the PyTorch backend has none.
  echo "note: with --backend torch the flip test runs in the streaming evaluation (CenterNet_eval.py): --stream"
  stream=1
fi
[ "$stream" = 0 ] || [ "$backend" != ascend ] || die "--stream runs on ONNX Runtime or torch, not ascend"

# One resume hint after a Ctrl-C: each stage's script says what it kept,
# then this (in place of its own way to go on).
export CENTERNET_RESUME_HINT="run the same run_all.sh command again to go on from there"
in_stage=0
# Between stages (a stage reports its own Ctrl-C, and the exit status says it was one).
trap '[ "$in_stage" = 1 ] || { echo "interrupted: $CENTERNET_RESUME_HINT" >&2; exit 130; }' INT

cd "$here"
setup_t0="$EPOCHREALTIME"
source tools/venv.sh
setup_secs=$(awk -v a="$setup_t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')

weights="${weights:-./ctdet_coco_dla_2x.pth}"
data="${data:-./data}"
ann="$data/coco/annotations/instances_val2017.json"
images="$data/coco/val2017"
# A multi_pose checkpoint (its heads say so) is scored on COCO's keypoint annotations.
if [ "$demo" = 0 ] && [ -f "$weights" ] && [ "$("$PY" -m centernet.cli.check_weights --task "$weights" 2>/dev/null)" = multi_pose ]; then
  ann="$data/coco/annotations/person_keypoints_val2017.json"
fi
if [ "$demo" = 0 ]; then
  missing=()
  [ -f "$weights" ] || missing+=("weights: $weights not found. Download ctdet_coco_dla_2x.pth from the upstream model zoo (https://github.com/xingyizhou/CenterNet/blob/master/readme/MODEL_ZOO.md, COCO ctdet DLA-34 2x) or the recipe's link, and put it there or pass --weights.")
  [ -d "$images" ] || missing+=("images: $images not found. Download COCO 2017 Val images (http://images.cocodataset.org/zips/val2017.zip) and unzip into $data/coco/.")
  [ -f "$ann" ] || missing+=("annotations: $ann not found. Download 2017 Train/Val annotations (http://images.cocodataset.org/annotations/annotations_trainval2017.zip) and unzip into $data/coco/.")
  if [ ${#missing[@]} -gt 0 ]; then
    echo "The real run needs files that are not here:"
    printf '  - %s\n' "${missing[@]}"
    echo "Running the demo instead: the stand-in detector on generated shapes (it detects shapes, not COCO objects)."
    # Say which of the given inputs the demo leaves aside, so nobody reads its numbers as theirs.
    [ -z "$weights_given" ] || [ ! -f "$weights" ] || \
      echo "note: --weights $weights is not used: the real run needs COCO val2017 as well, and the demo runs the stand-in detector."
    [ -z "$data_given" ] || [ ! -d "$images" ] || [ ! -f "$ann" ] || \
      echo "note: --data $data is not used: the real run needs the checkpoint as well, and the demo runs on its own generated images."
    echo
    demo=1
  fi
fi
if [ "$demo" = 1 ]; then
  workdir="${workdir:-./work/demo}"
  echo "== DEMO: the stand-in detector (ResNet-18 + DCN trained on generated shapes) on held-out generated images; it detects shapes, not COCO objects, and its AP says the pipeline works, not what a COCO checkpoint scores =="
  "$PY" -m centernet.cli.make_demo "$workdir" ${demo_images:+--num-images "$demo_images"}
  data="$workdir/data"; weights="$workdir/ctdet_shapes_resdcn18.pth"
  ann="$data/coco/annotations/instances_val2017.json"; images="$data/coco/val2017"
fi
workdir="${workdir:-./work}"
mkdir -p "$workdir"

# The test mode: flags for each stage, and a tag that keeps its files apart.
tag=""; mode_args=(); prep_args=(); export_args=(); rounding_args=()
if [ "$keep_res" = 1 ]; then
  tag+="_keepres"; mode_args+=(--keep-res); prep_args+=(--keep-res); export_args+=(--dynamic-size)
fi
if [ "$flip" = 1 ]; then
  tag+="_flip"; mode_args+=(--flip)
  # Staged, the flip test lives in the exported graph (meta.json tells s1); streaming mirrors in numpy.
  [ "$stream" = 1 ] || { prep_args+=(--flip); export_args+=(--flip); }
fi
[ "$scales" = 1 ] || mode_args+=(--scales "$scales")
[ "$rounding" = 0 ] || rounding_args=(--upstream-rounding)

prep="$workdir/prep_dataset"
dump="dumpout_bs$batchsize$tag"
results="$workdir/save/results.json"
evaldir="$workdir/run_eval_result"
limit_args=(); [ -z "$limit" ] || limit_args=(--limit "$limit")

declare -a stage_names=() stage_secs=()
stage() {  # stage [--optional] NAME CMD...: run, time, and record; an optional stage's failure is a warning
  local optional=0
  [ "$1" != --optional ] || { optional=1; shift; }
  local name="$1"; shift
  echo
  echo "== $name: $*"
  local t0="$EPOCHREALTIME" rc=0
  in_stage=1
  "$@" || rc=$?
  in_stage=0
  # A Ctrl-C (130) was reported by the stage itself, with the resume hint above.
  if [ "$rc" != 0 ]; then
    [ "$optional" = 1 ] && [ "$rc" != 130 ] || exit "$rc"
    echo "warning: $name exited with status $rc (see above); the results above stand"
  fi
  local t; t=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
  stage_names+=("$name"); stage_secs+=("$t")
  printf '== %s done in %.1f s\n' "$name" "$t"
}

model_tag=""  # which export the mode needs: dynamic size, flip test in the graph
[ "$keep_res" = 0 ] || model_tag+="_dynamic"
if [ "$flip" = 1 ] && [ "$stream" = 0 ]; then model_tag+="_flip"; fi
# The torch backend runs the checkpoint itself, at any input size: no export stage.
torch_args=(); [ "$backend" != torch ] || torch_args=(--backend torch --precision "$precision")
if [ "$stream" = 1 ]; then
  if [ "$backend" = torch ]; then
    model="$weights"
  else
    model="$workdir/CenterNet$model_tag.onnx"
    stage export "$PY" CenterNet_pth2onnx.py "$weights" "$model" "${export_args[@]}" --if-changed
  fi
  stage stream-eval "$PY" CenterNet_eval.py --model "$model" --dataset "$data" --batchsize "$batchsize" \
    --device "$device" --threads "$threads" --output "$results" --resultfolder "$evaldir" "${limit_args[@]}" \
    "${mode_args[@]}" "${rounding_args[@]}" "${torch_args[@]}"
else
  # Load the weights before any heavy stage: preprocessing val2017 writes 15.7 GB.
  # (The demo's weights were just made by the demo itself.)
  [ "$demo" = 1 ] || stage check-weights "$PY" -m centernet.cli.check_weights "$weights"
  # --model: the bins follow the settings the checkpoint holds (the stand-in's own mean/std and size; COCO's for upstream's)
  stage preprocess "$PY" CenterNet_preprocess.py "$images" "$prep" --model "$weights" "${limit_args[@]}" "${prep_args[@]}"
  if [ "$backend" = torch ]; then
    stage infer bash run_infer.sh --model "$weights" --input "$prep" --output "$workdir/result" \
      --output_dirname "$dump" --batchsize "$batchsize" --device "$device" --threads "$threads" --skip-existing \
      "${torch_args[@]}"
  elif [ "$backend" = onnxruntime ]; then
    model="$workdir/CenterNet$model_tag.onnx"
    # --if-changed: the export is kept when its metadata says it was made from a checkpoint with
    # these contents (SHA-256), with these options, and checked; its date does not count.
    stage export "$PY" CenterNet_pth2onnx.py "$weights" "$model" "${export_args[@]}" --if-changed
    stage infer bash run_infer.sh --model "$model" --input "$prep" --output "$workdir/result" \
      --output_dirname "$dump" --batchsize "$batchsize" --device "$device" --threads "$threads" --skip-existing
  else
    onnx="$workdir/CenterNet_ascend$model_tag.onnx"
    stage export "$PY" CenterNet_pth2onnx.py "$weights" "$onnx" --target ascend "${export_args[@]}" --if-changed
    soc_args=(); [ -z "$soc" ] || soc_args=(--soc_version "$soc")
    gear_args=(); [ "$keep_res" = 0 ] || gear_args=(--keep-res --meta "$prep/meta.json")
    om="$workdir/CenterNet$tag""_bs$batchsize.om"
    # --if-changed: the .om is kept when its record ($om.source) names this ONNX file's SHA-256
    # and the same ATC options (keep resolution: the gears of this run's images).
    stage convert bash convert_om.sh "$onnx" --batchsizes "$batchsize" \
      --output_prefix "$workdir/CenterNet$tag" "${soc_args[@]}" "${gear_args[@]}" --if-changed
    stage infer bash run_infer.sh --model "$om" --input "$prep" --output "$workdir/result" \
      --output_dirname "$dump" --batchsize "$batchsize"
  fi
  stage postprocess_s1 "$PY" CenterNet_postprocess_s1.py --bin_data_path="$workdir/result/$dump/" \
    --dataset="$data" --meta "$prep/meta.json" --output "$results" "${rounding_args[@]}"
  stage postprocess_s2 "$PY" CenterNet_postprocess_s2.py --dataset="$data" --results "$results" \
    --resultfolder "$evaldir" --meta "$prep/meta.json"
  if [ "$keep" = 0 ]; then
    echo; echo "== cleanup: removing $prep and $workdir/result (use --keep to keep them)"
    rm -rf "$prep" "$workdir/result"
  fi
fi

# See what the detector sees on a few of the evaluated images (the first by
# file name, as --limit takes them). With ONNX Runtime, this run's export
# (just made or confirmed current); with Ascend, the checkpoint (exported
# once, cached beside it); with --backend torch, the checkpoint in PyTorch.
# Optional: the evaluation above stands either way.
annotated="$workdir/demo_out"
demo_model="$weights"
# this mode's export (a --flip one says so in its metadata)
[ "$backend" != onnxruntime ] || demo_model="$workdir/CenterNet$model_tag.onnx"
demo_args=(); [ "$keep_res" = 0 ] || demo_args=(--keep-res)
stage --optional annotate "$PY" CenterNet_demo.py --model "$demo_model" "$images" --limit 4 --output "$annotated" \
  --device "$device" --threads "$threads" --no-progress "${demo_args[@]}" "${torch_args[@]}"

echo
echo "== summary ($([ "$demo" = 1 ] && echo "DEMO: the stand-in detector on generated shapes" || echo "$weights on $data"))"
printf '  %-16s %8.1f s\n' setup "$setup_secs"
for i in "${!stage_names[@]}"; do printf '  %-16s %8.1f s\n' "${stage_names[$i]}" "${stage_secs[$i]}"; done
printf '  %-16s %8.1f s\n' total "$(awk -v a="$run_t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')"
report_args=(); [ "$demo" = 0 ] || report_args=(--standin-record "$here/models/ctdet_shapes_resdcn18.json")
"$PY" -m centernet.cli.report "$evaldir/metrics.json" "${mode_args[@]}" "${report_args[@]}"
echo
echo "pictures:"
echo "  annotated images: $annotated/ (detections.json beside them)"
echo "  precision-recall: $evaldir/pr_curves.png"
echo "  AP per class:     $evaldir/per_class_ap.png"
