"""ONNX Runtime sessions: one place that picks providers, threads and options."""
import os
from pathlib import Path

import numpy as np

from .errors import UserError

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def make_session(model, device="cpu", threads=0, optimization="all"):
    """An ONNX Runtime InferenceSession for a path or serialized model.

    device: cpu | cuda | tensorrt (the GPU ones need the onnxruntime-gpu package).
    threads: intra-op threads, 0 = ONNX Runtime's default (all physical cores).
    optimization: disable | basic | extended | all (graph optimisation level).
    """
    import onnxruntime as ort

    if device not in PROVIDERS:
        raise UserError(f"unknown device {device!r}; choose from {', '.join(PROVIDERS)}")
    available = ort.get_available_providers()
    if PROVIDERS[device][0] not in available:
        raise UserError(f"device {device!r} needs {PROVIDERS[device][0]}, which this onnxruntime "
                        f"does not have (available: {', '.join(available)}); "
                        "install onnxruntime-gpu for cuda/tensorrt")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if isinstance(model, (str, os.PathLike)):
        if not Path(model).is_file():
            raise UserError(f"{model}: model file not found")
        model = str(model)
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=PROVIDERS[device])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        name = model if isinstance(model, str) else "model"
        raise UserError(f"{name}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:300]})") from None


def run_session(session, batch):
    """Run a session on one input batch; returns the outputs in graph order."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})
