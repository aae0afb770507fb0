"""Throughput of upstream's test modes side by side, on the same images in
one run (CenterNet_benchmark.py --modes).

Every mode runs the real streaming evaluation (stream.stream_detections:
preprocessing worker, ONNX Runtime, decoding and, for scales, the soft-NMS
merge) over the same images, after an untimed warm-up pass (ONNX Runtime
plans memory on the first run of each input shape). Each row is set against
the FLOPs the mode should cost relative to fixed 512x512: the network's
FLOPs are proportional to the input area (sizes are multiples of 32), so a
mode costs sum(flip x input area) / (512 x 512) per image. A mode whose time
ratio exceeds its FLOP ratio by more than MODE_SLACK is flagged.
"""
import json
import logging
import time
from pathlib import Path

from centernet.bench.machine import BUSY_FLAG, CpuShare, machine_info, usable_cores
from centernet.io.binio import write_atomic
from centernet.errors import UserError
from centernet.convert.export import export_onnx
from centernet.core.modes import UPSTREAM_SCALES, TestMode
from centernet.runtime.ort_session import make_session
from centernet.pipeline.stream import stream_detections
from centernet.io.synthetic import COCO_LIKE_SIZES, make_synthetic_coco, make_synthetic_person_coco
from centernet.io.coco import default_annotation_file
from centernet.model.networks import model_facts
from centernet.core.transforms import INPUT_SIZE, test_geometry

logger = logging.getLogger(__name__)

# name -> (mode, model form: "static" 512x512 export or "dynamic" size)
MODES = {
    "fixed": (TestMode(), "static"),
    "fixed-dynamic": (TestMode(), "dynamic"),
    "keep-res": (TestMode(keep_res=True), "dynamic"),
    "keep-res-flip": (TestMode(keep_res=True, flip=True), "dynamic"),
    "keep-res-flip-ms": (TestMode(keep_res=True, flip=True, scales=UPSTREAM_SCALES), "dynamic"),
    "fixed-flip": (TestMode(flip=True), "static"),
}
DEFAULT_MODES = ("fixed", "fixed-dynamic", "keep-res", "keep-res-flip", "keep-res-flip-ms")
MODE_SLACK = 0.15  # time ratio allowed above the FLOP ratio before a row is flagged


def flop_ratio(images, mode, input_size=(INPUT_SIZE, INPUT_SIZE)):
    """Network FLOPs per image of `mode` relative to one fixed-size pass:
    the mean over images of sum over scales of (2 if flip) x input area."""
    base = input_size[0] * input_size[1]
    total = 0
    for img in images:
        for t in mode.scales:
            h, w = test_geometry(img["height"], img["width"], input_size, mode.keep_res, t)[2]
            total += (2 if mode.flip else 1) * h * w
    return total / base / len(images)


def benchmark_data(workdir, num_images, dataset=None, task="ctdet"):
    """(images folder, annotation file): the first num_images of a COCO
    dataset root, or generated images of COCO-like sizes; a multi_pose
    model's are person keypoint annotations (generated: stick figures)."""
    if dataset is not None:
        root = Path(dataset) / "coco"
        ann, images_dir = default_annotation_file(dataset, task), root / "val2017"
        if not ann.is_file():
            raise UserError(f"{ann}: annotation file not found")
        return images_dir, ann
    make = make_synthetic_person_coco if task == "multi_pose" else make_synthetic_coco
    info = make(Path(workdir) / f"mode_data_{task}", num_images=num_images, seed=0, image_sizes=COCO_LIKE_SIZES)
    return info["images_dir"], info["annotation_file"]


def run_mode_benchmark(model, weights, modes=DEFAULT_MODES, num_images=8, dataset=None, threads=None,
                       batchsize=1, warmup=1, workdir="work/benchmark"):
    """Time each of `modes` (names of MODES) on the same images. Returns the
    result dict (machine, rows, ...)."""
    threads = int(threads or usable_cores())
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UserError(f"unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
    if num_images < 1 or batchsize < 1 or warmup < 0:
        raise UserError("--mode-images and --batchsize must be >= 1, --warmup >= 0")
    Path(workdir).mkdir(parents=True, exist_ok=True)
    task = model_facts(model).task
    images_dir, ann = benchmark_data(workdir, num_images, dataset, task)
    annotated = sorted(json.loads(Path(ann).read_text())["images"], key=lambda i: Path(i["file_name"]).stem)
    annotated = annotated[:num_images]

    sessions = {}
    for form in dict.fromkeys(MODES[m][1] for m in modes):
        path = Path(workdir) / f"{task}_{form}.onnx"
        t0 = time.perf_counter()
        # The dynamic export is traced at a small size (faster); any size runs.
        export_onnx(model, path, input_size=(INPUT_SIZE, INPUT_SIZE) if form == "static" else (64, 64),
                    dynamic_size=form == "dynamic")
        logger.info(f"exported {path} in {time.perf_counter() - t0:.1f}s")
        sessions[form] = (path, make_session(path, threads=threads))

    rows = []
    for name in modes:
        mode, form = MODES[name]
        path, session = sessions[form]
        kwargs = dict(batchsize=batchsize, limit=num_images, progress=False, session=session, mode=mode)
        for _ in range(warmup):
            stream_detections(path, images_dir, ann, **kwargs)
        share = CpuShare().start()
        _, _, errors, stats = stream_detections(path, images_dir, ann, **kwargs)
        other = share.stop()
        if errors:
            raise UserError(errors[0])
        rows.append({"mode": name, "test_mode": stats["mode"], "model": form, "images": stats["images"],
                     "inputs": stats["inputs"], "input_sizes": stats["input_sizes"],
                     "flop_ratio": round(flop_ratio(annotated, mode), 3),
                     "infer_fps": stats["fps"], "end_to_end_fps": stats["end_to_end_fps"], "other_cpu": other})
        logger.info(f"{name}: {stats['fps']} images/s inference, {stats['end_to_end_fps']} end to end"
            + (f"  (other processes used {other:.0%} of the CPUs)" if other and other > BUSY_FLAG else ""))
    base = rows[0]
    for r in rows:
        r["time_ratio"] = round(base["infer_fps"] / r["infer_fps"], 3)
        r["time_per_flop"] = round(r["time_ratio"] / r["flop_ratio"] * base["flop_ratio"], 3)
    return {"machine": machine_info(threads), "weights": weights, "threads": threads, "batchsize": batchsize,
            "warmup": warmup, "images_from": str(images_dir), "num_images": len(annotated),
            "baseline": base["mode"], "rows": rows}


MODE_COLUMNS = ("mode", "model", "inputs", "sizes", "FLOP ratio", "images/s (inference)", "time ratio",
                "time / FLOP ratio", "images/s (end to end)")


def format_mode_table(result):
    m = result["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, {result['threads']} threads",
        f"weights: {result['weights']}",
        f"{result['num_images']} images from {result['images_from']}, batch {result['batchsize']}, "
        f"{result['warmup']} untimed warm-up pass per mode; ratios relative to {result['baseline']}",
        "",
        "| " + " | ".join(MODE_COLUMNS) + " |",
        "|---|---|" + "---:|" * (len(MODE_COLUMNS) - 2),
    ]
    notes = set()
    for r in result["rows"]:
        flag = ""
        if r["time_per_flop"] > 1 + MODE_SLACK:
            flag += " !"
            notes.add("!")
        if r["other_cpu"] is not None and r["other_cpu"] > BUSY_FLAG:
            flag += " *"
            notes.add("*")
        lines.append(f"| {r['test_mode']}{flag} | {r['model']} | {r['inputs']} | {r['input_sizes']} | "
                     f"{r['flop_ratio']:.2f} | {r['infer_fps']:.3f} | {r['time_ratio']:.2f} | "
                     f"{r['time_per_flop']:.2f} | {r['end_to_end_fps']:.3f} |")
    if notes:
        lines.append("")
    if "!" in notes:
        lines.append(f"! slower than its FLOP ratio by more than {MODE_SLACK:.0%}")
    if "*" in notes:
        lines.append(f"* other processes used more than {BUSY_FLAG:.0%} of the CPUs during this row: "
                     "rerun on a quiet machine")
    return "\n".join(lines)


def write_mode_json(result, path):
    write_atomic(path, (json.dumps(result, indent=2) + "\n").encode())
