"""Which kernel runs the deformable convolutions of the PyTorch backend.

- "ours": dcn_v2.modulated_deform_conv2d (one grid_sample + one matmul), exact
  to ONNX's reference DeformConv; runs wherever torch runs.
- "torchvision": torchvision.ops.deform_conv2d, the library kernel. Its
  conventions (torchvision's documentation): deform_conv2d(input, offset,
  weight, bias, stride, padding, dilation, mask) with offset
  (N, 2*offset_groups*kh*kw, Ho, Wo) holding a (dy, dx) pair per tap, and mask
  (N, offset_groups*kh*kw, Ho, Wo): DCNv2's layout, so the offsets and the
  sigmoid-ed mask go in as they are.
- "auto": torchvision where it imports, runs on the device and agrees with
  ours within float32 rounding on a probe layer (on CUDA also: where it is the
  faster of the two on that probe); otherwise, silently, ours. Today's PyPI
  torchvision wheel fails to import beside the CPU torch ("operator
  torchvision::nms does not exist"), and many machines have no torchvision.

The network's DCN layers are switched to the chosen kernel by
`install_kernel`, which also keeps their sampling in float32 when the rest of
the network runs in fp16/bf16 (see KernelDCN).
"""
import contextlib

import torch

from dcn_v2 import DCN, modulated_deform_conv2d

from centernet.constants import DCN_KERNELS as KERNELS
from centernet.core.compare import difference
from centernet.core.timing import best_seconds
from centernet.errors import UserError
# Agreement of the library kernel with ours on the probe, as a fraction of the
# probe output's largest magnitude: float32 rounding of a 9*C-term sum and of
# the bilinear weights is ~1e-6 of it; a wrong convention (x/y swapped, no
# mask) is ~1e-1 or more.
AGREE_REL = 1e-4


def ours(x, offset, mask, weight, bias, stride, padding, dilation):
    return modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation)


def torchvision_kernel():
    """(kernel, None) with torchvision's deform_conv2d behind our argument
    order, or (None, why it is not usable here)."""
    try:
        from torchvision.ops import deform_conv2d
    except Exception as e:  # absent, or a wheel built for another torch (RuntimeError at import)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None, f"torchvision does not import ({type(e).__name__}: {first[:200]})"

    def kernel(x, offset, mask, weight, bias, stride, padding, dilation):
        # torchvision's order: weight after offset, mask last as a keyword.
        return deform_conv2d(x, offset, weight, bias, stride=tuple(stride), padding=tuple(padding),
                             dilation=tuple(dilation), mask=mask)
    return kernel, None


def probe_case(device, n=2, c=8, h=12, w=16, o=6, seed=0):
    """A DCN layer's arguments on `device` in float32: offsets from fractions of
    a pixel to several pixels (many samples beyond the border), masks in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen)
    offset = torch.randn(n, 18, h, w, generator=gen) * 2.5
    mask = torch.rand(n, 9, h, w, generator=gen)
    weight = torch.randn(o, c, 3, 3, generator=gen) / 3
    bias = torch.randn(o, generator=gen)
    return [t.to(device) for t in (x, offset, mask, weight, bias)] + [(1, 1), (1, 1), (1, 1)]


@contextlib.contextmanager
def tf32_allowed(allowed):
    """Inside this block, CUDA matmuls and convolutions may (or may not) use
    TF32. CUDA's default lets convolutions use it, ~1e-3 off: not float32."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(allowed)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _time(fn, args, device, repeats=5):
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    return best_seconds(lambda: fn(*args), repeats, sync)


def agreement(kernel, device):
    """max |kernel - ours| / max |ours| on the probe layer (inf if it fails)."""
    args = probe_case(device)
    with torch.inference_mode(), tf32_allowed(False):
        ref = ours(*args)
        try:
            got = kernel(*args)
        except Exception:  # noqa: BLE001 - a kernel that cannot run on this device
            return float("inf")
    if got.shape != ref.shape:
        return float("inf")
    return difference(got.float().cpu().numpy(), ref.cpu().numpy())[2]


def select_kernel(choice="auto", device="cpu", compare_speed=None):
    """(name, kernel, note) for --dcn CHOICE on `device`. note says why "auto"
    fell back to ours, or how the library kernel fared. compare_speed (default:
    on CUDA): with "auto", keep torchvision only where it is also faster than
    ours on a layer of the network's largest DCN shape."""
    if choice not in KERNELS:
        raise UserError(f"unknown DCN kernel {choice!r}; choose from {', '.join(KERNELS)}")
    device = torch.device(device)
    if choice == "ours":
        return "ours", ours, "chosen"
    kernel, why = torchvision_kernel()
    if kernel is not None:
        rel = agreement(kernel, device)
        if rel > AGREE_REL:
            kernel, why = None, (f"torchvision's deform_conv2d differs from ours by {rel:.1e} of the output "
                                 f"on {device.type} (more than float32 rounding, {AGREE_REL:g})")
    if kernel is None:
        if choice == "torchvision":
            raise UserError(f"--dcn torchvision: {why}; use --dcn ours (or auto)")
        return "ours", ours, why
    note = f"agrees with ours to {rel:.1e}"
    if choice == "auto" and (device.type == "cuda" if compare_speed is None else compare_speed):
        # 64 channels at 128x128: the network's DCNs at its output resolution (most of their time).
        args = probe_case(device, n=1, c=64, h=128, w=128, o=64)
        with torch.inference_mode():
            t_lib, t_ours = _time(kernel, args, device), _time(ours, args, device)
        note += f"; probe {t_lib * 1e3:.2f} ms vs ours {t_ours * 1e3:.2f} ms"
        if t_ours < t_lib:
            return "ours", ours, note + ": ours is faster"
    return "torchvision", kernel, note


class KernelDCN(DCN):
    """A DCN layer whose deformable convolution runs `self.kernel`.

    With `self.low_dtype` set (the network runs in fp16/bf16) the sampling is
    done in float32 and only the convolution's products in low precision
    (under autocast): sample positions reach the map size (128 at 512x512),
    where bf16 keeps whole pixels only and fp16 sixteenths, so sampling in
    low precision would move every tap. The library kernel casts everything
    to float32 under autocast by itself."""

    kernel = staticmethod(ours)
    low_dtype = None

    def forward(self, input):
        offset, mask = self.offset_and_mask(input)
        if self.low_dtype is None:
            return self.kernel(input, offset, mask, self.weight, self.bias,
                               self.stride, self.padding, self.dilation)
        with torch.autocast(input.device.type, dtype=self.low_dtype, cache_enabled=False):
            out = self.kernel(input.float(), offset.float(), mask.float(), self.weight.float(),
                              self.bias.float(), self.stride, self.padding, self.dilation)
        return out.to(input.dtype)


def install_kernel(model, kernel, low_dtype=None):
    """Switch every DCN of `model` (in place) to `kernel`; low_dtype: see KernelDCN.
    Parameters and their names are unchanged. Returns the number of layers."""
    count = 0
    for module in model.modules():
        if isinstance(module, DCN):
            module.__class__ = KernelDCN
            module.kernel = kernel
            module.low_dtype = low_dtype
            count += 1
    return count
