"""The machine a benchmark runs on: its CPU, cores, library versions, the
share of the CPUs other processes take, and the matmul ceilings (the best
large sgemm of PyTorch, NumPy and ONNX Runtime on the same threads; a large
PyTorch matmul per precision and device) every row is a fraction of."""
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


from centernet.core.timing import best_seconds
from centernet.convert.export import ORT_MAX_IR_VERSION
from centernet.runtime.ort_session import make_session

logger = logging.getLogger(__name__)


# Flag a row when other processes used more than this share of the CPUs: with
# every core busy, a small share already costs a lot (threads wait at barriers).
BUSY_FLAG = 0.05


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags():
    """The CPU's feature flags (/proc/cpuinfo's first "flags" line) as a set; empty where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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
    return best_seconds(fn, repeats)


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
