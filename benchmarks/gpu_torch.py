#!/usr/bin/env python3
"""The PyTorch backend on a GPU, measured in one run: parity, speed, what each technique buys.

    python3 benchmarks/gpu_torch.py --out gpu_torch.json           # on an H100/H200: ~6 minutes
    python3 benchmarks/gpu_torch.py --device cpu --quick           # the same steps, small, on CPU

Steps, in this order (each writes the JSON again, so a run cut short keeps
what it finished; a step that would overrun --budget is skipped and says so):
1. environment: GPU, CPU, versions, whether torchvision's deform_conv2d imports;
2. parity on synthetic photos through the test transform (the realistic
   fixture: weights calibrated to behave like the trained network, or
   --weights): fp32, tf32, fp16 and bf16 on the device against fp32 on the
   CPU, as output differences (largest, and as a fraction of the output's
   largest magnitude; mean) and as detection agreement (the share of the CPU
   fp32 top-100 detections recovered with box IoU >= 0.9 and the same class);
   beside them the yardsticks: fp32 on the CPU with only its input rounded to
   fp16 / bf16, i.e. what the fixture does with the least rounding any
   fp16/bf16 network must do; and the variants (cast=model, heads in low
   precision, DCN kernel ours / torchvision);
3. speed: images/s at batch 1, 8, 32, 128 per precision (inputs from host
   memory, outputs back to host memory, as a user gets them), GFLOP/s and its
   fraction of a same-precision matmul ceiling measured in the same run;
4. techniques: images/s with each switch of the backend changed alone from
   the default, at a large and at batch 1, and the share of a batch's time
   spent copying to and from the GPU;
5. torch.compile (Inductor), in a child process with a time limit;
6. the streaming evaluation end to end (JPEG decode and warp on CPU workers,
   inference, decoding on the device or by numpy), without and with the flip
   test, on synthetic COCO-format images, against inference alone;
7. the stand-in detector (models/ctdet_shapes_resdcn18.pth, ResNet-18 + DCN
   trained on generated shapes) on its held-out split in each precision: the
   AP change per precision, which top-100 agreement on random weights cannot
   say. Scored by pycocotools where it is installed; elsewhere the detections
   stay in the JSON and `--score gpu_torch.json` scores them on any machine
   with the toolkit's requirements.

Needs only torch, numpy, onnx, opencv and tqdm (no pycocotools, no network).
"""
import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from centernet.environment import COMMON, require  # noqa: E402

require(*COMMON, "torch", "onnx")  # before any third-party import

import numpy as np  # noqa: E402
import torch  # noqa: E402

from centernet.bench.flops import count_flops  # noqa: E402
from centernet.bench.machine import cpu_model, matmul_ceiling  # noqa: E402
from centernet.io.binio import write_atomic  # noqa: E402
from centernet.core.compare import detection_agreement, output_differences  # noqa: E402
from centernet.model.dcn_kernels import torchvision_kernel  # noqa: E402
from centernet.core.timing import latency_stats, time_batches  # noqa: E402
from centernet.io.synthetic import synthetic_input_batch  # noqa: E402
from centernet.runtime.torch_session import TorchOptions, TorchSession  # noqa: E402

FULL = {"size": 512, "parity_images": 8, "batches": [1, 8, 32, 128], "precisions": ["fp32", "tf32", "fp16", "bf16"],
        "images_per_row": 256, "technique_batch": 32, "pipeline_images": 512, "matmul_n": 8192, "budget": 450,
        "standin_images": 200}
QUICK_CPU = {"size": 128, "parity_images": 2, "batches": [1, 2], "precisions": ["fp32", "bf16"],
             "images_per_row": 2, "technique_batch": 2, "pipeline_images": 4, "matmul_n": 256, "budget": 300,
             "standin_images": 4}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="where to run (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help=f"small sizes to check the script: input {QUICK_CPU['size']}, batches "
                        f"{QUICK_CPU['batches']}, fp32 and bf16 (default: off)")
    p.add_argument("--weights", default=None,
                   help="upstream checkpoint (default: random weights calibrated on synthetic photos)")
    p.add_argument("--out", default="gpu_torch.json", help="the JSON written (default: %(default)s)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds; steps that would overrun are skipped (default: {FULL['budget']}, "
                        f"--quick {QUICK_CPU['budget']})")
    p.add_argument("--compile-timeout", type=float, default=None,
                   help="seconds for the torch.compile child, 0 = skip it (default: 150 on cuda, 0 on cpu)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for PyTorch, 0 = its default (default: %(default)s)")
    p.add_argument("--size", type=int, default=None,
                   help=f"input side, a multiple of 32 (default: {FULL['size']}, --quick {QUICK_CPU['size']})")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="speed table batch sizes")
    p.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "tf32", "fp16", "bf16"],
                   help="speed table precisions")
    p.add_argument("--score", default=None, metavar="JSON",
                   help="score the stand-in step's detections kept in JSON (a run where pycocotools was "
                        "missing) with pycocotools, write them into it and print the table (default: off)")
    p.add_argument("--compile-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    preset = dict(QUICK_CPU if args.quick else FULL)
    if args.device == "cpu":
        preset["precisions"] = [q for q in preset["precisions"] if q != "tf32"]
    preset["batches"] = args.batches or preset["batches"]
    preset["size"] = args.size or preset["size"]
    if preset["size"] % 32:
        p.error("--size must be a multiple of 32")
    preset["precisions"] = args.precisions or preset["precisions"]
    preset["budget"] = args.budget or preset["budget"]
    if args.compile_timeout is None:
        args.compile_timeout = 150.0 if args.device == "cuda" else 0.0
    args.preset = preset
    return args


class Run:
    """The result dict, its JSON file, and the time budget."""

    def __init__(self, path, budget):
        self.path, self.budget, self.t0 = Path(path), budget, time.perf_counter()
        self.result = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}}

    def elapsed(self):
        return time.perf_counter() - self.t0

    def left(self):
        return self.budget - self.elapsed()

    def save(self):
        self.result["seconds"] = round(self.elapsed(), 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, (json.dumps(self.result, indent=2, default=str) + "\n").encode())

    def step(self, name, fn, need=0):
        """Run fn() -> dict into result[name]; skip when less than `need` s are left; keep errors."""
        if self.left() < need:
            self.result[name] = {"skipped": f"out of time ({self.left():.0f}s left of {self.budget:.0f}s, "
                                             f"needs ~{need:.0f}s)"}
            print(f"[{self.elapsed():6.1f}s] {name}: skipped, out of time", flush=True)
            self.save()
            return None
        print(f"[{self.elapsed():6.1f}s] {name} ...", flush=True)
        t = time.perf_counter()
        try:
            self.result[name] = fn()
        except Exception as e:  # noqa: BLE001 - keep the other steps' results
            self.result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            print(f"  {name} failed: {type(e).__name__}: {e}", flush=True)
        self.result["steps"][name] = round(time.perf_counter() - t, 1)
        self.save()
        return self.result[name]


def free(device):
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def load_model(weights):
    if weights:
        from centernet.model.checkpoint import load_model as load
        return load(weights), str(weights)
    from centernet.model.random_weights import random_model
    return random_model(seed=0), "random, calibrated on synthetic photos (centernet/model/random_weights.py)"


def environment(args, weights):
    env = {"device": args.device, "cpu": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "weights": weights, "preset": args.preset}
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                   cudnn=torch.backends.cudnn.version(), capability=f"{props.major}.{props.minor}")
    try:
        import torchvision
        env["torchvision"] = torchvision.__version__
    except Exception as e:  # noqa: BLE001
        env["torchvision"] = f"does not import: {type(e).__name__}: {str(e)[:200]}"
    kernel, why = torchvision_kernel()
    env["torchvision_deform_conv2d"] = "imports" if kernel else why
    return env


def mean_rel(got, ref):
    return [float(np.abs(g - r).mean() / np.abs(r).mean()) for g, r in zip(got, ref)]


def summarise(outs, ref):
    diffs = output_differences(outs, ref)
    agree = detection_agreement(outs, ref)
    return {"outputs": [{**d, "mean_rel": m} for d, m in zip(diffs, mean_rel(outs, ref))],
            "agreement": agree["share"], "agreement_per_image": agree["per_image"]}


def parity(model, x, device, precisions):
    """Every precision (and the variants) on the device against fp32 on the CPU."""
    with torch.no_grad():
        ref = [o.numpy() for o in model.eval()(torch.from_numpy(x))]
        out = {"reference": "pose_dla_dcn in float32 on the CPU", "images": len(x),
               "input": list(x.shape[2:]), "yardsticks": {}, "runs": []}
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            rounded = [o.numpy() for o in model(torch.from_numpy(x).to(dtype).float())]
            out["yardsticks"][f"input rounded to {name}, fp32 CPU"] = summarise(rounded, ref)
    variants = [(p, {}) for p in precisions]
    for p in [q for q in precisions if q in ("fp16", "bf16")]:
        variants += [(p, {"cast": "model"}), (p, {"fp32_heads": False})]
    variants += [("fp32", {"dcn": "ours"})]
    if torchvision_kernel()[0] is not None:
        variants += [("fp32", {"dcn": "torchvision"}), ("fp16", {"dcn": "torchvision"})]
    for precision, extra in variants:
        label = precision + "".join(f", {k}={v}" for k, v in extra.items())
        try:
            s = TorchSession(model, TorchOptions(device=device, precision=precision, **extra), input_size=x.shape[2:])
            outs = [np.concatenate(parts) for parts in zip(*(s.run_batch(x[i:i + 4]) for i in range(0, len(x), 4)))]
            row = {"run": label, "dcn_kernel": s.info["dcn_kernel"], **summarise(outs, ref)}
            del s
        except Exception as e:  # noqa: BLE001 - e.g. torchvision forced where it disagrees
            row = {"run": label, "error": f"{type(e).__name__}: {e}"}
        out["runs"].append(row)
        print("  " + format_parity_row(row), flush=True)
        free(device)
    return out


def format_parity_row(row):
    if "error" in row:
        return f"{row['run']}: {row['error']}"
    rel = ", ".join(f"{o['output']} {o['max_abs_diff']:.2e} ({o['rel']:.1e})" for o in row["outputs"])
    return f"{row['run']}: {rel}; top-100 recovered {row['agreement']:.1%}"


def time_session(session, x, images_per_row, warmup=2):
    loops = max(3, math.ceil(images_per_row / len(x)))
    seconds = time_batches(session.run_batch, x, loops, warmup=warmup)
    stats = latency_stats(seconds, loops * len(x))
    per_image = sum(seconds) / stats["images"]
    return {"batch": len(x), "loops": loops, "fps": round(1 / per_image, 2), "ms_per_image": round(per_image * 1e3, 3),
            "latency_ms_p50": stats["latency_ms_p50"], "latency_ms_p99": stats["latency_ms_p99"]}


def batch_of(x, n):
    return np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])))


def speed(model, x, device, preset, flops, run):
    ceilings, rows = {}, []
    for precision in preset["precisions"]:
        ceilings[precision] = matmul_ceiling(device, precision, n=preset["matmul_n"])
        print(f"  {precision} matmul ceiling {ceilings[precision] / 1e3:.1f} TFLOP/s", flush=True)
    for precision in preset["precisions"]:
        try:
            session = TorchSession(model, TorchOptions(device=device, precision=precision), input_size=x.shape[2:])
        except Exception as e:  # noqa: BLE001 - keep the other precisions' rows
            rows.append({"precision": precision, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            continue
        for batch in preset["batches"]:
            if run.left() < 20:
                rows.append({"precision": precision, "batch": batch, "skipped": "out of time"})
                continue
            try:
                row = {"precision": precision, **time_session(session, batch_of(x, batch), preset["images_per_row"])}
            except Exception as e:  # noqa: BLE001 - out of memory at a large batch, say
                row = {"precision": precision, "batch": batch, "error": f"{type(e).__name__}: {str(e)[:300]}"}
                free(device)
            if "fps" in row:
                row["gflops"] = round(flops * row["fps"] / 1e9, 1)
                row["of_ceiling"] = round(row["gflops"] / ceilings[precision], 4)
                print(f"  {precision} batch {batch}: {row['fps']} images/s, {row['ms_per_image']} ms/image, "
                      f"p50 {row['latency_ms_p50']} ms per batch, {row['of_ceiling']:.1%} of the ceiling", flush=True)
            else:
                print(f"  {precision} batch {batch}: {row.get('error') or row.get('skipped')}", flush=True)
            rows.append(row)
        del session
        free(device)
    fp32 = {r["batch"]: r["fps"] for r in rows if r["precision"] == "fp32" and "fps" in r}
    for r in rows:
        if "fps" in r and r["batch"] in fp32:
            r["x_fp32"] = round(r["fps"] / fp32[r["batch"]], 2)
    return {"gflop_per_image": round(flops / 1e9, 2), "matmul_ceiling_gflops": ceilings,
            "matmul_n": preset["matmul_n"], "rows": rows, "default_options": asdict(TorchOptions(device=device).resolved())}


def techniques(model, x, device, preset, run):
    precision = "fp16" if device == "cuda" else "bf16"
    default = TorchOptions(device=device).resolved()
    layout = ("channels_last off", {"channels_last": False}) if default.channels_last else \
        ("channels_last on", {"channels_last": True})
    variants = [("default", {}), layout, ("BN folding off", {"fuse_bn": False}),
                ("cast=model (half model)", {"cast": "model"}), ("heads' final conv in low precision", {"fp32_heads": False}),
                ("DCN kernel ours", {"dcn": "ours"})]
    if torchvision_kernel()[0] is not None:
        variants.append(("DCN kernel torchvision", {"dcn": "torchvision"}))
    if device == "cuda":
        variants += [("pinned memory off", {"pin_memory": False}), ("CUDA graphs", {"cuda_graphs": True}),
                     ("CUDA graphs + cast=model", {"cuda_graphs": True, "cast": "model"}),
                     ("cudnn.benchmark off", {"cudnn_benchmark": False})]
    rows = []
    for label, extra in variants:
        for batch in dict.fromkeys((preset["technique_batch"], 1)):
            if run.left() < 25:
                rows.append({"variant": label, "batch": batch, "skipped": "out of time"})
                continue
            if "cudnn_benchmark" in extra:
                torch.backends.cudnn.benchmark = False  # a global switch; the sessions above turned it on
            try:
                s = TorchSession(model, TorchOptions(device=device, precision=precision, **extra), input_size=x.shape[2:])
                xb = batch_of(x, batch)
                row = {"variant": label, "precision": precision, "dcn_kernel": s.info["dcn_kernel"],
                       **time_session(s, xb, preset["images_per_row"] // 2)}
                if label == "default":
                    row["device_only"] = device_only(s, xb)
                del s
            except Exception as e:  # noqa: BLE001
                row = {"variant": label, "batch": batch, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            finally:
                if "cudnn_benchmark" in extra:
                    torch.backends.cudnn.benchmark = True
            rows.append(row)
            free(device)
            print("  " + (f"{label} batch {batch}: {row['fps']} images/s" if "fps" in row else f"{label}: {row}"),
                  flush=True)
    base = {r["batch"]: r["fps"] for r in rows if r.get("variant") == "default" and "fps" in r}
    for r in rows:
        if "fps" in r and r["batch"] in base:
            r["x_default"] = round(r["fps"] / base[r["batch"]], 3)
    return {"precision": precision, "rows": rows}


def device_only(session, xb, loops=5):
    """Seconds per batch of the network alone (input already on the device,
    outputs left there) against the whole run_batch: what the copies cost."""
    x = session.to_device(xb)

    def run(_):
        session.run_device(x)
        if session.device.type == "cuda":
            torch.cuda.synchronize()
    seconds = time_batches(run, None, loops, warmup=2)
    full = time_batches(session.run_batch, xb, loops, warmup=1)
    device_s, full_s = float(np.median(seconds)), float(np.median(full))
    return {"device_ms_per_batch": round(device_s * 1e3, 3), "full_ms_per_batch": round(full_s * 1e3, 3),
            "copies_share": round(1 - device_s / full_s, 3)}


def compile_child(spec_path):
    """In the child: torch.compile at one batch and precision; prints one JSON line."""
    spec = json.loads(Path(spec_path).read_text())
    from pose_dla_dcn import get_pose_net
    model = get_pose_net()
    model.load_state_dict(torch.load(spec["state"], weights_only=True))
    x = np.load(spec["input"])
    # The same session uncompiled: compiling must not move the outputs
    # (Inductor's own kernels round differently; by how much is measured here).
    eager = TorchSession(model.eval(), TorchOptions(device=spec["device"], precision=spec["precision"]),
                         input_size=x.shape[2:]).run_batch(x)
    out = {}
    for label, extra in (("compile (inductor)", {}), ("compile + CUDA graphs", {"cuda_graphs": True})):
        if spec["device"] != "cuda" and extra:
            continue
        t = time.perf_counter()
        s = TorchSession(model.eval(), TorchOptions(device=spec["device"], precision=spec["precision"], compile=True,
                                                    compile_mode=spec.get("mode"), **extra), input_size=x.shape[2:])
        outs = s.run_batch(x)
        first = time.perf_counter() - t
        out[label] = {"first_batch_s": round(first, 1), "vs_uncompiled": summarise(outs, eager),
                      **time_session(s, x, spec["images"], warmup=1)}
        del s
    print("RESULT " + json.dumps(out), flush=True)


def compile_step(model, x, device, preset, timeout):
    precision = "fp16" if device == "cuda" else "bf16"
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"state": str(Path(tmp) / "state.pt"), "input": str(Path(tmp) / "x.npy"), "device": device,
                "precision": precision, "images": preset["images_per_row"] // 2}
        torch.save(model.state_dict(), spec["state"])
        np.save(spec["input"], batch_of(x, preset["technique_batch"]))
        Path(tmp, "spec.json").write_text(json.dumps(spec))
        try:
            proc = subprocess.run([sys.executable, __file__, "--compile-child", str(Path(tmp) / "spec.json")],
                                  capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"precision": precision, "batch": preset["technique_batch"],
                    "skipped": f"compiling took longer than {timeout:.0f}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"precision": precision, "error": (proc.stderr or proc.stdout)[-2000:]}
    return {"precision": precision, "batch": preset["technique_batch"], **json.loads(lines[-1][len("RESULT "):])}


PIPELINE_ROWS = (  # (flip test, warped uint8 input, decoded on the device)
    (False, True, True), (False, True, False), (False, False, False), (True, True, True), (True, False, False))


def pipeline(model, device, preset, run):
    """CenterNet_eval.py's streaming pass (workers decode and warp JPEGs, the
    main process batches and infers, the outputs are decoded on the device or
    by numpy on a thread) with the torch backend, the workers sending warped
    uint8 images (normalised on the device) or float32 inputs; without and
    with the flip test (its mirror made and averaged in on the device, or in numpy)."""
    from centernet.core.modes import TestMode
    from centernet.pipeline.stream import stream_detections
    from centernet.io.synthetic import make_synthetic_coco
    precision = "fp16" if device == "cuda" else "bf16"
    batch = preset["technique_batch"]
    workers = max(1, min(16, (os.cpu_count() or 2) - 1))
    size = (preset["size"],) * 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        info = make_synthetic_coco(Path(tmp) / "data", num_images=preset["pipeline_images"], seed=0)
        for flip, warped, on_device in PIPELINE_ROWS:
            row = {"flip": flip, "warped_input": warped, "device_decode": on_device}
            if run.left() < 20:
                rows.append({**row, "skipped": "out of time"})
                continue
            s = TorchSession(model, TorchOptions(device=device, precision=precision, warped_input=warped,
                                                 device_decode=on_device), input_size=size)
            results, ids, errors, stats = stream_detections(
                "torch", info["images_dir"], info["annotation_file"], batchsize=batch, workers=workers,
                progress=False, session=s, input_size=size, mode=TestMode(flip=flip, input_size=size))
            rows.append({**row, "images": len(ids), "end_to_end_fps": stats["end_to_end_fps"],
                         "inference_fps": stats["fps"],
                         "end_to_end_of_inference": round(stats["end_to_end_fps"] / stats["fps"], 3)
                         if stats["fps"] else None})
            print(f"  flip={flip}, warped_input={warped}, device_decode={on_device}: {stats['end_to_end_fps']} "
                  f"images/s end to end, inference alone {stats['fps']}", flush=True)
            del s
            free(device)
    return {"precision": precision, "batch": batch, "workers": workers, "rows": rows}


def score_standin(step):
    """AP and AP50 of each row's detections against the step's annotations
    (pycocotools), and each precision's AP change from fp32; the detections
    are then dropped from the rows. Without pycocotools, the rows keep them."""
    import importlib.util
    if importlib.util.find_spec("pycocotools") is None:
        return step
    from centernet.io.coco import evaluate_coco
    for row in step["rows"]:
        if "results" in row:
            metrics = evaluate_coco(step["annotations"], row.pop("results"), verbose=False)
            row["AP"], row["AP50"] = round(metrics["AP"], 4), round(metrics["AP50"], 4)
    base = next((r.get("AP") for r in step["rows"] if r["precision"] == "fp32"), None)
    for row in step["rows"]:
        if base is not None and row.get("AP") is not None:
            row["AP_change_points"] = round(100 * (row["AP"] - base), 2)
    step.pop("annotations", None)
    return step


def standin(device, preset, run):
    """The stand-in on its held-out split through the streaming evaluation,
    in each precision of the speed table: images/s of inference and its AP."""
    import tempfile as _tempfile
    from centernet.io.shapes import make_shapes_coco
    from centernet.model.checkpoint import load_model as load
    from centernet.model.demo_data import standin_checkpoint, standin_record
    from centernet.pipeline.stream import stream_detections
    checkpoint = standin_checkpoint()
    record = standin_record(checkpoint)
    model = load(checkpoint).eval()
    workers = max(1, min(16, (os.cpu_count() or 2) - 1))
    rows = []
    with _tempfile.TemporaryDirectory() as tmp:
        images_dir, ann = make_shapes_coco(Path(tmp) / "data", "val", preset["standin_images"],
                                           seed=record["recipe"]["seed"])
        annotations = json.loads(Path(ann).read_text())
        for precision in preset["precisions"]:
            if run.left() < 15:
                rows.append({"precision": precision, "skipped": "out of time"})
                continue
            s = TorchSession(model, TorchOptions(device=device, precision=precision), input_size=model.facts.input_size)
            results, ids, errors, stats = stream_detections("torch", images_dir, ann, batchsize=preset["technique_batch"],
                                                            workers=workers, progress=False, session=s)
            rows.append({"precision": precision, "images": len(ids), "inference_fps": stats["fps"],
                         "results": results})
            print(f"  stand-in, {precision}: {stats['fps']} images/s (inference)", flush=True)
            del s
            free(device)
    return score_standin({"checkpoint": str(checkpoint), "recorded_AP": record["val_AP"],
                          "input_size": list(model.facts.input_size), "annotations": annotations, "rows": rows})


def markdown(result):
    env = result.get("environment", {})
    card = env.get("gpu") or env.get("cpu")
    lines = [f"device: {card}; torch {env.get('torch')}, CUDA {env.get('cuda')}; weights: {env.get('weights')}", ""]
    par = result.get("parity", {})
    if "runs" in par:
        lines += ["| run (vs fp32 CPU) | hm max diff (of max) | wh | reg | top-100 recovered |", "|---|---:|---:|---:|---:|"]
        for name, y in par["yardsticks"].items():
            o = y["outputs"]
            lines.append(f"| {name} | {o[0]['max_abs_diff']:.2e} ({o[0]['rel']:.1e}) | {o[1]['rel']:.1e} | "
                         f"{o[2]['rel']:.1e} | {y['agreement']:.1%} |")
        for r in par["runs"]:
            if "error" in r:
                lines.append(f"| {r['run']} | {r['error'][:80]} | | | |")
                continue
            o = r["outputs"]
            lines.append(f"| {r['run']} | {o[0]['max_abs_diff']:.2e} ({o[0]['rel']:.1e}) | {o[1]['rel']:.1e} | "
                         f"{o[2]['rel']:.1e} | {r['agreement']:.1%} |")
        lines.append("")
    sp = result.get("speed", {})
    if "rows" in sp:
        lines += [f"{sp['gflop_per_image']} GFLOP per image; same-precision matmul ceilings (GFLOP/s): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in sp["matmul_ceiling_gflops"].items()), "",
                  "| precision | batch | images/s | ms/image | p50 ms/batch | p99 ms/batch | of ceiling | x fp32 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sp["rows"]:
            if "fps" not in r:
                why = (r.get("skipped") or r.get("error", ""))[:80]
                lines.append(f"| {r['precision']} | {r.get('batch', '')} | {why} | | | | | |")
                continue
            lines.append(f"| {r['precision']} | {r['batch']} | {r['fps']:.1f} | {r['ms_per_image']:.2f} | "
                         f"{r['latency_ms_p50']:.1f} | {r['latency_ms_p99']:.1f} | {r['of_ceiling']:.1%} | "
                         f"{r.get('x_fp32', 0):.2f}x |")
        lines.append("")
    tech = result.get("techniques", {})
    if "rows" in tech:
        lines += [f"techniques ({tech['precision']}; each changed alone from the default):", "",
                  "| variant | batch | images/s | x default |", "|---|---:|---:|---:|"]
        for r in tech["rows"]:
            if "fps" in r:
                lines.append(f"| {r['variant']} | {r['batch']} | {r['fps']:.1f} | {r.get('x_default', 0):.2f}x |")
            else:
                lines.append(f"| {r['variant']} | {r['batch']} | {r.get('skipped') or r.get('error', '')[:80]} | |")
        lines.append("")
        default = next((r for r in tech["rows"] if r.get("device_only")), None)
        if default:
            d = default["device_only"]
            lines += [f"copies to and from the device: {d['copies_share']:.0%} of a batch of {default['batch']} "
                      f"({d['full_ms_per_batch']:.1f} ms in all, {d['device_ms_per_batch']:.1f} ms on the device)", ""]
    comp = result.get("compile", {})
    for label, r in comp.items():
        if isinstance(r, dict) and "fps" in r:
            rel = ", ".join(f"{o['output']} {o['rel']:.1e}" for o in r["vs_uncompiled"]["outputs"])
            lines.append(f"{label} ({comp['precision']}, batch {comp['batch']}): {r['fps']:.1f} images/s, "
                         f"first batch {r['first_batch_s']:.0f}s; against the uncompiled session: {rel} of "
                         f"each output's magnitude, top-100 recovered {r['vs_uncompiled']['agreement']:.1%}")
    if comp and not any(isinstance(r, dict) and "fps" in r for r in comp.values()):
        lines.append(f"torch.compile: {comp.get('skipped') or comp.get('error', '')[:200]}")
    pipe = result.get("pipeline", {})
    for r in pipe.get("rows", []):
        if "end_to_end_fps" in r:
            sent = "warped uint8 images" if r["warped_input"] else "float32 inputs"
            where = "decoded on the device" if r["device_decode"] else "decoded by numpy"
            mode = "flip test" if r["flip"] else "no flip"
            lines.append(f"streaming evaluation ({mode}, {pipe['precision']}, batch {pipe['batch']}, {pipe['workers']} "
                         f"workers sending {sent}, {where}, {r['images']} images): {r['end_to_end_fps']:.1f} "
                         f"images/s end to end, inference{' and decoding' if r['device_decode'] else ''} "
                         f"alone {r['inference_fps']:.1f} "
                         f"({r['end_to_end_of_inference']:.0%})")
    st = result.get("standin", {})
    if "rows" in st:
        lines += ["", f"stand-in detector on {st['rows'][0].get('images', '?')} held-out generated images "
                      f"(ResNet-18 + DCN, {st['input_size'][0]}x{st['input_size'][1]}; it detects shapes, not COCO "
                      f"objects; recorded AP {st['recorded_AP']:.4f}):", "",
                  "| precision | inference images/s | AP | AP change (points) |", "|---|---:|---:|---:|"]
        for r in st["rows"]:
            ap = r.get("AP")
            lines.append(f"| {r['precision']} | {r.get('inference_fps', r.get('skipped', ''))} | "
                         f"{'not scored: run --score' if ap is None else f'{ap:.4f}'} | "
                         f"{r.get('AP_change_points', '')} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.compile_child:
        return compile_child(args.compile_child)
    if args.score:
        result = json.loads(Path(args.score).read_text())
        result["standin"] = score_standin(result["standin"])
        result["markdown"] = markdown(result)
        write_atomic(Path(args.score), (json.dumps(result, indent=2, default=str) + "\n").encode())
        print(result["markdown"])
        return 0
    preset = args.preset
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but this PyTorch sees no CUDA GPU; use --device cpu --quick", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run(args.out, preset["budget"])
    model, weights = load_model(args.weights)
    model.eval()
    size = (preset["size"], preset["size"])
    x = synthetic_input_batch(preset["parity_images"], size, seed=0)
    flops = count_flops(model, size)["total"]
    run.step("environment", lambda: environment(args, weights))
    run.step("parity", lambda: parity(model, x, args.device, preset["precisions"]), need=30)
    run.step("speed", lambda: speed(model, x, args.device, preset, flops, run), need=60)
    run.step("techniques", lambda: techniques(model, x, args.device, preset, run), need=40)
    if args.compile_timeout > 0:
        timeout = min(args.compile_timeout, max(0.0, run.left() - 60))  # leave the pipeline its time
        run.step("compile", lambda: compile_step(model, x, args.device, preset, timeout), need=60)
    run.step("pipeline", lambda: pipeline(model, args.device, preset, run), need=30)
    run.step("standin", lambda: standin(args.device, preset, run), need=30)
    text = markdown(run.result)
    run.result["markdown"] = text
    run.save()
    print("\n" + text)
    print(f"wrote {args.out} ({run.elapsed():.0f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
