"""Choosing the inference backend: an ONNX Runtime session on an .onnx file,
or the PyTorch backend (torch_session.TorchSession) on the .pth checkpoint.

Both implement runtime.session.Session, so everything downstream is
backend-agnostic. This module imports no torch: the ONNX Runtime path runs
without it.
"""
import argparse
from dataclasses import fields, replace
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


def add_backend_arguments(parser, default=None):
    """--backend, --precision and the PyTorch backend's switches (the caller
    has --device and --threads). default None: chosen from --model's suffix."""
    parser.add_argument("--backend", choices=BACKENDS, default=default,
                        help="onnxruntime runs an .onnx file; torch runs the .pth checkpoint in PyTorch "
                             "(CPU or CUDA) with no export (default: "
                             + (default or "torch for a .pth/.pt/.tar --model, else onnxruntime") + ")")
    add_torch_arguments(parser)


def add_torch_arguments(parser, several_precisions=False, title="PyTorch backend (--backend torch)"):
    """The PyTorch backend's switches; several_precisions: --precision takes a list."""
    g = parser.add_argument_group(title)
    precision_help = ("fp32 (strict, no TF32), tf32 (CUDA only), fp16 or bf16; the heads' final layer "
                      "and the decoding stay in fp32")
    if several_precisions:
        g.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"],
                       help=precision_help + ", a row each (default: fp32)")
    else:
        g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help=precision_help + " (default: %(default)s)")
    g.add_argument("--cast", choices=CASTS, default="autocast",
                   help="fp16/bf16 by torch.autocast, or by converting the whole model (default: %(default)s)")
    g.add_argument("--fp32-heads", action=argparse.BooleanOptionalAction, default=True,
                   help="run the heads' final 1x1 convolutions in fp32 under fp16/bf16 (default: on)")
    g.add_argument("--fuse-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="fold each BatchNorm into the convolution before it (default: on)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC activations (default: on for cuda, off for cpu)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the network (Inductor; needs a C++ compiler on CPU, Triton on CUDA; "
                        "the first batch of each shape compiles, minutes) (default: off)")
    g.add_argument("--compile-mode", default=None,
                   help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: torch's)")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="capture one CUDA graph per batch shape and replay it (cuda only) (default: off)")
    g.add_argument("--pin-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="page-locked host buffers for the copies to and from the GPU (default: on for cuda)")
    g.add_argument("--warped-input", action=argparse.BooleanOptionalAction, default=True,
                   help="streaming evaluation: the workers send each warped image as uint8 (a quarter of the "
                        "bytes) and the normalisation runs on the device (default: on)")
    g.add_argument("--device-decode", action=argparse.BooleanOptionalAction, default=None,
                   help="streaming evaluation: decode on the device and copy back only the 100 detections "
                        "per image, not the full outputs; with --flip the mirror is made and averaged in "
                        "there too (default: on for cuda)")
    g.add_argument("--dcn-kernel", choices=DCN_KERNELS, default="auto",
                   help="deformable convolution: ours (grid_sample + matmul), torchvision's deform_conv2d, "
                        "or auto: torchvision where it imports and agrees with ours within float32 "
                        "rounding (on cuda: and is faster), else ours (default: %(default)s)")


def torch_options_from_args(args, **overrides):
    """A TorchOptions from add_backend_arguments' flags (+ --device, --threads);
    None when args.backend is ONNX Runtime's (torch is then never imported)."""
    if getattr(args, "backend", "torch") != "torch":
        return None
    from centernet.runtime.torch_session import TorchOptions
    values = {"device": getattr(args, "device", "cpu"), "threads": getattr(args, "threads", 0) or 0,
              "precision": args.precision, "cast": args.cast, "fp32_heads": args.fp32_heads,
              "fuse_bn": args.fuse_bn, "channels_last": args.channels_last, "compile": args.compile,
              "compile_mode": args.compile_mode, "cuda_graphs": args.cuda_graphs,
              "pin_memory": args.pin_memory, "dcn": args.dcn_kernel, "warped_input": args.warped_input,
              "device_decode": args.device_decode}
    values.update(overrides)
    names = {f.name for f in fields(TorchOptions)}
    return TorchOptions(**{k: v for k, v in values.items() if k in names})


def check_backend_args(args):
    """Fill args.backend from the model when not given; refuse torch-only
    switches on ONNX Runtime (they would silently do nothing)."""
    args.backend = args.backend or default_backend(args.model)
    if args.backend == "onnxruntime":
        torch_only = [flag for flag, on in (
            ("--precision", args.precision != "fp32"), ("--compile", args.compile),
            ("--cuda-graphs", args.cuda_graphs)) if on]
        if torch_only:
            raise UserError(f"{', '.join(torch_only)}: PyTorch backend options; add --backend torch "
                            "(and give the .pth checkpoint as --model)")
    elif args.backend == "torch" and args.device not in TORCH_DEVICES:
        raise UserError(f"--backend torch runs on {' or '.join(TORCH_DEVICES)}, not {args.device}")
    return args


def open_session(model, backend=None, device="cpu", threads=0, input_size=(512, 512), torch_options=None,
                 log=None):
    """The inference session for `model`: ONNX Runtime's on an .onnx file, or
    the PyTorch backend on a checkpoint (input_size: what it accepts, None = any)."""
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
    return open_torch_session(model, options, input_size=input_size, log=log)


def describe_session(session):
    """What ran, for summaries: the session's own description."""
    return session.describe()


def describe_line(session):
    """One line saying how the backend runs (None where there is nothing to say)."""
    return session.describe_line()


def as_session(session, name=None):
    """A Session as it is; an ONNX Runtime InferenceSession in an OrtSession."""
    if isinstance(session, Session):
        return session
    import onnxruntime as ort
    if isinstance(session, ort.InferenceSession):
        return OrtSession(session, name=name)
    raise TypeError(f"not a session: {type(session).__name__}")
