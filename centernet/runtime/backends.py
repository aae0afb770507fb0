"""Choosing the inference backend: an ONNX Runtime session on an .onnx file,
or the PyTorch backend (torch_session.TorchSession) on the .pth checkpoint.

Both implement runtime.session.Session, so everything downstream is
backend-agnostic. This module imports no torch: the ONNX Runtime path runs
without it. The command-line flags that choose and set up a backend are
centernet.cli.args'.
"""
from dataclasses import replace
from pathlib import Path

from centernet.errors import UserError
from centernet.runtime.ort_session import OrtSession, open_ort_session  # noqa: F401 (re-exported)
from centernet.runtime.session import Session

from centernet.constants import CASTS, DCN_KERNELS, PRECISIONS, TORCH_DEVICES  # noqa: F401 (re-exported)

BACKENDS = ("onnxruntime", "torch", "ais_bench")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar")


def default_backend(model):
    """torch for a checkpoint (.pth, .pt, .tar), ais_bench for an .om, onnxruntime otherwise."""
    suffix = Path(str(model)).suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "torch"
    return "ais_bench" if suffix == ".om" else "onnxruntime"


def open_session(model, backend=None, device="cpu", threads=0, input_size=(512, 512), torch_options=None):
    """The inference session for `model`: ONNX Runtime's on an .onnx file, or
    the PyTorch backend on a checkpoint (input_size: what it accepts, None =
    any), or ais_bench's on an .om."""
    backend = backend or default_backend(model)
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "ais_bench":
        from centernet.runtime.ais_bench_session import AisBenchSession
        return AisBenchSession(model, device_id=int(device) if str(device).isdigit() else 0)
    if backend == "onnxruntime":
        if default_backend(model) == "torch":
            raise UserError(f"{model}: a PyTorch checkpoint; run it with --backend torch, or export it "
                            "with CenterNet_pth2onnx.py for ONNX Runtime")
        return open_ort_session(model, device=device, threads=threads)
    if device not in TORCH_DEVICES:
        raise UserError(f"--backend torch runs on {' or '.join(TORCH_DEVICES)}, not {device}")
    from centernet.runtime.torch_session import TorchOptions, open_torch_session
    options = replace(torch_options or TorchOptions(), device=device, threads=int(threads or 0))
    return open_torch_session(model, options, input_size=input_size)


def as_session(session, name=None):
    """A Session as it is; an ONNX Runtime InferenceSession in an OrtSession."""
    if isinstance(session, Session):
        return session
    import onnxruntime as ort
    if isinstance(session, ort.InferenceSession):
        return OrtSession(session, name=name)
    raise TypeError(f"not a session: {type(session).__name__}")
