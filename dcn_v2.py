"""Modulated deformable convolution (DCNv2) in plain PyTorch, with ONNX export.

A drop-in replacement for upstream CenterNet's compiled DCNv2 extension: copy
this one file over src/lib/models/networks/DCNv2/dcn_v2.py and nothing needs
to be compiled. `DCNv2` and `DCN` have upstream's constructors and parameter
names, work on CPU and GPU, and have gradients (training runs too). Needs
torch only.

Semantics (DCNv2, Zhu et al. 2019, as upstream's kernel computes it): for
output pixel (h, w) and kernel tap k = kw*i + j, sample the input at
    (h*stride - pad + i*dil + offset[2k], w*stride - pad + j*dil + offset[2k+1])
(offset channel 2k is the vertical shift, 2k+1 the horizontal one) by
bilinear interpolation in which every corner outside the image counts as 0,
multiply the sample by mask[k], and convolve. The sampling is one
`grid_sample` call over all taps, the convolution one matmul.

Export flavours (chosen with `export_flavour(...)` around torch.onnx.export):
- "deformconv": ONNX `DeformConv` (opset 19), run by ONNX Runtime.
- "ascend": Ascend ATC's `DeformableConv2D` (default domain, opset 11) with
  27 offset channels packed [x shifts(9), y shifts(9), mask(9)].
- "decompose": no custom node; standard operators (GridSample + MatMul,
  opset 16+) for runtimes lacking DeformConv, e.g. OpenVINO. With
  `static_size=True` (an export with a fixed input height and width) every
  shape and base grid is a constant and each layer traces to ~15 nodes
  (`decomposed_deform_conv2d_static`); otherwise the PyTorch forward is traced
  as is, with the shape arithmetic that a dynamic size needs.
"""
import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

FLAVOURS = ("deformconv", "ascend", "decompose")
_flavour = "deformconv"
_static_size = False


@contextlib.contextmanager
def export_flavour(name, static_size=False):
    """Select how DCN layers appear in an ONNX export inside this block.
    static_size: the export has a fixed input height and width (only the
    batch may vary), so "decompose" may bake spatial sizes into constants."""
    global _flavour, _static_size
    if name not in FLAVOURS:
        raise ValueError(f"unknown DCN export flavour {name!r}; choose from {FLAVOURS}")
    previous, _flavour = (_flavour, _static_size), name
    _static_size = bool(static_size)
    try:
        yield
    finally:
        _flavour, _static_size = previous


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def modulated_deform_conv2d(x, offset, mask, weight, bias, stride=1, padding=0, dilation=1):
    """Reference-exact modulated deformable convolution (deformable_groups=1).

    x: (N, C, H, W); offset: (N, 2*kh*kw, Ho, Wo) as (dy, dx) per tap;
    mask: (N, kh*kw, Ho, Wo), already sigmoid-ed; weight: (O, C, kh, kw).
    """
    n, c, h, w = x.shape
    out_c, _, kh, kw = weight.shape
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    ho, wo = offset.shape[-2:]
    taps = kh * kw

    # Base sampling positions per tap and output pixel, in input pixels.
    dtype, device = x.dtype, x.device
    ky = (torch.arange(kh, device=device, dtype=dtype) * dh).repeat_interleave(kw)  # (taps,)
    kx = (torch.arange(kw, device=device, dtype=dtype) * dw).repeat(kh)
    oy = torch.arange(ho, device=device, dtype=dtype) * sh - ph
    ox = torch.arange(wo, device=device, dtype=dtype) * sw - pw
    off = offset.reshape(n, taps, 2, ho, wo)
    py = ky.view(1, taps, 1, 1) + oy.view(1, 1, ho, 1) + off[:, :, 0]
    px = kx.view(1, taps, 1, 1) + ox.view(1, 1, 1, wo) + off[:, :, 1]

    # grid_sample with align_corners=False maps normalised g to pixel
    # ((g + 1) * size - 1) / 2; invert that so pixel p is sampled exactly.
    # padding_mode="zeros" makes every corner outside the image count as 0,
    # which is DCNv2's border rule.
    gx = (2 * px + 1) / w - 1
    gy = (2 * py + 1) / h - 1
    grid = torch.stack((gx, gy), dim=-1).reshape(n, taps * ho, wo, 2)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # (N, C, taps*Ho, Wo) -> modulate -> columns (N, C*taps, Ho*Wo), c-major like weight.
    sampled = sampled.reshape(n, c, taps, ho, wo) * mask.reshape(n, 1, taps, ho, wo)
    cols = sampled.reshape(n, c * taps, ho * wo)
    out = torch.matmul(weight.reshape(out_c, c * taps), cols)
    if bias is not None:
        out = out + bias.view(1, out_c, 1)
    return out.reshape(n, out_c, ho, wo)


@contextlib.contextmanager
def _untraced():
    """Compute inside this block without the ONNX tracer recording it: the
    results enter the graph as constants."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


def _grid_constants(h, w, ho, wo, kh, kw, stride, padding, dilation):
    """Normalised sampling positions of every tap and output pixel, as two
    broadcastable parts (rows, columns), and the offset-to-grid scale."""
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    taps = kh * kw
    f64 = torch.float64
    rows = (torch.arange(kh, dtype=f64) * dh).repeat_interleave(kw).view(taps, 1) \
        + (torch.arange(ho, dtype=f64) * sh - ph).view(1, ho)
    cols = (torch.arange(kw, dtype=f64) * dw).repeat(kh).view(taps, 1) \
        + (torch.arange(wo, dtype=f64) * sw - pw).view(1, wo)
    # Pixel p is normalised (2p + 1) / size - 1 (grid_sample, align_corners=False).
    base_y = torch.zeros(1, taps, ho, 1, 2, dtype=f64)
    base_y[0, :, :, 0, 1] = (2 * rows + 1) / h - 1
    base_x = torch.zeros(1, taps, 1, wo, 2, dtype=f64)
    base_x[0, :, 0, :, 0] = (2 * cols + 1) / w - 1
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=f64)
    return base_y, base_x, scale


def decomposed_deform_conv2d_static(x, offset, mask, weight, bias, stride=1, padding=0, dilation=1):
    """`modulated_deform_conv2d` for export at a fixed spatial size (any batch):
    the same sampling, written so that the trace has no shape arithmetic.

    The normalised grid is offset * scale + base, where base (the tap and pixel
    positions) is the sum of two small broadcast constants, one varying along
    rows, one along columns. Used only while exporting with
    export_flavour("decompose", static_size=True); the eager forward is
    `modulated_deform_conv2d`, which tests/test_dcn_v2.py holds to ONNX's reference.
    """
    with _untraced():
        _, c, h, w = (int(d) for d in x.shape)
        out_c, _, kh, kw = (int(d) for d in weight.shape)
        ho, wo = (int(d) for d in offset.shape[-2:])
        consts = _grid_constants(h, w, ho, wo, kh, kw, stride, padding, dilation)
        base_y, base_x, scale = (t.to(x.dtype) for t in consts)
    taps = kh * kw

    # Offsets come as (dy, dx) per tap; grid_sample wants (x, y) last.
    off = offset.reshape(-1, taps, 2, ho, wo).permute(0, 1, 3, 4, 2).flip(-1)
    grid = off * scale + base_y + base_x
    sampled = F.grid_sample(x, grid.reshape(-1, taps * ho, wo, 2), mode="bilinear",
                            padding_mode="zeros", align_corners=False)
    sampled = sampled.reshape(-1, c, taps, ho, wo) * mask.reshape(-1, 1, taps, ho, wo)
    # A MatMul, as in the eager forward: a 1x1 Conv in its place measured ~4%
    # slower in both ONNX Runtime and OpenVINO (it needs a layout reorder of
    # the 9x wider sampled tensor that costs more than the BatchNorm it absorbs).
    out = torch.matmul(weight.reshape(out_c, c * taps), sampled.reshape(-1, c * taps, ho * wo))
    if bias is not None:
        out = out + bias.reshape(out_c, 1)
    return out.reshape(-1, out_c, ho, wo)


class _DeformConvOp(torch.autograd.Function):
    """Runs the PyTorch forward; exports as one ONNX node (DeformConv or DeformableConv2D)."""

    @staticmethod
    def forward(ctx, x, offset, mask, weight, bias, stride, padding, dilation):
        # Compute untraced: the exporter only needs the output's value and
        # shape here, and tracing the inner ops breaks its graph passes.
        with _untraced():
            return modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation)

    @staticmethod
    def symbolic(g, x, offset, mask, weight, bias, stride, padding, dilation):
        kh, kw = weight.type().sizes()[2:] if weight.type().sizes() else (3, 3)
        if _flavour == "ascend":
            taps = kh * kw
            # ATC wants [x shifts, y shifts, mask]; ours interleave (dy, dx) per tap.
            order = [2 * k + 1 for k in range(taps)] + [2 * k for k in range(taps)]
            idx = g.op("Constant", value_t=torch.tensor(order, dtype=torch.int64))
            xy = g.op("Gather", offset, idx, axis_i=1)
            packed = g.op("Concat", xy, mask, axis_i=1)
            return g.op("DeformableConv2D", x, weight, packed, bias,
                        strides_i=list(stride), pads_i=list(padding), dilations_i=list(dilation),
                        groups_i=1, deformable_groups_i=1, data_format_s="NCHW", modulated_i=1)
        return g.op("DeformConv", x, weight, offset, bias, mask,
                    kernel_shape_i=[kh, kw], strides_i=list(stride),
                    pads_i=[padding[0], padding[1], padding[0], padding[1]],
                    dilations_i=list(dilation), group_i=1, offset_group_i=1)


class DCNv2(nn.Module):
    """Modulated deformable convolution with the offsets and mask given:
    forward(input, offset, mask). Upstream's constructor and parameter names
    (weight, bias); only deformable_groups=1, which every upstream model uses."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding,
                 dilation=1, deformable_groups=1):
        super().__init__()
        if deformable_groups != 1:
            raise ValueError("only deformable_groups=1 is implemented (what CenterNet uses)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.reset_parameters()

    def reset_parameters(self):
        # Upstream's init: uniform weights, zero bias.
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, input, offset, mask):
        if torch.onnx.is_in_onnx_export() and _flavour != "decompose":
            return _DeformConvOp.apply(input, offset, mask, self.weight, self.bias,
                                       self.stride, self.padding, self.dilation)
        if torch.onnx.is_in_onnx_export() and _static_size:
            return decomposed_deform_conv2d_static(input, offset, mask, self.weight, self.bias,
                                                   self.stride, self.padding, self.dilation)
        return modulated_deform_conv2d(input, offset, mask, self.weight, self.bias,
                                       self.stride, self.padding, self.dilation)


class DCN(DCNv2):
    """Upstream's `DCN` layer: a conv predicting offsets and mask, then DCNv2.

    Parameter names match upstream checkpoints: weight, bias,
    conv_offset_mask.weight, conv_offset_mask.bias.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding,
                 dilation=1, deformable_groups=1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding,
                         dilation, deformable_groups)
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset_mask = nn.Conv2d(in_channels, 3 * taps, self.kernel_size,
                                          stride=self.stride, padding=self.padding, bias=True)
        self.init_offset()

    def init_offset(self):
        # Upstream's init: zero offsets and mask logits (mask 0.5 everywhere).
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def offset_and_mask(self, x):
        """Split conv_offset_mask's output into thirds o1, o2, m (upstream's chunk):
        offset = cat(o1, o2) is simply the first two thirds, mask = sigmoid(m)."""
        om = self.conv_offset_mask(x)
        taps = self.kernel_size[0] * self.kernel_size[1]  # a constant, not a traced shape
        return om[:, :2 * taps], torch.sigmoid(om[:, 2 * taps:])

    def forward(self, input):
        offset, mask = self.offset_and_mask(input)
        return super().forward(input, offset, mask)
