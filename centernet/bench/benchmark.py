"""Pure-inference throughput of ctdet DLA-34 on every backend present, side by side.

One run measures, on the same thread count and the same random input:
- each backend (ONNX Runtime CPU, and CUDA / TensorRT when onnxruntime-gpu is
  installed; our PyTorch model in eager mode; OpenVINO when installed, on the
  decomposed-DCN export since it cannot load ONNX DeformConv) at each batch
  size: warm-up batches untimed, then timed batches -> fps, ms per image,
  p50 / p99 latency per batch (for the GPU providers a batch's time includes
  copying the input in and the outputs out, as in real use);
- the network's FLOPs (bench/flops.py; a multiply-add is 2 FLOPs), so every
  row also says what GFLOP/s it sustains;
- the machine's fp32 ceiling (bench/machine.py): the best of a large square sgemm in PyTorch,
  NumPy and ONNX Runtime on the same threads; each row's GFLOP/s is also
  given as a fraction of it (rows of the PyTorch backend in another
  precision or on the GPU: of a large PyTorch matmul in that precision on
  that device, measured in the same run);
- how much CPU other processes took while each row ran (a shared machine
  skews timings; such rows are flagged rather than silently trusted).
"""
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


from centernet.io.binio import make_dirs, write_atomic
from centernet.errors import UserError
from centernet.convert.export import export_onnx
from centernet.core.timing import latency_stats, time_batches
from centernet.runtime.ort_session import PROVIDERS, make_session, run_session

from centernet.bench.flops import EXPECTED_GFLOP_512, count_flops
from centernet.bench.machine import BUSY_FLAG, CpuShare, machine_info, matmul_ceiling, sgemm_ceiling, usable_cores
from centernet.bench.ort_tuning import format_profile, format_sweep, ort_profile, ort_sweep

logger = logging.getLogger(__name__)


ORT_DEVICES = {"onnxruntime-cpu": "cpu", "onnxruntime-cuda": "cuda", "onnxruntime-tensorrt": "tensorrt"}
# Measured when present, in this order; "onnxruntime-cpu-decompose" (ONNX Runtime
# on the decomposed graph, to compare DCN graph forms) only when asked for.
DEFAULT_BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "pytorch-eager",
                    "torch-cpu", "torch-cuda", "openvino-cpu")
BACKENDS = DEFAULT_BACKENDS + ("onnxruntime-cpu-decompose",)
# The PyTorch backend (torch_backend.TorchSession), a row per precision.
TORCH_BACKENDS = {"torch-cpu": "cpu", "torch-cuda": "cuda"}
TABLE_COLUMNS = ("backend", "batch", "fps", "ms/image", "p50 ms", "p99 ms", "GFLOP/s",
                 "of sgemm", "x eager")


# --- FLOPs -------------------------------------------------------------------


# --- the machine -------------------------------------------------------------


# --- backends ----------------------------------------------------------------

def network_of(model):
    """Upstream's name of the model's network (its ModelFacts); a model
    without facts is ctdet DLA-34, the only one such models could be."""
    facts = getattr(model, "facts", None)
    return facts.network if facts is not None else "dla_34"


def backend_unavailable(name):
    """Why backend `name` cannot run here, or None when it can."""
    if name in ORT_DEVICES or name == "onnxruntime-cpu-decompose":
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        provider = PROVIDERS[ORT_DEVICES.get(name, "cpu")][0]
        if provider not in ort.get_available_providers():
            return f"this onnxruntime has no {provider} (install onnxruntime-gpu)"
        return None
    if name == "openvino-cpu":
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino is not installed (optional: pip install openvino)"
        return None
    if name in ("pytorch-eager", "torch-cpu"):
        return None
    if name == "torch-cuda":
        return None if torch.cuda.is_available() else \
            f"this PyTorch sees no CUDA GPU (torch {torch.__version__})"
    raise UserError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def needs_graph(name):
    """Which export a backend runs: "deformconv", "decompose" or None (PyTorch)."""
    if name in ORT_DEVICES:
        return "deformconv"
    if name in ("openvino-cpu", "onnxruntime-cpu-decompose"):
        return "decompose"
    return None


class _OrtRunner:
    def __init__(self, path, device, threads):
        self.session = make_session(path, device=device, threads=threads)

    def runner(self, batch):
        return lambda x: run_session(self.session, x)


class _TorchRunner:
    def __init__(self, model, threads):
        self.model, self.threads = model.eval(), threads

    def runner(self, batch):
        def run(x):
            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                with torch.inference_mode():
                    return self.model(torch.from_numpy(x))
            finally:
                torch.set_num_threads(previous)
        return run


class _TorchSessionRunner:
    """The PyTorch backend as configured (TorchSession), one precision."""

    def __init__(self, model, options, input_size):
        from centernet.runtime.torch_session import TorchSession
        self.session = TorchSession(model, options, input_size=input_size)

    def runner(self, batch):
        return self.session.run_batch


class _OpenVinoRunner:
    def __init__(self, path, threads):
        import openvino as ov
        self.core, self.path, self.threads = ov.Core(), str(path), threads

    def runner(self, batch):
        model = self.core.read_model(self.path)
        # A static shape per batch lets OpenVINO plan its memory once.
        model.reshape({model.inputs[0].get_any_name(): [batch, *model.inputs[0].get_partial_shape()[1:].to_shape()]})
        compiled = self.core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            # fp32 like every other row (a bf16-capable CPU would otherwise get bf16).
            "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        return lambda x: request.infer({0: x})


def _torch_row(name):
    """(device, precision) of a PyTorch backend row name like torch-cuda-fp16, else (None, None)."""
    for prefix, device in TORCH_BACKENDS.items():
        if name.startswith(prefix + "-"):
            return device, name[len(prefix) + 1:]
    return None, None


def make_runner(name, model, graphs, threads, torch_options=None, input_size=(512, 512)):
    if name.startswith(tuple(TORCH_BACKENDS)):
        return _TorchSessionRunner(model, torch_options, input_size)
    if name in ORT_DEVICES:
        return _OrtRunner(graphs["deformconv"], ORT_DEVICES[name], threads)
    if name == "onnxruntime-cpu-decompose":
        return _OrtRunner(graphs["decompose"], "cpu", threads)
    if name == "openvino-cpu":
        return _OpenVinoRunner(graphs["decompose"], threads)
    return _TorchRunner(model, threads)


def loops_for(batch, loop):
    """Timed batches at batch size `batch`: `loop` at batch 1, scaled down so
    every row times about `loop` images, at least one batch."""
    return max(1, math.ceil(loop / batch))


# --- the benchmark -----------------------------------------------------------

def export_graphs(model, forms, workdir, input_size, given=None):
    """ONNX files for each DCN form in `forms`: the given path, else exported to `workdir`."""
    given = given or {}
    paths = {}
    for form in forms:
        if given.get(form):
            if not Path(given[form]).is_file():
                raise UserError(f"{given[form]}: ONNX file not found")
            paths[form] = Path(given[form])
            continue
        path = Path(workdir) / f"ctdet_{input_size[0]}x{input_size[1]}_{form}.onnx"
        t0 = time.perf_counter()
        export_onnx(model, path, dcn=form, input_size=input_size)
        logger.info(f"exported {path} ({form}) in {time.perf_counter() - t0:.1f}s")
        paths[form] = path
    return paths


def run_benchmark(model, weights, backends=DEFAULT_BACKENDS, batchsizes=(1, 4, 8, 16, 32), loop=8,
                  threads=None, input_size=(512, 512), workdir="work/benchmark", onnx=None,
                  onnx_decompose=None, warmup=1, sgemm_n=3072, profile=False, sweep=False,
                  eager_max_batch=4, torch_precisions=("fp32",), torch_options=None, gpu_matmul_n=8192,
                  sgemm=None):
    """Measure every available backend in `backends` at every batch size
    (eager PyTorch and the PyTorch backend on CPU only up to `eager_max_batch`,
    0 = all: they are slow at large batches). The PyTorch backends (torch-cpu,
    torch-cuda) get a row per precision of `torch_precisions`, run as
    `torch_options` (a TorchOptions) says.
    profile: also ONNX Runtime CPU's time per operator type at the first batch size;
    sweep: also ONNX Runtime CPU with each of ORT_VARIANTS and on the decomposed graph.
    sgemm: the fp32 ceiling (sgemm_ceiling's dict) measured earlier in the same
    run, so that several models are set against the same one; None measures it.
    Returns the result dict (machine, flops, sgemm, rows, skipped, ...)."""
    threads = int(threads or usable_cores())
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if loop < 1:
        raise UserError(f"--loop must be >= 1, got {loop}")
    if not batchsizes or min(batchsizes) < 1:
        raise UserError(f"--batchsizes must be >= 1, got {list(batchsizes)}")
    input_size = tuple(int(v) for v in input_size)
    make_dirs(workdir)

    skipped, present = {}, []
    for name in dict.fromkeys(backends):
        why = backend_unavailable(name)
        if why:
            skipped[name] = why
            logger.info(f"skipping {name}: {why}")
        elif name in TORCH_BACKENDS:
            for precision in dict.fromkeys(torch_precisions):
                if precision == "tf32" and TORCH_BACKENDS[name] == "cpu":
                    skipped[f"{name}-tf32"] = "tf32 is a CUDA precision"
                    continue
                present.append(f"{name}-{precision}")
        else:
            present.append(name)

    flops = count_flops(model, input_size)
    reference = None
    if network_of(model) == "dla_34":  # the one network with a published count to check against
        reference = EXPECTED_GFLOP_512 * input_size[0] * input_size[1] / 512 ** 2
        logger.info(f"counted {flops['total'] / 1e9:.2f} GFLOP per {input_size[0]}x{input_size[1]} image "
            f"(expected {EXPECTED_GFLOP_512} at 512x512, {reference:.2f} scaled to this size)")
    else:
        logger.info(f"counted {flops['total'] / 1e9:.2f} GFLOP per {input_size[0]}x{input_size[1]} image")

    forms = list(dict.fromkeys(f for f in map(needs_graph, present) if f))
    if (profile or sweep) and backend_unavailable("onnxruntime-cpu") is None:
        forms = list(dict.fromkeys(forms + ["deformconv"] + (["decompose"] if sweep else [])))
    graphs = export_graphs(model, forms, workdir, input_size,
                           given={"deformconv": onnx, "decompose": onnx_decompose})

    if sgemm is None:
        logger.info(f"sgemm ceiling: {sgemm_n}x{sgemm_n} fp32 matrix product on {threads} threads ...")
        sgemm = sgemm_ceiling(threads, n=sgemm_n)
    logger.info("sgemm GFLOP/s: " + ", ".join(f"{k} {sgemm[k]}" for k in ("torch", "numpy", "onnxruntime")))
    # Same-precision ceilings for the PyTorch backend's other rows: a PyTorch
    # matmul in that precision on that device.
    ceilings = {("cpu", "fp32"): sgemm["ceiling"]}
    for name in present:
        device, precision = _torch_row(name)
        if device and (device, precision) not in ceilings:
            n = gpu_matmul_n if device == "cuda" else sgemm_n
            logger.info(f"matmul ceiling: {n}x{n} {precision} on {device} ...")
            ceilings[(device, precision)] = matmul_ceiling(device, precision, n=n, threads=threads)

    runners, rows = {}, []
    rng = np.random.default_rng(0)
    # Batch-major order: every backend sees the machine in the same period.
    for batch in batchsizes:
        x = rng.standard_normal((batch, 3, *input_size), dtype=np.float32)
        for name in present:
            device, precision = _torch_row(name)
            if (name == "pytorch-eager" or device == "cpu") and eager_max_batch and batch > eager_max_batch:
                continue
            if name not in runners:
                options = None
                if device:
                    from centernet.runtime.torch_session import TorchOptions
                    options = replace(torch_options or TorchOptions(), device=device, precision=precision,
                                      threads=threads)
                runners[name] = make_runner(name, model, graphs, threads, options, input_size)
            loops = loops_for(batch, loop)
            share = CpuShare().start()
            seconds = time_batches(runners[name].runner(batch), x, loops, warmup=warmup)
            other = share.stop()
            stats = latency_stats(seconds, loops * batch)
            per_image = sum(seconds) / stats["images"]  # unrounded, unlike stats["fps"]
            gflops = flops["total"] / per_image / 1e9
            ceiling = ceilings[(device, precision)] if device else sgemm["ceiling"]
            row = {"backend": name, "batch": batch, "loops": loops, "images": stats["images"],
                   "fps": round(1 / per_image, 3), "ms_per_image": round(per_image * 1e3, 2),
                   "latency_ms_p50": stats["latency_ms_p50"], "latency_ms_p99": stats["latency_ms_p99"],
                   "gflops": round(gflops, 2), "of_sgemm": round(gflops / ceiling, 3),
                   "ceiling_gflops": ceiling, "other_cpu": other}
            rows.append(row)
            logger.info(f"{name} batch {batch}: {row['fps']} fps, {row['ms_per_image']} ms/image"
                + (f"  (other processes used {other:.0%} of the CPUs)" if other and other > BUSY_FLAG else ""))
    eager = {r["batch"]: r["fps"] for r in rows if r["backend"] == "pytorch-eager"}
    for r in rows:
        r["x_eager"] = round(r["fps"] / eager[r["batch"]], 2) if r["batch"] in eager else None

    runners_info = {name: r.session.describe() for name, r in runners.items()
                    if isinstance(r, _TorchSessionRunner)}
    runners.clear()  # free the backends' memory before the extras

    result = {"machine": machine_info(threads), "weights": weights, "input_size": list(input_size),
              "threads": threads, "loop": loop, "warmup": warmup, "eager_max_batch": eager_max_batch,
              "flops_per_image": flops["total"], "flops_by_type": flops["by_type"],
              "reference_flops_per_image": None if reference is None else round(reference * 1e9),
              "sgemm_gflops": sgemm, "models": {k: str(v) for k, v in graphs.items()},
              "rows": rows, "skipped": skipped}
    torch_rows = [name for name in present if _torch_row(name)[0]]
    if torch_rows:
        result["matmul_ceilings"] = [{"device": d, "precision": p, "gflops": g} for (d, p), g in ceilings.items()]
        result["torch_backend"] = {name: runners_info.get(name) for name in torch_rows}
    if "deformconv" in graphs and (profile or sweep):
        x = rng.standard_normal((batchsizes[0], 3, *input_size), dtype=np.float32)
        if profile:
            logger.info(f"profiling onnxruntime-cpu at batch {batchsizes[0]} ...")
            result["ort_profile"] = {"batch": batchsizes[0], "ops": ort_profile(
                graphs["deformconv"], threads, x, flops_by_type=flops["by_type"])}
        if sweep:
            logger.info(f"sweeping onnxruntime-cpu session options at batch {batchsizes[0]} ...")
            result["ort_sweep"] = {"batch": batchsizes[0], "variants": ort_sweep(graphs, threads, x)}
    return result


def format_table(result):
    """The result as a markdown table with a short header."""
    m = result["machine"]
    h, w = result["input_size"]
    s = result["sgemm_gflops"]
    lines = [
        f"machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, {result['threads']} threads per backend",
        f"weights: {result['weights']}",
        f"input {h}x{w}: {result['flops_per_image'] / 1e9:.2f} GFLOP per image counted"
        + ("" if result["reference_flops_per_image"] is None
           else f" (expected {result['reference_flops_per_image'] / 1e9:.2f})") + "; "
        f"warm-up {result['warmup']} batch, then ~{result['loop']} images timed per row",
        f"fp32 sgemm ceiling {s['ceiling']} GFLOP/s ({s['n']}x{s['n']}: torch {s['torch']}, "
        f"numpy {s['numpy']}, onnxruntime {s['onnxruntime']})",
    ]
    others = [c for c in result.get("matmul_ceilings", []) if (c["device"], c["precision"]) != ("cpu", "fp32")]
    if others:
        lines.append("same-precision matmul ceilings for the torch rows: " + ", ".join(
            f"{c['device']} {c['precision']} {c['gflops']} GFLOP/s" for c in others))
    gpus = {d.get("gpu") for d in result.get("torch_backend", {}).values() if d and d.get("gpu")}
    if gpus:
        lines.append("GPU: " + ", ".join(sorted(gpus)))
    lines += [
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "|".join("---" if c == "backend" else "---:" for c in TABLE_COLUMNS) + "|",
    ]
    busy = False
    for r in result["rows"]:
        flag = ""
        if r["other_cpu"] is not None and r["other_cpu"] > BUSY_FLAG:
            flag, busy = " *", True
        x_eager = f"{r['x_eager']:.2f}x" if r["x_eager"] is not None else "-"
        lines.append(f"| {r['backend']}{flag} | {r['batch']} | {r['fps']:.3f} | {r['ms_per_image']:.1f} | "
                     f"{r['latency_ms_p50']:.1f} | {r['latency_ms_p99']:.1f} | {r['gflops']:.1f} | "
                     f"{r['of_sgemm']:.0%} | {x_eager} |")
    if busy:
        lines.append("")
        lines.append(f"* other processes used more than {BUSY_FLAG:.0%} of the CPUs during this row: "
                     "its numbers are low; rerun on a quiet machine")
    for name, why in result["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    if "ort_profile" in result:
        lines += ["", f"onnxruntime-cpu time per operator type, batch {result['ort_profile']['batch']} "
                      "(ONNX Runtime's profiler):", "", format_profile(result["ort_profile"]["ops"])]
    if "ort_sweep" in result:
        lines += ["", f"onnxruntime-cpu session options and DCN graph forms, batch {result['ort_sweep']['batch']} "
                      "(best round's median):", "", format_sweep(result["ort_sweep"]["variants"])]
    return "\n".join(lines)


def write_json(result, path):
    make_dirs(Path(path).parent)
    write_atomic(path, (json.dumps(result, indent=2) + "\n").encode())
