"""Speed and AP of each precision side by side, in one run
(CenterNet_benchmark.py --precisions).

From one checkpoint (the stand-in by default, trained on the generated
shapes, so its AP means something) the run makes:
- fp32: the ONNX export (DeformConv form, the checkpoint's own fixed input
  size), checked against PyTorch, as every ONNX Runtime runner uses it;
- fp16: that graph converted to float16 (onnxruntime.transformers.float16,
  float32 input and outputs), with the op types of `fp16_op_block` (DeformConv
  by default) kept in float32. Where ONNX Runtime's CPU provider has no
  float16 kernel for an op it casts that op's inputs back to float32 itself
  (InsertedPrecisionFreeCast); the row names those op types, found in the
  session's own optimised graph: there the fp16 file rounds weights and
  activations to float16 but computes in float32;
- int8: static QDQ quantisation (onnxruntime.quantization.quantize_static)
  calibrated on images of the train split prepared exactly as the predictor
  prepares its inputs (the model's mean/std and input size). DeformConv and
  BatchNormalization (no int8 kernels) and the layer groups of `int8_float`
  (INT8_GROUPS; default the heads' last convolutions) stay float;
- bf16: PyTorch autocast bf16 (the torch backend's bf16 precision, heads'
  last layers in float32) where the CPU has AVX512_BF16 or AMX-BF16; on
  other CPUs the row says it was skipped (PyTorch would emulate bf16 there).

Each derived file copies the fp32 file's metadata_props (the model's facts:
mean/std, input size, class names), so the predictor prepares the same
inputs for all of them, and records the fp32 file's SHA-256 and the recipe
it was made with: it is reused while both are unchanged. Files are written
under a temp name and renamed.

Per precision: images/s of the predictor's run (Predictor.run, the session
call every runner makes) over the same prepared inputs of the held-out split,
one untimed warm-up batch, then `loop` timed batches, in `rounds` rounds
interleaved across precisions (each row: the best round's median batch);
and AP / AP50 on the held-out split through the streaming evaluation
(stream.stream_detections), the path every runner's AP comes from.
"""
import dataclasses
import itertools
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from centernet.bench.machine import BUSY_FLAG, CpuShare, cpu_flags, machine_info, usable_cores
from centernet.core.modes import TestMode
from centernet.errors import UserError
from centernet.convert.provenance import file_sha256
from centernet.io.binio import make_dirs, write_atomic

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8", "bf16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
DEFAULT_FP16_BLOCK = ("DeformConv",)
# Layer groups int8 can keep in float, by what the ctdet graph calls them.
INT8_GROUPS = {
    "heads": "the heads' last convolutions (hm, wh, reg outputs)",
    "head-convs": "the heads' first (3x3) convolutions",
    "offsets": "the convolutions computing the DCN offsets and masks",
    "upsampling": "the transposed convolutions (upsampling)",
    "stem": "the first convolution",
}
DEFAULT_INT8_FLOAT = ("heads",)
ALWAYS_FLOAT_OPS = ("DeformConv", "BatchNormalization")  # ONNX Runtime has no int8 kernels for them
SOURCE_KEY = "centernet.precision_source_sha256"
RECIPE_KEY = "centernet.precision_recipe"
DATA_SEED = 0


def bf16_support():
    """The CPU flags (of BF16_FLAGS) that make bf16 worth running; empty when none."""
    flags = cpu_flags()
    return [f for f in BF16_FLAGS if f in flags]


# --- the derived models -----------------------------------------------------------------------------

def _metadata(proto):
    return {p.key: p.value for p in proto.metadata_props}


def _current(path, source_sha, recipe):
    """Whether the derived file at `path` was made from this source with this recipe."""
    from centernet.convert.provenance import read_metadata
    if not Path(path).is_file():
        return False
    meta = read_metadata(path)
    return bool(meta) and meta.get(SOURCE_KEY) == source_sha and meta.get(RECIPE_KEY) == recipe


def _save_with_metadata(proto, path, source_meta, source_sha, recipe):
    """Copy the fp32 file's metadata_props into `proto`, add the derivation record, write atomically."""
    import onnx
    meta = dict(source_meta, **{SOURCE_KEY: source_sha, RECIPE_KEY: recipe})
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    write_atomic(path, proto.SerializeToString())


def export_fp32(checkpoint, workdir, threads=0):
    """The checked fp32 ONNX export of `checkpoint` (DeformConv form, its own
    fixed input size) in `workdir`, reused while the checkpoint is unchanged."""
    from centernet.convert.export import export_checked
    from centernet.convert.provenance import ExportOptions, export_status, file_sha256
    from centernet.model.checkpoint import checkpoint_facts, load_model
    checkpoint = Path(checkpoint)
    facts = checkpoint_facts(checkpoint)
    options = ExportOptions(input_size=facts.input_size, mean=facts.mean, std=facts.std,
                            class_names=facts.class_names)
    path = Path(workdir) / f"{checkpoint.stem}.fp32.onnx"
    digest = file_sha256(checkpoint)
    if not export_status(path, digest, options).current:
        logger.info(f"fp32: exporting {checkpoint} to {path} ...")
        export_checked(load_model(checkpoint), path, options, digest, checkpoint.name, threads=threads, batch=1,
                       log_checks=False)
    return path


def ort_float_fallbacks(model_bytes):
    """Op types whose float16 nodes ONNX Runtime's CPU provider runs in
    float32 (no float16 kernel here): the consumers of the casts it inserts
    (InsertedPrecisionFreeCast_*) in its own optimised graph."""
    import tempfile

    import onnx
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = os.path.join(tmp, "optimised.onnx")
        ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath).graph
    to_float = {n.output[0] for n in graph.node if n.op_type == "Cast" and n.name.startswith("InsertedPrecisionFreeCast")
                and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)}
    return sorted({n.op_type for n in graph.node if n.op_type != "Cast" and to_float.intersection(n.input)})


def make_fp16(fp32_path, workdir, op_block=DEFAULT_FP16_BLOCK):
    """The float16 model: (path, {"blocked": op types kept float by the
    conversion, "ort_float32": op types ONNX Runtime's CPU provider runs in float32})."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    path = Path(workdir) / Path(fp32_path).name.replace(".fp32.onnx", ".fp16.onnx")
    source_sha = file_sha256(fp32_path)
    recipe = json.dumps({"precision": "fp16", "op_block_list": sorted(op_block), "keep_io_types": True})
    if not _current(path, source_sha, recipe):
        logger.info(f"fp16: converting to {path} (kept float32: {', '.join(sorted(op_block)) or 'none'}) ...")
        source = onnx.load(str(fp32_path))
        meta = _metadata(source)
        proto = convert_float_to_float16(source, keep_io_types=True, op_block_list=list(op_block))
        _save_with_metadata(proto, path, meta, source_sha, recipe)
    return path, {"blocked": sorted(op_block), "ort_float32": ort_float_fallbacks(str(path))}


def int8_float_nodes(proto, groups):
    """{node name: why} of the nodes the int8 model keeps float: DeformConv
    and BatchNormalization always, and those of the INT8_GROUPS `groups`."""
    unknown = [g for g in groups if g not in INT8_GROUPS]
    if unknown:
        raise UserError(f"--int8-float: unknown layer group {unknown[0]!r}; choose from {', '.join(INT8_GROUPS)}")
    from centernet.constants import OUTPUT_NAMES
    nodes = list(proto.graph.node)
    consumers = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in nodes for o in n.output}
    dcn_inputs = {i for n in nodes if n.op_type == "DeformConv" for i in n.input}
    keep = {}
    for n in nodes:
        if n.op_type in ALWAYS_FLOAT_OPS:
            keep[n.name] = n.op_type
    convs = [n for n in nodes if n.op_type == "Conv"]
    heads = [producer[o] for o in OUTPUT_NAMES if o in producer and producer[o].op_type == "Conv"]
    for g in groups:
        if g == "heads":
            chosen = heads
        elif g == "head-convs":
            chosen = []
            for last in heads:  # head: Conv 3x3 -> Relu -> Conv 1x1 (last)
                relu = producer.get(last.input[0])
                first = producer.get(relu.input[0]) if relu is not None and relu.op_type == "Relu" else None
                if first is not None and first.op_type == "Conv":
                    chosen.append(first)
        elif g == "offsets":
            chosen = [n for n in convs if _feeds(n, dcn_inputs, consumers)]
        elif g == "upsampling":
            chosen = [n for n in nodes if n.op_type == "ConvTranspose"]
        else:  # stem
            chosen = convs[:1]
        for n in chosen:
            keep[n.name] = g
    return keep


def _feeds(node, targets, consumers, depth=3):
    """Whether `node`'s output reaches one of the `targets` tensors within `depth` nodes (Slice, Sigmoid, ...)."""
    frontier = set(node.output)
    for _ in range(depth):
        if frontier & targets:
            return True
        frontier = {o for t in frontier for c in consumers.get(t, []) if c.op_type in ("Slice", "Sigmoid", "Concat")
                    for o in c.output}
    return bool(frontier & targets)


def calibration_inputs(facts, num_images, seed=DATA_SEED):
    """Train-split images prepared as the predictor prepares a fixed-size
    input for a model of these facts: float32 (1, 3, H, W) each."""
    from centernet.io.shapes import shapes_image
    from centernet.pipeline.predictor import InputSpec
    spec = InputSpec.for_model(facts, TestMode(input_size=facts.input_size))
    inputs = []
    for index in range(num_images):
        prepared, err = spec.prepare(shapes_image(seed, "train", index)[0], f"train image {index}")
        if err:
            raise UserError(err)
        inputs.append(prepared.tensor[None])
    return inputs


def make_int8(fp32_path, workdir, calibration_images=64, groups=DEFAULT_INT8_FLOAT, per_channel=True,
              reduce_range=False, seed=DATA_SEED):
    """The int8 QDQ model: (path, {"float_nodes": {node: why}, ...})."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from centernet.constants import INPUT_NAME
    from centernet.runtime.ort_session import metadata_facts
    if calibration_images < 1:
        raise UserError(f"--calibration-images must be >= 1, got {calibration_images}")
    path = Path(workdir) / Path(fp32_path).name.replace(".fp32.onnx", ".int8.onnx")
    source = onnx.load(str(fp32_path))
    meta = _metadata(source)
    keep = int8_float_nodes(source, groups)
    source_sha = file_sha256(fp32_path)
    recipe = json.dumps({"precision": "int8", "format": "QDQ", "calibration": f"train split seed {seed}",
                         "calibration_images": calibration_images, "per_channel": per_channel,
                         "reduce_range": reduce_range, "activations": "uint8", "weights": "int8",
                         "float_nodes": sorted(keep)})
    info = {"float_nodes": keep, "groups": list(groups), "per_channel": per_channel,
            "calibration_images": calibration_images}
    if _current(path, source_sha, recipe):
        return path, info
    facts = metadata_facts(meta, name=str(fp32_path))
    inputs = calibration_inputs(facts, calibration_images, seed)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._inputs = iter(inputs)

        def get_next(self):
            x = next(self._inputs, None)
            return None if x is None else {INPUT_NAME: x}

    tmp = path.with_name(f".{path.name}.{os.getpid()}.quant.tmp")
    logger.info(f"int8: calibrating on {calibration_images} train images, quantising to {path} "
                f"(float: {describe_float_nodes(keep)}) ...")
    t0 = time.perf_counter()
    try:
        quantize_static(str(fp32_path), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=sorted(keep))
        _save_with_metadata(onnx.load(str(tmp)), path, meta, source_sha, recipe)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(f"int8: quantised in {time.perf_counter() - t0:.1f}s")
    return path, info


def describe_float_nodes(keep):
    """'DeformConv x3, BatchNormalization x6, heads x3'."""
    counts = {}
    for why in keep.values():
        counts[why] = counts.get(why, 0) + 1
    return ", ".join(f"{why} x{n}" for why, n in counts.items()) or "none"


# --- measuring -------------------------------------------------------------------------------------

def _evaluate(predictor, images_dir, ann_file, num_images, batchsize):
    """COCO AP and AP50 of the predictor's session on the held-out images (the streaming evaluation)."""
    from centernet.io.coco import evaluate_coco
    from centernet.pipeline.stream import stream_detections
    results, _, errors, _ = stream_detections(None, images_dir, ann_file, batchsize=batchsize, limit=num_images,
                                              progress=False, session=predictor.session, mode=predictor.mode)
    if errors:
        raise UserError(errors[0])
    metrics = evaluate_coco(ann_file, results, verbose=False)
    return metrics["AP"], metrics["AP50"]


def _timed_inputs(spec, images_dir, ann_file, batchsize, count):
    """`count` batches of prepared held-out images (cycling), each a list of Prepared."""
    import cv2
    images = sorted(json.loads(Path(ann_file).read_text())["images"], key=lambda i: i["file_name"])
    prepared = []
    for im in images[:max(batchsize * count, 1)]:
        p, err = spec.prepare(cv2.imread(str(Path(images_dir) / im["file_name"])), im["file_name"])
        if err:
            raise UserError(err)
        prepared.append(p)
    cycle = itertools.cycle(prepared)
    return [[next(cycle) for _ in range(batchsize)] for _ in range(count)]


def run_precision_benchmark(checkpoint, workdir="work/benchmark/precisions", val_images=200, calibration_images=64,
                            threads=None, batchsize=1, loop=20, rounds=3, precisions=PRECISIONS,
                            int8_float=DEFAULT_INT8_FLOAT, per_channel=True, reduce_range=False,
                            fp16_op_block=DEFAULT_FP16_BLOCK):
    """Speed and AP of each of `precisions` on the held-out split of the
    generated shapes; the module docstring says how. Returns the result dict
    (machine, rows, ...); format_precision_table prints it."""
    from centernet.io.shapes import make_shapes_coco
    from centernet.pipeline.predictor import open_predictor
    from centernet.runtime.torch_session import TorchOptions
    precisions = list(dict.fromkeys(precisions))
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise UserError(f"--precisions: unknown precision {unknown[0]!r}; choose from {', '.join(PRECISIONS)}"
                        if unknown else "--precisions needs at least one precision")
    if val_images < 1 or batchsize < 1 or loop < 1 or rounds < 1:
        raise UserError("--precision-images, --batchsize, --loop and the rounds must be >= 1")
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: checkpoint not found")
    threads = int(threads or usable_cores())
    workdir = Path(workdir)
    make_dirs(workdir)
    images_dir, ann_file = make_shapes_coco(workdir / "shapes_data", "val", val_images, seed=DATA_SEED)

    fp32_path = export_fp32(checkpoint, workdir, threads=threads)
    rows = {}
    predictors = {}
    for p in precisions:
        row = {"precision": p, "skipped": None}
        if p == "fp32":
            row.update(runtime="onnxruntime", model=str(fp32_path), float_text="all (reference)")
            predictors[p] = open_predictor(fp32_path, threads=threads)
        elif p == "fp16":
            path, info = make_fp16(fp32_path, workdir, fp16_op_block)
            row.update(runtime="onnxruntime", model=str(path), fp16=info,
                       float_text=f"{', '.join(info['blocked']) or 'none'}"
                                  + (f"; computed in fp32 by ORT's CPU provider (no fp16 kernel): "
                                     f"{', '.join(info['ort_float32'])}" if info["ort_float32"] else ""))
            predictors[p] = open_predictor(path, threads=threads)
        elif p == "int8":
            path, info = make_int8(fp32_path, workdir, calibration_images, int8_float, per_channel, reduce_range)
            row.update(runtime="onnxruntime", model=str(path), int8=info,
                       float_text=describe_float_nodes(info["float_nodes"]))
            predictors[p] = open_predictor(path, threads=threads)
        else:  # bf16
            flags = bf16_support()
            if not flags:
                row.update(runtime="torch", model=str(checkpoint), float_text="-",
                           skipped="this CPU has no AVX512_BF16 / AMX-BF16")
            else:
                row.update(runtime="torch", model=str(checkpoint), cpu_flags=flags,
                           float_text="heads' last convolutions, DCN sampling (autocast)")
                options = TorchOptions(precision="bf16", cast="autocast", warped_input=False, threads=threads)
                predictors[p] = open_predictor(checkpoint, backend="torch", threads=threads, torch_options=options)
        rows[p] = row
    for p, predictor in predictors.items():
        t0 = time.perf_counter()
        rows[p]["AP"], rows[p]["AP50"] = _evaluate(predictor, images_dir, ann_file, val_images, batchsize)
        logger.info(f"{p}: AP {rows[p]['AP']:.4f} (AP50 {rows[p]['AP50']:.4f}) on {val_images} images "
                    f"in {time.perf_counter() - t0:.0f}s")

    # Speed: the same prepared inputs for every precision, rounds interleaved.
    spec = dataclasses.replace(next(iter(predictors.values())).spec, warped=False) if predictors else None
    batches = _timed_inputs(spec, images_dir, ann_file, batchsize, loop) if predictors else []
    best = {p: float("inf") for p in predictors}
    other = {p: [] for p in predictors}
    for _ in range(rounds):
        for p, predictor in predictors.items():
            predictor.run(batches[0])  # untimed warm-up
            share = CpuShare().start()
            seconds = []
            for batch in batches:
                t0 = time.perf_counter()
                predictor.run(batch)
                seconds.append(time.perf_counter() - t0)
            o = share.stop()
            if o is not None:
                other[p].append(o)
            best[p] = min(best[p], float(np.median(seconds)))
    for p in predictors:
        rows[p]["fps"] = round(batchsize / best[p], 3)
        rows[p]["other_cpu"] = max(other[p]) if other[p] else None
    base = rows.get("fp32")
    for r in rows.values():
        if r["skipped"]:
            continue
        r["x_fp32"] = round(r["fps"] / base["fps"], 3) if base else None
        r["AP_change"] = round((r["AP"] - base["AP"]) * 100, 2) if base else None
    from centernet.model.checkpoint import checkpoint_facts
    return {"machine": machine_info(threads), "checkpoint": str(checkpoint),
            "model": checkpoint_facts(checkpoint).describe(), "threads": threads, "batchsize": batchsize,
            "loop": loop, "rounds": rounds, "val_images": val_images, "calibration_images": calibration_images,
            "images_from": str(images_dir), "rows": [rows[p] for p in precisions]}


PRECISION_COLUMNS = ("precision", "runtime", "images/s", "x fp32", "AP", "AP change (points)", "AP50",
                     "kept in float")


def format_precision_table(result):
    """The result as a markdown table, a row per precision, with a short header."""
    m = result["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, {result['threads']} threads",
        f"weights: {result['checkpoint']} ({result['model']})",
        f"AP: {result['val_images']} held-out images from {result['images_from']}; int8 calibrated on "
        f"{result['calibration_images']} train images",
        f"speed: batch {result['batchsize']}, {result['loop']} timed batches after an untimed one, best of "
        f"{result['rounds']} interleaved rounds (median batch); x fp32 and AP change against ONNX Runtime fp32",
        "",
        "| " + " | ".join(PRECISION_COLUMNS) + " |",
        "|---|---|" + "---:|" * 5 + "---|",
    ]
    busy = False
    for r in result["rows"]:
        if r["skipped"]:
            lines.append(f"| {r['precision']} | {r['runtime']} | skipped: {r['skipped']} | - | - | - | - | - |")
            continue
        flag = ""
        if r.get("other_cpu") is not None and r["other_cpu"] > BUSY_FLAG:
            flag, busy = " *", True
        x = f"{r['x_fp32']:.2f}x" if r.get("x_fp32") is not None else "-"
        change = f"{r['AP_change']:+.2f}" if r.get("AP_change") is not None else "-"
        lines.append(f"| {r['precision']}{flag} | {r['runtime']} | {r['fps']:.2f} | {x} | {r['AP']:.4f} | {change} | "
                     f"{r['AP50']:.4f} | {r['float_text']} |")
    if busy:
        lines += ["", f"* other processes used more than {BUSY_FLAG:.0%} of the CPUs during this row: its speed "
                      "is low; rerun on a quiet machine"]
    return "\n".join(lines)


def write_precision_json(result, path):
    make_dirs(Path(path).parent)
    write_atomic(path, (json.dumps(result, indent=2) + "\n").encode())
