"""dlav0's layout is upstream's DLA-34 without DCN: key names, shapes, outputs."""
import pytest
import torch
from torch import nn

from dcn_v2 import DCN
from dlav0 import get_pose_net

HEADS = {"hm": 80, "wh": 2, "reg": 2}

# Shapes that upstream's dlav0.DLASeg("dla34", HEADS, head_conv=256) gives these keys.
UPSTREAM_KEYS = {
    "base.base_layer.0.weight": (16, 3, 7, 7),
    "base.level2.tree1.conv1.weight": (64, 32, 3, 3),
    "base.level5.root.conv.weight": (512, 1280, 1, 1),
    "base.level3.tree2.root.conv.weight": (128, 448, 1, 1),
    "dla_up.ida_0.proj_1.0.weight": (256, 512, 1, 1),  # 1x1 conv + BN + ReLU projection
    "dla_up.ida_0.proj_1.1.running_mean": (256,),
    "dla_up.ida_0.up_1.weight": (256, 1, 4, 4),
    "dla_up.ida_0.node_1.0.weight": (256, 512, 3, 3),  # 3x3 conv over two concatenated maps
    "dla_up.ida_1.proj_2.0.weight": (128, 256, 1, 1),
    "dla_up.ida_1.node_2.1.bias": (128,),
    "dla_up.ida_2.up_3.weight": (64, 1, 4, 4),
    "dla_up.ida_2.node_3.0.weight": (64, 128, 3, 3),
    "hm.0.weight": (256, 64, 3, 3),
    "hm.2.bias": (80,),
    "wh.2.weight": (2, 256, 1, 1),
    "reg.2.bias": (2,),
}
# Upstream's dla_up weights other than BN, in its state_dict order: a map that
# already has the stage's width or scale has no proj_i / up_i (Identity).
UPSTREAM_DLA_UP_WEIGHTS = [
    "dla_up.ida_0.proj_1.0.weight", "dla_up.ida_0.up_1.weight", "dla_up.ida_0.node_1.0.weight",
    "dla_up.ida_1.proj_1.0.weight", "dla_up.ida_1.up_1.weight", "dla_up.ida_1.proj_2.0.weight",
    "dla_up.ida_1.up_2.weight", "dla_up.ida_1.node_1.0.weight", "dla_up.ida_1.node_2.0.weight",
    "dla_up.ida_2.proj_1.0.weight", "dla_up.ida_2.up_1.weight", "dla_up.ida_2.proj_2.0.weight",
    "dla_up.ida_2.up_2.weight", "dla_up.ida_2.proj_3.0.weight", "dla_up.ida_2.up_3.weight",
    "dla_up.ida_2.node_1.0.weight", "dla_up.ida_2.node_2.0.weight", "dla_up.ida_2.node_3.0.weight",
]
# sum(p.numel()) of upstream's own build with HEADS and head_conv=256, less
# its unused ImageNet classifier base.fc (513,000).
UPSTREAM_PARAMS = 17_961_476


@pytest.fixture(scope="module")
def model():
    return get_pose_net(34, HEADS, head_conv=256).eval()


def test_upstream_keys_and_shapes(model):
    state = model.state_dict()
    for key, shape in UPSTREAM_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    dla_up = [k for k in state if k.startswith("dla_up.") and k.endswith("weight") and ".1." not in k]
    assert dla_up == UPSTREAM_DLA_UP_WEIGHTS
    assert not any(k.startswith(("base.fc", "ida_up.")) for k in state)


def test_parameter_count(model):
    assert sum(p.numel() for p in model.parameters()) == UPSTREAM_PARAMS


def test_no_dcn_layers(model):
    assert not any(isinstance(m, DCN) for m in model.modules())


def test_only_dla34():
    with pytest.raises(ValueError, match="num_layers=34"):
        get_pose_net(60, HEADS)


def test_outputs_raw_logits_at_stride_4(model):
    with torch.no_grad():
        hm, wh, reg = model(torch.randn(2, 3, 32, 64))
    assert hm.shape == (2, 80, 8, 16) and wh.shape == (2, 2, 8, 16) and reg.shape == (2, 2, 8, 16)
    # hm's final bias is the -2.19 prior and no sigmoid is applied: logits go negative.
    assert torch.all(model.hm[2].bias == torch.tensor(-2.19))
    assert torch.all(model.wh[0].bias == 0) and torch.all(model.wh[2].bias == 0)
    assert hm.min() < 0


def test_head_ends_with_final_conv():
    model = get_pose_net(34, {"hm": 3, "wh": 2, "reg": 2})
    for name, classes in model.heads.items():
        final = model.head(name)[-1]
        assert isinstance(final, nn.Conv2d) and final.out_channels == classes
        assert final is getattr(model, name)[2]


def test_head_conv_0_is_a_bare_conv_as_upstream():
    model = get_pose_net(34, HEADS, head_conv=0)
    state = model.state_dict()
    assert tuple(state["hm.weight"].shape) == (80, 64, 1, 1) and "hm.2.weight" not in state
    assert model.head("hm")[-1] is model.hm


def test_float64_runs():
    model = get_pose_net(34, {"hm": 3, "wh": 2, "reg": 2}).eval().double()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert all(o.dtype == torch.float64 and o.shape[-2:] == (8, 8) for o in outs)
