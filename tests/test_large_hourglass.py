"""Hourglass-104's layout is upstream's: key names, shapes, outputs.

The network has about 191 M parameters, so it is built once for the module and
every forward uses small inputs (sides must be multiples of 128).
"""
import pytest
import torch
from torch import nn

from dcn_v2 import DCN
from large_hourglass import get_large_hourglass_net

HEADS = {"hm": 80, "wh": 2, "reg": 2}
# Keys and shapes as upstream's large_hourglass.py builds them (heads hm 80, wh 2, reg 2).
UPSTREAM_KEYS = {
    "pre.0.conv.weight": (128, 3, 7, 7),
    "pre.0.bn.running_var": (128,),
    "pre.1.conv1.weight": (256, 128, 3, 3),
    "pre.1.skip.0.weight": (256, 128, 1, 1),
    "pre.1.skip.1.bias": (256,),
    "kps.0.up1.0.conv1.weight": (256, 256, 3, 3),
    "kps.0.low1.0.conv1.weight": (256, 256, 3, 3),  # stride 2, so it has a skip
    "kps.0.low1.0.skip.0.weight": (256, 256, 1, 1),
    "kps.0.low2.low1.0.conv1.weight": (384, 256, 3, 3),
    "kps.0.low2.low2.low2.low2.low1.0.conv1.weight": (512, 384, 3, 3),
    "kps.0.low2.low2.low2.low2.low2.3.conv2.weight": (512, 512, 3, 3),  # innermost: 4 blocks
    "kps.0.low2.low2.low2.low2.low3.1.conv1.weight": (384, 512, 3, 3),  # the last block narrows
    "kps.0.low2.low2.low2.low2.low3.1.skip.0.weight": (384, 512, 1, 1),
    "kps.0.low3.1.bn2.running_mean": (256,),
    "kps.1.low2.low3.1.skip.0.weight": (256, 384, 1, 1),
    "cnvs.0.conv.weight": (256, 256, 3, 3),
    "cnvs.1.bn.weight": (256,),
    "inters.0.conv1.weight": (256, 256, 3, 3),
    "inters.0.bn2.running_var": (256,),
    "inters_.0.0.weight": (256, 256, 1, 1),
    "inters_.0.1.running_mean": (256,),
    "cnvs_.0.0.weight": (256, 256, 1, 1),
    "cnvs_.0.1.bias": (256,),
    "hm.0.0.conv.weight": (256, 256, 3, 3),
    "hm.0.0.conv.bias": (256,),
    "hm.0.1.weight": (80, 256, 1, 1),
    "hm.1.0.conv.weight": (256, 256, 3, 3),
    "hm.1.1.weight": (80, 256, 1, 1),
    "hm.1.1.bias": (80,),
    "wh.1.1.weight": (2, 256, 1, 1),
    "reg.0.1.bias": (2,),
}
# Upstream's state_dict has 824 entries apart from num_batches_tracked; none of these exist there.
ABSENT_KEYS = ("pre.0.conv.bias", "hm.1.0.bn.weight", "kps.0.up1.0.skip.0.weight",
               "inters.1.conv1.weight", "cnvs_.1.0.weight", "hm.2.1.bias")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return get_large_hourglass_net(0, HEADS, 64).eval()


@pytest.fixture(scope="module")
def run(model):
    """One forward at 128x128: its outputs and the (head, stack) pairs that ran, in order."""
    ran = []
    hooks = [getattr(model, name)[stack].register_forward_hook(
        lambda m, args, out, key=(name, stack): ran.append(key))
        for name in HEADS for stack in (0, 1)]
    try:
        with torch.no_grad():
            outputs = model(torch.randn(1, 3, 128, 128))
    finally:
        for h in hooks:
            h.remove()
    return outputs, ran


def test_upstream_keys_and_shapes(model):
    state = model.state_dict()
    for key, shape in UPSTREAM_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    for key in ABSENT_KEYS:
        assert key not in state, key
    assert sum(not k.endswith("num_batches_tracked") for k in state) == 824


def test_parameter_count(model):
    n = sum(p.numel() for p in model.parameters())
    assert 191.2e6 < n < 191.4e6  # upstream with hm 80, wh 2, reg 2: 191,284,008


def test_outputs_raw_logits_at_stride_4(model, run):
    hm, wh, reg = run[0]
    assert hm.shape == (1, 80, 32, 32) and wh.shape == (1, 2, 32, 32) and reg.shape == (1, 2, 32, 32)
    # hm's final bias is the -2.19 prior, in both stacks, and no sigmoid is applied.
    for stack in model.hm:
        assert torch.all(stack[-1].bias == torch.tensor(-2.19))
    assert hm.min() < 0


def test_non_square_input_keeps_stride_4(model):
    with torch.no_grad():
        shapes = [tuple(t.shape) for t in model(torch.randn(1, 3, 128, 256))]
    assert shapes == [(1, 80, 32, 64), (1, 2, 32, 64), (1, 2, 32, 64)]


def test_head_is_the_last_stacks(model):
    assert list(model.heads) == ["hm", "wh", "reg"]
    for name in HEADS:
        assert model.head(name) is getattr(model, name)[1]
        assert isinstance(model.head(name)[-1], nn.Conv2d)
    assert model.head("wh")[-1].out_channels == 2


def test_first_stack_heads_load_but_do_not_run(model, run):
    # Their weights are in the state_dict (upstream checkpoints load strictly) ...
    state = model.state_dict()
    assert all(f"{name}.0.{i}.weight" in state for name in HEADS for i in ("0.conv", "1"))
    # ... but the forward only runs the last stack's heads, in the order of `heads`.
    assert run[1] == [("hm", 1), ("wh", 1), ("reg", 1)]


def test_no_dcn_layers(model):
    assert not any(isinstance(m, DCN) for m in model.modules())
    assert not any("conv_offset_mask" in k for k in model.state_dict())
