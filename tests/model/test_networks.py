"""Which upstream network a checkpoint holds, from its keys and shapes alone."""
import pytest
import torch

from centernet.errors import UserError
from centernet.model.checkpoint import load_model, save_upstream_checkpoint
from centernet.model.networks import LayoutError, build_network, detect_network

COCO = {"hm": 80, "wh": 2, "reg": 2}
THREE = {"hm": 3, "wh": 2, "reg": 2}
POSE = {"hm": 1, "wh": 2, "hps": 34, "reg": 2, "hm_hp": 17, "hp_offset": 2}  # upstream's multi_pose heads


def _state(network, heads=COCO, head_conv=None):
    return build_network(network, heads, head_conv).state_dict()


@pytest.mark.parametrize("network,heads,head_conv,description", [
    ("dla_34", COCO, 256, "DLA-34 with DCN, 80 classes, head width 256"),
    ("dlav0_34", THREE, 256, "DLA-34 without DCN, 3 classes, head width 256"),
    ("res_18", COCO, 64, "ResNet-18, 80 classes, head width 64"),
    ("res_101", THREE, 64, "ResNet-101, 3 classes, head width 64"),
    ("resdcn_18", {"hm": 20, "wh": 2, "reg": 2}, 64, "ResNet-18 with DCN, 20 classes, head width 64"),
    ("resdcn_101", COCO, 64, "ResNet-101 with DCN, 80 classes, head width 64"),
    ("res_50", THREE, 128, "ResNet-50, 3 classes, head width 128"),
    ("hourglass", {"hm": 1, "wh": 2, "reg": 2}, 256, "Hourglass-104, 1 class, head width 256"),
])
def test_every_network_is_found_from_its_keys(network, heads, head_conv, description):
    spec = detect_network(_state(network, heads, head_conv))
    assert (spec.network, spec.heads, spec.head_conv) == (network, heads, head_conv)
    assert list(spec.heads) == ["hm", "wh", "reg"]  # ctdet's output order, whatever the keys' order
    assert spec.describe() == description


def test_a_checkpoint_of_another_network_loads_with_no_flag(tmp_path, caplog):
    model = build_network("resdcn_18", THREE)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    path = tmp_path / "model_last.pth"
    save_upstream_checkpoint(model, path)  # module. prefix, no num_batches_tracked
    with caplog.at_level("INFO", logger="centernet"):
        loaded = load_model(path)
    assert f"{path}: ResNet-18 with DCN, 3 classes, head width 64" in caplog.messages
    assert loaded.facts.network == "resdcn_18" and loaded.facts.num_classes == 3 and loaded.facts.pad == 31
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), loaded(x)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("network", ["dla_34", "res_18", "hourglass"])
def test_a_multi_pose_checkpoint_is_found_from_its_heads_in_upstreams_order(network):
    # the keys' order (sorted, as a state_dict may come) is not the output order
    state = dict(sorted(_state(network, POSE).items()))
    spec = detect_network(state)
    assert spec.network == network and list(spec.heads.items()) == list(POSE.items())
    facts = spec.facts()
    assert facts.task == "multi_pose" and facts.num_joints == 17 and facts.num_classes == 1
    assert "human pose (17 keypoints)" in facts.describe()
    assert facts.to_metadata()["centernet.task"] == "multi_pose"


def test_a_pose_model_with_other_keypoints_is_named():
    state = _state("res_18", POSE)
    for head, channels in (("hps", 28), ("hm_hp", 14)):  # 14 keypoints, as another dataset might have
        state[f"{head}.2.weight"] = state[f"{head}.2.weight"][:channels]
        state[f"{head}.2.bias"] = state[f"{head}.2.bias"][:channels]
    with pytest.raises(LayoutError, match="hps of 28 and hm_hp of 14 channels; upstream's multi_pose has COCO's 17"):
        detect_network(state)


def test_layouts_that_fit_no_network_name_their_keys():
    with pytest.raises(LayoutError, match=r"fit no upstream ctdet network .*top-level names conv, fc"):
        detect_network({"conv.weight": torch.zeros(1), "fc.weight": torch.zeros(1)})
    pose = _state("res_18", POSE)
    pose = {k: v for k, v in pose.items() if not k.startswith(("wh.", "hm_hp."))}
    with pytest.raises(LayoutError, match="no wh, hm_hp head .*a multi_pose model has hm, wh, hps, reg, hm_hp, "
                                          "hp_offset"):
        detect_network(pose)
    odd_depth = {k: v for k, v in _state("res_18").items() if not k.startswith("layer3.1.")}
    with pytest.raises(LayoutError, match=r"BasicBlock blocks \(2, 2, 1, 2\) per stage, which is none of upstream"):
        detect_network(odd_depth)


def test_a_misfit_of_the_found_network_is_one_line_naming_the_keys(tmp_path):
    state = _state("res_18", THREE)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(UserError) as e:
        load_model(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: not a CenterNet checkpoint of any upstream network; as res_18:")
    assert "layer1.0.conv1.weight (64, 64, 1, 1) != (64, 64, 3, 3)" in msg
