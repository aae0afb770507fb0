"""resnet_dcn's layout is upstream's resdcn PoseResNet: key names, shapes, outputs."""
import pytest
import torch
from torch import nn

from dcn_v2 import DCN
from resnet_dcn import get_pose_net

HEADS = {"hm": 80, "wh": 2, "reg": 2}

# Shapes that upstream's resnet_dcn.get_pose_net(18 / 101, HEADS, head_conv=64) gives these keys.
UPSTREAM_KEYS_18 = {
    "layer1.0.conv1.weight": (64, 64, 3, 3),  # BasicBlock
    "deconv_layers.0.weight": (256, 512, 3, 3),  # DCN
    "deconv_layers.0.bias": (256,),
    "deconv_layers.0.conv_offset_mask.weight": (27, 512, 3, 3),
    "deconv_layers.1.running_var": (256,),
    "deconv_layers.3.weight": (256, 256, 4, 4),  # transposed conv
    "deconv_layers.6.weight": (128, 256, 3, 3),
    "deconv_layers.6.conv_offset_mask.weight": (27, 256, 3, 3),
    "deconv_layers.9.weight": (128, 128, 4, 4),
    "deconv_layers.12.weight": (64, 128, 3, 3),
    "deconv_layers.15.weight": (64, 64, 4, 4),
    "deconv_layers.16.running_mean": (64,),
    "hm.0.weight": (64, 64, 3, 3),  # heads on 64 channels
    "hm.2.bias": (80,),
    "wh.2.weight": (2, 64, 1, 1),
}
UPSTREAM_KEYS_101 = {
    "layer1.0.conv3.weight": (256, 64, 1, 1),  # Bottleneck
    "layer3.22.conv3.weight": (1024, 256, 1, 1),
    "deconv_layers.0.weight": (256, 2048, 3, 3),
    "deconv_layers.0.conv_offset_mask.weight": (27, 2048, 3, 3),
    "hm.0.weight": (64, 64, 3, 3),
}
# sum(p.numel()) of upstream's own build with HEADS and head_conv=64.
UPSTREAM_PARAMS = {18: 14_437_349, 101: 49_673_189}
DCN_LAYERS = {"deconv_layers.0", "deconv_layers.6", "deconv_layers.12"}


@pytest.fixture(scope="module")
def resdcn101():
    return get_pose_net(101, HEADS, head_conv=64)


def test_upstream_keys_and_shapes_resdcn18():
    state = get_pose_net(18, HEADS, head_conv=64).state_dict()
    for key, shape in UPSTREAM_KEYS_18.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(".conv3." in k for k in state)
    assert "deconv_layers.18.weight" not in state  # three stages of six modules


def test_upstream_keys_and_shapes_resdcn101(resdcn101):
    state = resdcn101.state_dict()
    for key, shape in UPSTREAM_KEYS_101.items():
        assert tuple(state[key].shape) == shape, key


def test_parameter_count(resdcn101):
    assert sum(p.numel() for p in get_pose_net(18, HEADS, head_conv=64).parameters()) == UPSTREAM_PARAMS[18]
    assert sum(p.numel() for p in resdcn101.parameters()) == UPSTREAM_PARAMS[101]


def test_three_dcn_layers_where_upstream_has_them():
    model = get_pose_net(18, HEADS)
    found = {name for name, m in model.named_modules() if isinstance(m, DCN)}
    assert found == DCN_LAYERS


def test_transposed_convs_start_bilinear():
    # upstream's fill_up_weights sets kernel [c, 0] of each transposed conv.
    bilinear = torch.tensor([0.25, 0.75, 0.75, 0.25])
    model = get_pose_net(18, HEADS)
    for i in (3, 9, 15):
        w = model.deconv_layers[i].weight
        assert torch.allclose(w[:, 0], torch.outer(bilinear, bilinear).expand_as(w[:, 0])), i


def test_unknown_depth_is_refused():
    with pytest.raises(ValueError, match="18, 34, 50, 101, 152"):
        get_pose_net(20, HEADS)


def test_outputs_raw_logits_at_stride_4():
    model = get_pose_net(18, HEADS, head_conv=64).eval()
    with torch.no_grad():
        hm, wh, reg = model(torch.randn(2, 3, 32, 64))
    assert hm.shape == (2, 80, 8, 16) and wh.shape == (2, 2, 8, 16) and reg.shape == (2, 2, 8, 16)
    # hm's final bias is the -2.19 prior and no sigmoid is applied: logits go negative.
    assert torch.all(model.hm[2].bias == torch.tensor(-2.19))
    assert torch.all(model.wh[0].bias == 0) and torch.all(model.wh[2].bias == 0)
    assert hm.min() < 0


def test_head_ends_with_final_conv():
    model = get_pose_net(18, {"hm": 3, "wh": 2, "reg": 2}, head_conv=64)
    for name, classes in model.heads.items():
        final = model.head(name)[-1]
        assert isinstance(final, nn.Conv2d) and final.out_channels == classes
        assert final is getattr(model, name)[2]


def test_head_conv_0_is_a_bare_conv_as_upstream():
    model = get_pose_net(18, HEADS, head_conv=0)
    state = model.state_dict()
    assert tuple(state["hm.weight"].shape) == (80, 64, 1, 1) and "hm.2.weight" not in state
    assert model.head("hm")[-1] is model.hm


def test_float64_runs():
    model = get_pose_net(18, {"hm": 3, "wh": 2, "reg": 2}).eval().double()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert all(o.dtype == torch.float64 and o.shape[-2:] == (8, 8) for o in outs)
