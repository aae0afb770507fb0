"""FLOPs of the network, counted by torch.utils.flop_counter (a multiply-add
is 2 FLOPs), per module type: every benchmark row says what GFLOP/s it sustains."""
import logging
import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dcn_v2 import DCN


logger = logging.getLogger(__name__)


EXPECTED_GFLOP_512 = 66.2  # ctdet DLA-34 at 512x512, a multiply-add counted as 2 FLOPs


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

    def inclusive(path, module):
        """A module's count with its submodules'. A container that is never
        called itself (a ModuleList whose items the parent calls, as in
        Hourglass-104) has no count of its own: its items' counts are its."""
        if path in counts:
            return counts[path]
        return sum(inclusive(f"{path}.{child}", sub) for child, sub in module.named_children())

    by_type = {}
    for name, module in model.named_modules():
        path = f"{root}.{name}" if name else root
        if path not in counts:
            continue  # never called: its items are counted as themselves
        own = counts[path] - sum(inclusive(f"{path}.{child}", sub) for child, sub in module.named_children())
        if own:
            kind = next((t.__name__ for t in FLOP_TYPES if isinstance(module, t)), type(module).__name__)
            by_type[kind] = by_type.get(kind, 0) + own
    total = counter.get_total_flops()
    if total != sum(by_type.values()):
        raise RuntimeError(f"FLOPs by module type ({sum(by_type.values())}) do not add up to the total ({total})")
    return {"total": total, "by_type": by_type}
