"""The PyTorch backend's options (TorchOptions) and the network prepared for
them: BatchNorm folded, the heads' last layers kept in fp32, the DCN kernel
chosen and installed, the precision cast, channels_last, torch.compile."""
import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from dcn_v2 import DCN

from centernet.constants import CASTS, DCN_KERNELS, PRECISIONS, TORCH_DEVICES
from centernet.model.dcn_kernels import install_kernel, select_kernel
from centernet.errors import UserError


LOW_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TorchOptions:
    """How the PyTorch backend runs the network. None means: the device's default."""
    device: str = "cpu"
    precision: str = "fp32"
    cast: str = "autocast"
    fp32_heads: bool = True
    fuse_bn: bool = True
    channels_last: bool = None   # default: on for CUDA, off for CPU
    compile: bool = False
    compile_mode: str = None     # torch.compile's mode (e.g. max-autotune-no-cudagraphs)
    compile_backend: str = "inductor"
    cuda_graphs: bool = False
    pin_memory: bool = None      # default: on for CUDA
    cudnn_benchmark: bool = None  # default: on for CUDA (fixed shapes: let cuDNN pick its fastest algorithms)
    dcn: str = "auto"
    warped_input: bool = True    # run_warped for the streaming evaluation (see the module docstring)
    device_decode: bool = None   # default: on for CUDA (see the module docstring)
    threads: int = 0             # CPU intra-op threads, 0 = PyTorch's default (the physical cores)

    def resolved(self):
        """A copy with the device defaults filled in, after checking the combination."""
        o = copy.copy(self)
        if o.device not in TORCH_DEVICES:
            raise UserError(f"the torch backend runs on {' or '.join(TORCH_DEVICES)}, not {o.device!r}")
        if o.precision not in PRECISIONS:
            raise UserError(f"unknown precision {o.precision!r}; choose from {', '.join(PRECISIONS)}")
        if o.cast not in CASTS:
            raise UserError(f"unknown cast {o.cast!r}; choose from {', '.join(CASTS)}")
        if o.dcn not in DCN_KERNELS:
            raise UserError(f"unknown DCN kernel {o.dcn!r}; choose from {', '.join(DCN_KERNELS)}")
        cuda = o.device == "cuda"
        if cuda and not torch.cuda.is_available():
            raise UserError("--device cuda: this PyTorch sees no CUDA GPU "
                            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})")
        if o.cuda_graphs and not cuda:
            raise UserError("CUDA graphs need --device cuda")
        if o.precision == "tf32" and not cuda:
            raise UserError("tf32 is a CUDA precision; on CPU use fp32 or bf16")
        if o.threads < 0:
            raise UserError(f"--threads must be >= 0, got {o.threads}")
        o.channels_last = cuda if o.channels_last is None else bool(o.channels_last)
        o.pin_memory = cuda if o.pin_memory is None else bool(o.pin_memory and cuda)
        o.cudnn_benchmark = cuda if o.cudnn_benchmark is None else bool(o.cudnn_benchmark)
        o.device_decode = cuda if o.device_decode is None else bool(o.device_decode)
        return o

    @property
    def low_dtype(self):
        return LOW_DTYPES.get(self.precision)


class _Fp32Conv(nn.Module):
    """A head's final convolution run in float32 whatever the network's precision."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv.float()

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return self.conv(x.float())


def _fold_into(conv, bn):
    """Fold BatchNorm `bn` (eval mode) into `conv` (a convolution, a
    transposed convolution or a DCN: a weight and a bias), in place, with
    torch.nn.utils.fusion.fuse_conv_bn_weights. Worked in float64 and
    rounded once to the convolution's dtype."""
    def f64(t):
        return None if t is None else t.detach().double()

    dtype = conv.weight.dtype
    transpose = isinstance(conv, nn.ConvTranspose2d)  # weight (C_in, C_out / groups, kh, kw)
    if transpose and conv.groups != 1:
        raise ValueError("fuse_batchnorms: a grouped transposed convolution before a BatchNorm")
    w, b = fuse_conv_bn_weights(f64(conv.weight), f64(conv.bias), f64(bn.running_mean), f64(bn.running_var),
                                bn.eps, f64(bn.weight), f64(bn.bias), transpose=transpose)
    conv.weight = nn.Parameter(w.detach().to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(b.detach().to(dtype), requires_grad=False)


FOLDABLE = (nn.Conv2d, nn.ConvTranspose2d, DCN)
# Named (convolution, BatchNorm) pairs of upstream's blocks: BasicBlock and
# Bottleneck (conv1/bn1 ... conv3/bn3, also ResNet's stem), DLA's Root and
# Hourglass's convolution (conv/bn).
NAMED_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("conv", "bn"))


def fuse_batchnorms(model):
    """Fold every BatchNorm2d of a ctdet network (eval mode) into the
    convolution (or DCN, or transposed convolution) it follows, in place, and
    put an Identity in its place. Returns the number folded; raises if any
    BatchNorm is left (a layout this does not know)."""
    count = 0
    for module in model.modules():
        pairs = []
        if isinstance(module, nn.Sequential):
            # (conv, bn[, relu])... runs: DLA's base_layer, levels and projections, ResNets'
            # downsample and deconv_layers, Hourglass's inters_ and cnvs_.
            items = list(module._modules.items())
            pairs += [(module, (n1, n2)) for (n1, a), (n2, b) in zip(items, items[1:])
                      if isinstance(a, FOLDABLE) and isinstance(b, nn.BatchNorm2d)]
        for conv_name, bn_name in NAMED_PAIRS:
            if isinstance(getattr(module, bn_name, None), nn.BatchNorm2d) and \
                    isinstance(getattr(module, conv_name, None), FOLDABLE):
                pairs.append((module, (conv_name, bn_name)))
        for parent, (conv_name, bn_name) in pairs:
            _fold_into(getattr(parent, conv_name), getattr(parent, bn_name))
            setattr(parent, bn_name, nn.Identity())
            count += 1
        # pose_dla_dcn.DeformConv: conv (DCN) then actf = (BN, ReLU).
        if isinstance(getattr(module, "conv", None), DCN) and isinstance(getattr(module, "actf", None), nn.Sequential) \
                and isinstance(module.actf[0], nn.BatchNorm2d):
            _fold_into(module.conv, module.actf[0])
            module.actf[0] = nn.Identity()
            count += 1
    left = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise ValueError(f"fuse_batchnorms: BatchNorm layers not after a convolution: {left[:3]}")
    return count


def prepare_model(model, options):
    """A copy of `model` (eval mode) set up as `options` (resolved) say; returns
    (the copy, the module to call: the copy or its compiled form, a description dict).
    When "auto" falls back to our DCN kernel, it does so silently: the reason
    is in the description only."""
    o = options
    model = copy.deepcopy(model).float().eval()
    info = {}
    if o.fuse_bn:
        info["batchnorms_folded"] = fuse_batchnorms(model)
    name, kernel, note = select_kernel(o.dcn, o.device)
    info["dcn_kernel"], info["dcn_note"] = name, note
    low = o.low_dtype
    info["dcn_layers"] = install_kernel(model, kernel, low_dtype=low)
    if low is not None and o.cast == "model":
        model.to(low)
    if low is not None and o.fp32_heads:
        for head in model.heads:
            seq = model.head(head)
            seq[-1] = _Fp32Conv(seq[-1])
    model.to(o.device)
    if o.channels_last:
        model.to(memory_format=torch.channels_last)
    module = model
    if o.compile:
        try:
            module = torch.compile(model, backend=o.compile_backend, mode=o.compile_mode, dynamic=False)
        except Exception as e:  # noqa: BLE001 - e.g. no compiler toolchain
            raise UserError(f"torch.compile is not available here ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200]}); run without --compile") from None
    return model, module, info
