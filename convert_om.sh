#!/usr/bin/env bash
# Compile the Ascend-target ONNX into one offline model per batch size with ATC.
#
#   bash convert_om.sh CenterNet_ascend.onnx                      # soc from npu-smi, batch 1
#   bash convert_om.sh CenterNet_ascend.onnx --batchsizes "1 4 8 16 32" --soc_version Ascend310P3
#   bash convert_om.sh CenterNet_ascend.onnx --keep-res --meta prep_dataset/meta.json
#       (keep resolution: the distinct input sizes of meta.json become ATC's dynamic
#        image size gears; export the ONNX with --target ascend --dynamic-size)
#
# Writes <prefix>_bs<B>.om for each batch size (prefix defaults to CenterNet), and beside
# each <prefix>_bs<B>.om.source: what it was converted from (the ONNX file's SHA-256 and the
# ATC options), which --if-changed compares to skip a conversion that is still current.
# Needs the CANN toolkit: its set_env.sh is sourced when present.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MAX_GEARS=100  # ATC's limit on --dynamic_image_size profiles

usage() {
  cat <<'USAGE'
usage: convert_om.sh MODEL.onnx [options]
  --soc_version NAME   chip, e.g. Ascend310P3 (default: read from `npu-smi info`)
  --batchsizes "B..."  batch sizes to compile, space separated (default: "1")
  --output_prefix P    writes P_bs<B>.om (default: CenterNet)
  --input-size H W     input height and width (default: 512 512)
  --keep-res           keep-resolution model: height and width -1, with the distinct input
                       sizes listed in --meta as ATC dynamic image size gears (at most 100)
                       (default: off)
  --meta FILE          meta.json of CenterNet_preprocess.py --keep-res (needed by --keep-res)
  --log LEVEL          atc log level: debug|info|warning|error (default: error)
  --if-changed         keep an .om whose .om.source names this ONNX file's SHA-256 and the same
                       options (soc, batch, input shape, gears); convert the others (default: off,
                       convert every batch size)
  -h, --help           this text
Environment: ASCEND_SET_ENV (default /usr/local/Ascend/ascend-toolkit/set_env.sh).
USAGE
}

die() { echo "error: $*" >&2; exit 2; }
source "$here/tools/options.sh"  # unknown_option: the one line for a mistyped option

model=""; soc=""; batchsizes="1"; prefix="CenterNet"; height=512; width=512; log=error; keep_res=0; meta=""
if_changed=0
while [ $# -gt 0 ]; do
  case "$1" in
    --soc_version) soc="${2:?--soc_version needs a value}"; shift 2 ;;
    --soc_version=*) soc="${1#*=}"; shift ;;
    --batchsizes) batchsizes="${2:?--batchsizes needs a value}"; shift 2 ;;
    --batchsizes=*) batchsizes="${1#*=}"; shift ;;
    --output_prefix) prefix="${2:?--output_prefix needs a value}"; shift 2 ;;
    --output_prefix=*) prefix="${1#*=}"; shift ;;
    --input-size) height="${2:?--input-size needs H W}"; width="${3:?--input-size needs H W}"; shift 3 ;;
    --log) log="${2:?--log needs a value}"; shift 2 ;;
    --keep-res) keep_res=1; shift ;;
    --meta) meta="${2:?--meta needs a file}"; shift 2 ;;
    --meta=*) meta="${1#*=}"; shift ;;
    --if-changed) if_changed=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) unknown_option "$1" ;;
    *) [ -z "$model" ] || die "one model only (got $model and $1)"; model="$1"; shift ;;
  esac
done
[ -n "$model" ] || { usage >&2; die "no ONNX model given"; }
[ -f "$model" ] || die "$model: file not found (export it with: python CenterNet_pth2onnx.py ctdet_coco_dla_2x.pth $model --target ascend)"
for b in $batchsizes; do
  [[ "$b" =~ ^[1-9][0-9]*$ ]] || die "batch size '$b' is not a positive integer"
done
[[ "$height" =~ ^[1-9][0-9]*$ && "$width" =~ ^[1-9][0-9]*$ ]] || die "--input-size needs two positive integers"

shape="${height},${width}"; gears=""
if [ "$keep_res" = 1 ] || [ -n "$meta" ]; then
  [ "$keep_res" = 1 ] || die "--meta goes with --keep-res"
  [ -n "$meta" ] || die "--keep-res needs --meta DST/meta.json (from CenterNet_preprocess.py --keep-res) for the input sizes"
  [ -f "$meta" ] || die "$meta: file not found (written by CenterNet_preprocess.py --keep-res)"
  py="${PYTHON:-$here/.venv/bin/python}"
  [ -x "$py" ] || py=python3
  # The distinct input sizes, "h,w;h,w;..." in ascending order.
  gears="$("$py" - "$meta" "$MAX_GEARS" <<'PY'
import json, sys
path, most = sys.argv[1], int(sys.argv[2])
def fail(msg):
    print(f"error: {path}: {msg}", file=sys.stderr)
    sys.exit(2)
try:
    meta = json.load(open(path))
    sizes = sorted({tuple(int(v) for v in e["input_size"]) for e in meta["images"].values()})
except (OSError, ValueError, KeyError, TypeError, AttributeError):
    fail("not a preprocessing meta.json with an input_size per image")
if not meta.get("keep_res"):
    fail("not written with --keep-res; run CenterNet_preprocess.py --keep-res first")
if not sizes:
    fail("no images listed")
if len(sizes) > most:
    fail(f"{len(sizes)} distinct input sizes, but ATC takes at most {most} dynamic image size gears; "
         f"preprocess fewer images at a time (--limit) or use the fixed 512x512 mode")
print(";".join(f"{h},{w}" for h, w in sizes))
PY
)" || exit 2
  if [[ "$gears" == *";"* ]]; then
    shape="-1,-1"
  else
    shape="$gears"; gears=""  # one size: ATC wants two gears or more, so a static shape
  fi
fi

set_env="${ASCEND_SET_ENV:-/usr/local/Ascend/ascend-toolkit/set_env.sh}"
if [ -f "$set_env" ]; then
  # shellcheck disable=SC1090
  source "$set_env"
fi
command -v atc >/dev/null 2>&1 || die "atc not found: install the CANN toolkit and source its set_env.sh (looked for $set_env)"

if [ -z "$soc" ]; then
  command -v npu-smi >/dev/null 2>&1 || die "no --soc_version given and npu-smi not found to read the chip name"
  chip="$(npu-smi info | grep -oE '\b(310|910)[A-Za-z0-9]*' | head -n 1 || true)"
  [ -n "$chip" ] || die "could not read the chip name from 'npu-smi info'; pass --soc_version (e.g. Ascend310P3)"
  soc="Ascend$chip"
fi

dynamic=(); [ -z "$gears" ] || dynamic=(--dynamic_image_size="$gears")
model_sha="$(sha256sum "$model" | cut -d' ' -f1)"
source_record() {  # source_record B: what <prefix>_bs<B>.om is converted from, as its .om.source holds it
  printf 'onnx_sha256 %s\nsoc_version %s\ninput_shape actual_input:%s,3,%s\ndynamic_image_size %s\n' \
    "$model_sha" "$soc" "$1" "$shape" "$gears"
}
# Ctrl-C: atc writes the .om under its final name, so remove a half-written one.
done_oms=()
interrupted() {
  rm -f "$out.om"
  echo "interrupted: $out.om removed (incomplete)${done_oms[*]:+; complete: ${done_oms[*]}}; ${CENTERNET_RESUME_HINT:-run the same command again}" >&2
  exit 130
}
trap interrupted INT
for b in $batchsizes; do
  out="${prefix}_bs${b}"
  if [ "$if_changed" = 1 ] && [ -f "$out.om" ] && [ -f "$out.om.source" ] \
      && [ "$(cat "$out.om.source")" = "$(source_record "$b")" ]; then
    echo "$out.om is up to date (converted from $model, sha256 ${model_sha:0:8}…, same options)"
    continue
  fi
  rm -f "$out.om.source"  # until atc has finished, the .om is not what a record would say
  echo "atc: $model -> $out.om (batch $b, $soc${gears:+, $(tr -cd ';' <<<"$gears" | wc -c | awk '{print $1 + 1}') input sizes})"
  atc --framework=5 --model="$model" --output="$out" --input_format=NCHW \
      --input_shape="actual_input:${b},3,${shape}" "${dynamic[@]}" --log="$log" --soc_version="$soc"
  if [ -f "$out.om" ]; then
    source_record "$b" > "$out.om.source.tmp" && mv -f "$out.om.source.tmp" "$out.om.source"
  fi
  done_oms+=("$out.om")
done
