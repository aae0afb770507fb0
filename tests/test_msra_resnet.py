"""msra_resnet's layout is upstream's PoseResNet: key names, shapes, outputs."""
import pytest
import torch
from torch import nn

from dcn_v2 import DCN
from msra_resnet import RESNET_SPEC, Bottleneck, get_pose_net

HEADS = {"hm": 80, "wh": 2, "reg": 2}

# Shapes that upstream's msra_resnet.get_pose_net(18 / 101, HEADS, head_conv=64) gives these keys.
UPSTREAM_KEYS_18 = {
    "conv1.weight": (64, 3, 7, 7),
    "layer1.0.conv1.weight": (64, 64, 3, 3),  # BasicBlock: 3x3, no conv3
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer4.1.bn2.running_var": (512,),
    "deconv_layers.0.weight": (512, 256, 4, 4),
    "deconv_layers.3.weight": (256, 256, 4, 4),
    "deconv_layers.7.running_mean": (256,),
    "hm.0.weight": (64, 256, 3, 3),
    "hm.0.bias": (64,),
    "hm.2.weight": (80, 64, 1, 1),
    "hm.2.bias": (80,),
    "wh.2.weight": (2, 64, 1, 1),
    "reg.2.bias": (2,),
}
UPSTREAM_KEYS_101 = {
    "layer1.0.conv1.weight": (64, 64, 1, 1),  # Bottleneck: 1x1, 3x3, 1x1 (x4)
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer3.22.conv2.weight": (256, 256, 3, 3),
    "layer4.2.bn3.running_mean": (2048,),
    "deconv_layers.0.weight": (2048, 256, 4, 4),
    "hm.0.weight": (64, 256, 3, 3),
}
# sum(p.numel()) of upstream's own build with HEADS and head_conv=64.
UPSTREAM_PARAMS = {18: 15_820_372, 101: 53_435_476}


@pytest.fixture(scope="module")
def res101():
    return get_pose_net(101, HEADS, head_conv=64)


def test_upstream_keys_and_shapes_res18():
    state = get_pose_net(18, HEADS, head_conv=64).state_dict()
    for key, shape in UPSTREAM_KEYS_18.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(".conv3." in k for k in state)
    assert "fc.weight" not in state  # no ImageNet classifier, as upstream


def test_upstream_keys_and_shapes_res101(res101):
    state = res101.state_dict()
    for key, shape in UPSTREAM_KEYS_101.items():
        assert tuple(state[key].shape) == shape, key
    assert "layer3.23.conv1.weight" not in state  # 23 blocks in layer3


def test_parameter_count(res101):
    assert sum(p.numel() for p in get_pose_net(18, HEADS, head_conv=64).parameters()) == UPSTREAM_PARAMS[18]
    assert sum(p.numel() for p in res101.parameters()) == UPSTREAM_PARAMS[101]


def test_every_upstream_depth():
    # Upstream's resnet_spec; 34 and 50 are built to check the block counts
    # (152, 69 M parameters, only by its table entry, to keep the test fast).
    assert sorted(RESNET_SPEC) == [18, 34, 50, 101, 152]
    assert RESNET_SPEC[152] == (Bottleneck, [3, 8, 36, 3])
    for depth, last_keys in ((34, ("layer1.2.conv2.weight", "layer3.5.conv2.weight")),
                             (50, ("layer1.2.conv3.weight", "layer3.5.conv3.weight"))):
        state = get_pose_net(depth, {"hm": 1}, head_conv=8).state_dict()
        assert all(k in state for k in last_keys), depth
        assert "layer3.6.conv1.weight" not in state
    with pytest.raises(ValueError, match="18, 34, 50, 101, 152"):
        get_pose_net(20, HEADS)


def test_no_dcn_layers():
    assert not any(isinstance(m, DCN) for m in get_pose_net(18, HEADS).modules())


def test_outputs_raw_logits_at_stride_4():
    model = get_pose_net(18, HEADS, head_conv=64).eval()
    with torch.no_grad():
        hm, wh, reg = model(torch.randn(2, 3, 32, 64))
    assert hm.shape == (2, 80, 8, 16) and wh.shape == (2, 2, 8, 16) and reg.shape == (2, 2, 8, 16)
    # hm's final bias is the -2.19 prior and no sigmoid is applied: logits go negative.
    assert torch.all(model.hm[2].bias == torch.tensor(-2.19))
    assert torch.all(model.wh[2].bias == 0) and torch.all(model.reg[2].bias == 0)
    assert hm.min() < 0


def test_outputs_follow_heads_order_though_state_dict_is_sorted():
    # Upstream registers heads sorted (reg, wh, hm in its state_dict: hm, reg, wh)
    # but returns them in the order of `heads`.
    model = get_pose_net(18, {"wh": 2, "hm": 3, "reg": 4}, head_conv=64).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 32, 32))
    assert [o.shape[1] for o in outs] == [2, 3, 4]
    heads_in_state = [k.split(".")[0] for k in model.state_dict() if k.endswith(".2.bias")]
    assert heads_in_state == ["hm", "reg", "wh"]


def test_head_ends_with_final_conv():
    model = get_pose_net(18, {"hm": 3, "wh": 2, "reg": 2}, head_conv=64)
    for name, classes in model.heads.items():
        final = model.head(name)[-1]
        assert isinstance(final, nn.Conv2d) and final.out_channels == classes
        assert final is getattr(model, name)[2]


def test_head_conv_0_is_a_bare_conv_as_upstream():
    model = get_pose_net(18, HEADS, head_conv=0)
    state = model.state_dict()
    assert tuple(state["hm.weight"].shape) == (80, 256, 1, 1) and "hm.2.weight" not in state
    assert model.head("hm")[-1] is model.hm


def test_float64_runs():
    model = get_pose_net(18, {"hm": 3, "wh": 2, "reg": 2}).eval().double()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert all(o.dtype == torch.float64 and o.shape[-2:] == (8, 8) for o in outs)
