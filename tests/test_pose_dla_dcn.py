"""The network's layout is upstream's: key names, shapes, outputs."""
import torch

from dcn_v2 import DCN
from pose_dla_dcn import get_pose_net

# Keys named in REFERENCE section 2, with the shapes upstream's modules give them.
UPSTREAM_KEYS = {
    "base.base_layer.0.weight": (16, 3, 7, 7),
    "base.level2.tree1.conv1.weight": (64, 32, 3, 3),
    "base.level5.root.conv.weight": (512, 1280, 1, 1),  # 2*512 + 256 (level_root)
    "base.level3.tree2.root.conv.weight": (128, 448, 1, 1),  # 2*128 + 128 + 64
    "dla_up.ida_0.proj_1.conv.weight": (256, 512, 3, 3),
    "dla_up.ida_0.proj_1.conv.conv_offset_mask.weight": (27, 512, 3, 3),
    "dla_up.ida_0.proj_1.actf.0.running_mean": (256,),
    "dla_up.ida_0.up_1.weight": (256, 1, 4, 4),
    "dla_up.ida_2.up_3.weight": (64, 1, 4, 4),
    "ida_up.up_2.weight": (64, 1, 8, 8),
    "ida_up.node_2.conv.bias": (64,),
    "hm.0.weight": (256, 64, 3, 3),
    "hm.2.bias": (80,),
    "wh.2.weight": (2, 256, 1, 1),
    "reg.2.bias": (2,),
}
DCN_LAYERS = {f"dla_up.ida_{i}.{kind}_{j}.conv" for i, n in enumerate((1, 2, 3))
              for j in range(1, n + 1) for kind in ("proj", "node")}
DCN_LAYERS |= {f"ida_up.{kind}_{j}.conv" for j in (1, 2) for kind in ("proj", "node")}


def test_upstream_keys_and_shapes():
    state = get_pose_net(34, {"hm": 80, "wh": 2, "reg": 2}, head_conv=256).state_dict()
    for key, shape in UPSTREAM_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("base.fc") for k in state)


def test_sixteen_dcn_layers_where_upstream_has_them():
    model = get_pose_net()
    found = {name for name, m in model.named_modules() if isinstance(m, DCN)}
    assert found == DCN_LAYERS and len(found) == 16


def test_parameter_count():
    n = sum(p.numel() for p in get_pose_net().parameters())
    assert 19.6e6 < n < 19.8e6  # REFERENCE: about 19.7 M


def test_outputs_raw_logits_at_stride_4():
    model = get_pose_net().eval()
    with torch.no_grad():
        hm, wh, reg = model(torch.randn(2, 3, 96, 160))
    assert hm.shape == (2, 80, 24, 40) and wh.shape == (2, 2, 24, 40) and reg.shape == (2, 2, 24, 40)
    # hm's final bias is the -2.19 prior and no sigmoid is applied: logits go negative.
    assert torch.all(model.hm[2].bias == torch.tensor(-2.19))
    assert hm.min() < 0
