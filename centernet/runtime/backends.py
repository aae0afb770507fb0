"""Choosing the inference backend: an ONNX Runtime session on an .onnx file,
or the PyTorch backend (torch_backend.TorchSession) on the .pth checkpoint.

Both have the same interface (get_inputs, get_outputs, run; see
runtime.run_session), so everything downstream is backend-agnostic. This
module imports no torch: the ONNX Runtime path runs without it. The
command-line flags that choose and set up a backend are centernet.cli.args'.
"""
from dataclasses import replace
from pathlib import Path

from centernet.errors import UserError
from centernet.runtime.ort_session import make_session

BACKENDS = ("onnxruntime", "torch")
TORCH_DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
CASTS = ("autocast", "model")
DCN_KERNELS = ("auto", "ours", "torchvision")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar")


def default_backend(model):
    """torch for a checkpoint (.pth, .pt, .tar), onnxruntime otherwise."""
    return "torch" if Path(str(model)).suffix.lower() in CHECKPOINT_SUFFIXES else "onnxruntime"


def open_session(model, backend=None, device="cpu", threads=0, input_size=(512, 512), torch_options=None,
                 log=None):
    """The inference session for `model`: ONNX Runtime's on an .onnx file, or
    the PyTorch backend on a checkpoint (input_size: what it accepts, None = any).
    log: a callback for the checkpoint's loading messages, kept for the
    callers that still pass one (default: logging)."""
    backend = backend or default_backend(model)
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        if default_backend(model) == "torch":
            raise UserError(f"{model}: a PyTorch checkpoint; run it with --backend torch, or export it "
                            "with CenterNet_pth2onnx.py for ONNX Runtime")
        return make_session(model, device=device, threads=threads)
    if device not in TORCH_DEVICES:
        raise UserError(f"--backend torch runs on {' or '.join(TORCH_DEVICES)}, not {device}")
    from centernet.runtime.torch_session import TorchOptions, open_torch_session
    options = replace(torch_options or TorchOptions(), device=device, threads=int(threads or 0))
    return open_torch_session(model, options, input_size=input_size, log=log)


def describe_session(session):
    """What ran, for summaries: the PyTorch backend's settings, or ONNX Runtime's providers."""
    if hasattr(session, "describe"):
        return session.describe()
    providers = session.get_providers() if hasattr(session, "get_providers") else None
    return {"backend": "onnxruntime", "providers": providers}



def describe_line(session):
    """One line saying how the PyTorch backend runs (None for ONNX Runtime)."""
    if not hasattr(session, "describe"):
        return None
    d = session.describe()
    parts = [f"{d['device']}" + (f" ({d['gpu']})" if d.get("gpu") else ""), d["precision"]]
    if d["precision"] in ("fp16", "bf16"):
        parts[-1] += f" by {d['cast']}" + (", heads' final layer fp32" if d["fp32_heads"] else "")
    parts += [name for name in ("fuse_bn", "channels_last", "compile", "cuda_graphs", "pin_memory", "device_decode")
              if d.get(name)]
    kernel = d["dcn_kernel"] + (f" ({d['dcn_note']})" if d.get("dcn_note") and d["dcn_note"] != "chosen" else "")
    return f"torch backend: {', '.join(parts)}; DCN kernel {kernel}"
