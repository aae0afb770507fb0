"""Pure-inference throughput of ctdet DLA-34 on every backend present, side by side.

One run measures, on the same thread count and the same random input:
- each backend (ONNX Runtime CPU, and CUDA / TensorRT when onnxruntime-gpu is
  installed; our PyTorch model in eager mode; OpenVINO when installed, on the
  decomposed-DCN export since it cannot load ONNX DeformConv) at each batch
  size: warm-up batches untimed, then timed batches -> fps, ms per image,
  p50 / p99 latency per batch (for the GPU providers a batch's time includes
  copying the input in and the outputs out, as in real use);
- the network's FLOPs, counted by hooks on the convolutions (a multiply-add
  is 2 FLOPs), so every row also says what GFLOP/s it sustains;
- the machine's fp32 ceiling: the best of a large square sgemm in PyTorch,
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
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dcn_v2 import DCN

from centernet.io.binio import make_dirs, write_atomic
from centernet.errors import UserError
from centernet.convert.export import ORT_MAX_IR_VERSION, export_onnx
from centernet.core.timing import latency_stats, time_batches
from centernet.runtime.ort_session import PROVIDERS, make_session, run_session

logger = logging.getLogger(__name__)

EXPECTED_GFLOP_512 = 66.2  # ctdet DLA-34 at 512x512, a multiply-add counted as 2 FLOPs
# Flag a row when other processes used more than this share of the CPUs: with
# every core busy, a small share already costs a lot (threads wait at barriers).
BUSY_FLAG = 0.05

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

# The layer types the FLOPs are reported by (ort_profile matches them to ONNX
# operators); a module of another type that computes products itself counts
# under its class name. DCN covers its subclasses (dcn_kernels.KernelDCN).
FLOP_TYPES = (DCN, nn.ConvTranspose2d, nn.Conv2d, nn.Linear)


def _deform_conv2d_flop(input_shape, weight_shape, *args, out_shape=None, **kwargs):
    """torchvision's deform_conv2d: a multiply-add per output value and
    weight of its group, as a convolution (the bilinear sampling left out)."""
    return 2 * math.prod(out_shape) * math.prod(weight_shape[1:])


def count_flops(model, input_size=(512, 512)):
    """FLOPs of one forward pass on one image of `input_size` (H, W), as
    torch.utils.flop_counter.FlopCounterMode counts them: the products of
    convolutions, transposed convolutions, matrix products (linear layers;
    a deformable convolution's products, one matmul in dcn_v2) and
    torchvision's deform_conv2d where a model runs it, a multiply-add
    counted as 2; BatchNorm, ReLU, biases and the bilinear sampling are left
    out, as usual.
    Returns {"total": int, "by_type": {layer type: int}}: by_type gives each
    module's own FLOPs (its forward's, less its submodules') by FLOP_TYPES,
    e.g. a DCN's deformable product under "DCN", its conv_offset_mask under
    "Conv2d"."""
    mapping = {}
    if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "deform_conv2d"):
        mapping[torch.ops.torchvision.deform_conv2d] = _deform_conv2d_flop  # a custom op: no formula of its own
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.inference_mode(), counter:
        model.eval()(torch.zeros(1, 3, *input_size))
    # Keyed by module path as FlopCounterMode names it: the model's class name, then
    # attribute names; each module's count includes its submodules'.
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    by_type = {}
    for name, module in model.named_modules():
        path = f"{root}.{name}" if name else root
        own = counts.get(path, 0) - sum(counts.get(f"{path}.{child}", 0) for child, _ in module.named_children())
        if own:
            kind = next((t.__name__ for t in FLOP_TYPES if isinstance(module, t)), type(module).__name__)
            by_type[kind] = by_type.get(kind, 0) + own
    total = counter.get_total_flops()
    if total != sum(by_type.values()):
        raise RuntimeError(f"FLOPs by module type ({sum(by_type.values())}) do not add up to the total ({total})")
    return {"total": total, "by_type": by_type}


# --- the machine -------------------------------------------------------------

def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def library_versions():
    versions = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__}
    for name in ("onnx", "onnxruntime", "openvino"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


def machine_info(threads):
    info = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": usable_cores(),
            "threads": threads, "platform": platform.platform(), "versions": library_versions()}
    try:
        import onnxruntime as ort
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    return info


class CpuShare:
    """Share of the machine's CPU time that *other* processes used between
    start() and stop() (from /proc/stat minus this process's own CPU time);
    None where /proc/stat is missing."""

    def start(self):
        self._t0 = (time.perf_counter(), self._machine_busy(), self._own())
        return self

    def stop(self):
        wall0, busy0, own0 = self._t0
        wall, busy, own = time.perf_counter() - wall0, self._machine_busy(), self._own()
        if busy is None or busy0 is None or wall <= 0:
            return None
        other = (busy - busy0) - (own - own0)
        return round(min(1.0, max(0.0, other / (wall * (os.cpu_count() or 1)))), 3)

    @staticmethod
    def _own():
        t = os.times()  # children: the NumPy sgemm runs in one
        return t.user + t.system + t.children_user + t.children_system

    @staticmethod
    def _machine_busy():
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        # steal: time the hypervisor gave our virtual CPUs to someone else.
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _best_seconds(fn, repeats):
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


_NUMPY_SGEMM = """
import sys, time, numpy as np
n, repeats = int(sys.argv[1]), int(sys.argv[2])
a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
a @ b
best = float("inf")
for _ in range(repeats):
    t0 = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - t0)
print(best)
"""


def sgemm_ceiling(threads, n=3072, repeats=3):
    """GFLOP/s of an n x n fp32 matrix product (2 n^3 FLOPs), best of `repeats`,
    in PyTorch, NumPy (its BLAS, in a child process so its thread count can be
    set) and ONNX Runtime (MLAS, what ONNX Runtime's convolutions use), all on
    `threads` threads. "ceiling" is the best of them."""
    flops = 2.0 * n ** 3
    result = {"n": n, "threads": threads}

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        result["torch"] = round(flops / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9, 1)
    finally:
        torch.set_num_threads(previous)

    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", _NUMPY_SGEMM, str(n), str(repeats)], env=env,
                          capture_output=True, text=True, timeout=600)
    result["numpy"] = round(flops / float(proc.stdout.split()[-1]) / 1e9, 1) if proc.returncode == 0 else None

    try:
        import onnxruntime  # noqa: F401
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        result["onnxruntime"] = None
    else:
        b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm",
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
            [numpy_helper.from_array(b, "b")])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
        proto.ir_version = ORT_MAX_IR_VERSION
        session = make_session(proto.SerializeToString(), threads=threads)
        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        result["onnxruntime"] = round(flops / _best_seconds(lambda: session.run(None, {"a": a}), repeats) / 1e9, 1)

    result["ceiling"] = max(v for k, v in result.items() if k in ("torch", "numpy", "onnxruntime") and v)
    return result


MATMUL_DTYPES = {"fp32": "float32", "tf32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def matmul_ceiling(device="cuda", precision="fp16", n=8192, repeats=10, threads=None):
    """GFLOP/s of an n x n matrix product in PyTorch in `precision` on `device`
    (2 n^3 FLOPs, best of `repeats`): the same-precision ceiling for a row of
    the PyTorch backend. fp32 is strict (TF32 off); tf32 allows TF32."""
    from centernet.model.dcn_kernels import tf32_allowed
    dtype = getattr(torch, MATMUL_DTYPES[precision])
    dev = torch.device(device)
    previous = torch.get_num_threads()
    if threads and dev.type == "cpu":
        torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=gen).to(dev, dtype)
        b = torch.randn(n, n, generator=gen).to(dev, dtype)

        def mm():
            torch.mm(a, b)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
        with torch.no_grad(), tf32_allowed(precision == "tf32"):
            seconds = _best_seconds(mm, repeats)
    finally:
        torch.set_num_threads(previous)
    return round(2.0 * n ** 3 / seconds / 1e9, 1)


# --- backends ----------------------------------------------------------------

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


def ort_profile(path, threads, x, runs=3, flops_by_type=None):
    """Per-operator-type time of ONNX Runtime CPU on input `x`, from ONNX Runtime's
    own profiler over `runs` runs after one untimed warm-up, with the GFLOP/s of
    the operator types that carry the network's FLOPs. Rows sorted by time."""
    import tempfile

    # Operator type in a DeformConv export -> the counter's module type.
    flop_source = {"Conv": "Conv2d", "DeformConv": "DCN", "ConvTranspose": "ConvTranspose2d"}
    with tempfile.TemporaryDirectory() as tmp:
        session = make_session(path, threads=threads, profile_prefix=str(Path(tmp) / "ort"))
        name = session.get_inputs()[0].name
        for _ in range(runs + 1):
            session.run(None, {name: x})
        trace = json.loads(Path(session.end_profiling()).read_text())
    model_runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("name") == "model_run")
    warm_end = model_runs[0][1]  # the warm-up run's events are left out
    micros = {}
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= warm_end:
            op = event["args"]["op_name"]
            micros[op] = micros.get(op, 0) + event["dur"]
    total = sum(micros.values())
    rows = []
    for op, us in sorted(micros.items(), key=lambda kv: -kv[1]):
        ms = us / 1e3 / runs
        row = {"op": op, "ms": round(ms, 2), "share": round(us / total, 3)}
        flops = (flops_by_type or {}).get(flop_source.get(op))
        if flops:
            row["gflops"] = round(flops * len(x) / (ms / 1e3) / 1e9, 1)
        rows.append(row)
    return rows


# Session option variants tried against make_session's defaults (--ort-sweep).
ORT_VARIANTS = {
    "default (optimization all)": {},
    "optimization extended": {"optimization": "extended"},
    "optimization basic": {"optimization": "basic"},
    "no memory arena": {"options": {"enable_cpu_mem_arena": False}},
    "no memory pattern": {"options": {"enable_mem_pattern": False}},
    "no spinning": {"options": {"session.intra_op.allow_spinning": "0"}},
    "parallel execution": {"options": {"execution_mode": "parallel"}},
    "denormals as zero": {"options": {"session.set_denormal_as_zero": "1"}},
}


def ort_sweep(graphs, threads, x, rounds=3, runs=3, variants=None):
    """Median ms per batch of each ORT_VARIANTS entry on the DeformConv graph, and
    of the default options on the decomposed graph when given. Variants take
    turns for `rounds` rounds of `runs` runs (plus one warm-up each), so slow
    spells of a shared machine hit them all alike; each variant keeps its best
    round. `variants`: names of ORT_VARIANTS to try (default: all; the first is
    the baseline). Returns rows {variant, graph, ms, vs_default}."""
    cases = [(name, "deformconv", ORT_VARIANTS[name]) for name in (variants or ORT_VARIANTS)]
    if "decompose" in graphs:
        cases.append(("default, decomposed DCN graph", "decompose", {}))
    best = {}
    for r in range(rounds):
        for name, form, kw in cases:
            session = make_session(graphs[form], threads=threads, **kw)
            input_name = session.get_inputs()[0].name
            session.run(None, {input_name: x})
            seconds = []
            for _ in range(runs):
                t0 = time.perf_counter()
                session.run(None, {input_name: x})
                seconds.append(time.perf_counter() - t0)
            best[name] = min(best.get(name, math.inf), float(np.median(seconds)))
            del session
        logger.info(f"ort sweep round {r + 1}/{rounds} done")
    base = best[cases[0][0]]
    return [{"variant": name, "graph": form, "ms": round(best[name] * 1e3, 1),
             "vs_default": round(base / best[name], 3)} for name, form, _ in cases]


def format_sweep(rows):
    lines = ["| ONNX Runtime variant | graph | ms per batch | speed vs default |", "|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['graph']} | {r['ms']:.1f} | {r['vs_default']:.2f}x |")
    return "\n".join(lines)


def format_profile(rows, limit=12):
    lines = ["| op type | ms per batch | share | GFLOP/s |", "|---|---:|---:|---:|"]
    for r in rows[:limit]:
        lines.append(f"| {r['op']} | {r['ms']:.1f} | {r['share']:.0%} | {r.get('gflops', '')} |")
    return "\n".join(lines)


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
                  eager_max_batch=4, torch_precisions=("fp32",), torch_options=None, gpu_matmul_n=8192):
    """Measure every available backend in `backends` at every batch size
    (eager PyTorch and the PyTorch backend on CPU only up to `eager_max_batch`,
    0 = all: they are slow at large batches). The PyTorch backends (torch-cpu,
    torch-cuda) get a row per precision of `torch_precisions`, run as
    `torch_options` (a TorchOptions) says.
    profile: also ONNX Runtime CPU's time per operator type at the first batch size;
    sweep: also ONNX Runtime CPU with each of ORT_VARIANTS and on the decomposed graph.
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
    reference = EXPECTED_GFLOP_512 * input_size[0] * input_size[1] / 512 ** 2
    logger.info(f"counted {flops['total'] / 1e9:.2f} GFLOP per {input_size[0]}x{input_size[1]} image "
        f"(expected {EXPECTED_GFLOP_512} at 512x512, {reference:.2f} scaled to this size)")

    forms = list(dict.fromkeys(f for f in map(needs_graph, present) if f))
    if (profile or sweep) and backend_unavailable("onnxruntime-cpu") is None:
        forms = list(dict.fromkeys(forms + ["deformconv"] + (["decompose"] if sweep else [])))
    graphs = export_graphs(model, forms, workdir, input_size,
                           given={"deformconv": onnx, "decompose": onnx_decompose})

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
              "reference_flops_per_image": round(reference * 1e9),
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
        f"input {h}x{w}: {result['flops_per_image'] / 1e9:.2f} GFLOP per image counted "
        f"(expected {result['reference_flops_per_image'] / 1e9:.2f}); "
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
