"""Upstream's networks (ctdet and multi_pose), and which one a checkpoint holds.

Upstream names a network `arch_layers` (opts.py --arch): dla_34 (DLA-34 with
DCN, pose_dla_dcn.py), dlav0_34 (DLA-34 without DCN, dlav0.py), res_N (ResNet
with transposed-conv upsampling, msra_resnet.py), resdcn_N (the same with a
DCN before each upsampling, resnet_dcn.py) and hourglass (Hourglass-104,
large_hourglass.py). A checkpoint records no architecture, but its keys and
shapes tell them apart, so no --arch flag is needed:
- dla / dlav0: `base.*` and `dla_up.*`; DCN (`conv_offset_mask`) or not;
- res / resdcn: `conv1.weight`, `layer1..4.*`, `deconv_layers.*`; the depth
  from the block type (`layer1.0.conv3`: Bottleneck) and blocks per stage;
- hourglass: `pre.*`, `kps.*`, `cnvs.*`;
- every other top-level name is a head: `NAME.0.weight` (3x3 conv, its
  output channels the head width) ... `NAME.2.weight` (1x1 conv, its output
  channels the head's), or for hourglass the same per stack
  (`NAME.S.0.conv.weight`, `NAME.S.1.weight`). The heads say the task:
  hm, wh, reg for ctdet; hm, wh, hps, reg, hm_hp, hp_offset for multi_pose.
"""
import re
from dataclasses import dataclass

from centernet.constants import HEADS, NUM_JOINTS, POSE_HEADS
from centernet.core.model_facts import ModelFacts, describe_network

# Upstream's ResNet depths (msra_resnet.resnet_spec): (Bottleneck?, blocks per stage).
RESNET_DEPTHS = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)), 50: (True, (3, 4, 6, 3)),
                 101: (True, (3, 4, 23, 3)), 152: (True, (3, 8, 36, 3))}
BACKBONE_NAMES = {
    "dla": ("base", "dla_up", "ida_up"),
    "res": ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "deconv_layers"),
    "hourglass": ("pre", "kps", "cnvs", "inters", "inters_", "cnvs_"),
}
NETWORKS = ("dla_34", "dlav0_34", "res_18", "res_34", "res_50", "res_101", "res_152", "resdcn_18", "resdcn_34",
            "resdcn_50", "resdcn_101", "resdcn_152", "hourglass")
# Upstream's default head width per family (opts.py: 256 for DLA, 64 for ResNets; Hourglass's is its 256 channels).
DEFAULT_HEAD_CONV = {"dla": 256, "dlav0": 256, "res": 64, "resdcn": 64, "hourglass": 256}


class LayoutError(ValueError):
    """A state_dict that fits no upstream ctdet network; the message names the keys."""


@dataclass(frozen=True)
class NetworkSpec:
    """Which network a checkpoint holds: upstream's arch name (e.g. resdcn_18),
    its heads {name: channels} in upstream's output order, and the head width."""
    network: str
    heads: dict
    head_conv: int

    def facts(self, **settings):
        return ModelFacts.for_network(self.network, self.heads, self.head_conv, **settings)

    def describe(self):
        return self.facts().describe()


def _clip(keys, n=4):
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _family(top):
    if {"base", "dla_up"} <= top:
        return "dla"
    if {"conv1", "layer1", "deconv_layers"} <= top:
        return "res"
    if {"pre", "kps", "cnvs"} <= top:
        return "hourglass"
    return None


def _resnet_depth(state):
    bottleneck = "layer1.0.conv3.weight" in state
    blocks = tuple(len({m.group(1) for k in state for m in [re.match(rf"layer{i}\.(\d+)\.", k)] if m})
                   for i in range(1, 5))
    for depth, spec in RESNET_DEPTHS.items():
        if spec == (bottleneck, blocks):
            return depth
    raise LayoutError(f"a ResNet with {'Bottleneck' if bottleneck else 'BasicBlock'} blocks {blocks} per stage, "
                      f"which is none of upstream's depths ({', '.join(map(str, RESNET_DEPTHS))})")


def _heads(state, names, hourglass):
    """{name: channels} of each head in ctdet's output order, and the head
    width, from each head's convs (channels from the last conv's bias, which
    a wrong weight shape leaves for the key check to name); names that are
    not head layers are left for the key check to call unexpected."""
    def first(name):
        return f"{name}.0.0.conv.weight" if hourglass else f"{name}.0.weight"

    def last(name):
        stem = f"{name}.0.1" if hourglass else f"{name}.2"
        return state.get(f"{stem}.bias", state.get(f"{stem}.weight"))

    heads = {name: int(last(name).shape[0]) for name in names
             if state.get(first(name)) is not None and state[first(name)].dim() == 4
             and last(name) is not None and last(name).dim() >= 1}
    pose = "hps" in heads
    expected, task = (POSE_HEADS, "multi_pose model") if pose else (HEADS, "ctdet detector")
    if not set(expected) <= set(heads):
        absent = [h for h in expected if h not in heads]
        raise LayoutError(f"no {', '.join(absent)} head (heads found: {', '.join(heads) or 'none'}; a {task} "
                          f"has {', '.join(expected)}, each a 3x3 conv, ReLU and 1x1 conv)")
    if pose and (heads["hps"] != 2 * NUM_JOINTS or heads["hm_hp"] != NUM_JOINTS):
        raise LayoutError(f"hps of {heads['hps']} and hm_hp of {heads['hm_hp']} channels; upstream's multi_pose "
                          f"has COCO's {NUM_JOINTS} keypoints (hps {2 * NUM_JOINTS}, hm_hp {NUM_JOINTS})")
    widths = {int(state[first(name)].shape[0]) for name in expected}
    if len(widths) != 1:
        raise LayoutError(f"heads of different widths ({', '.join(map(str, sorted(widths)))})")
    return {name: heads[name] for name in expected}, widths.pop()


def detect_network(state):
    """The NetworkSpec of an upstream ctdet or multi_pose state_dict (keys without the
    `module.` prefix); a LayoutError naming the keys that fit no network."""
    top = {k.split(".", 1)[0] for k in state}
    family = _family(top)
    if family is None:
        raise LayoutError(f"its keys fit no upstream ctdet network ({', '.join(NETWORKS)}): top-level names "
                          f"{_clip(top, 8)}")
    dcn = any("conv_offset_mask" in k for k in state)
    if family == "dla":
        network = "dla_34" if dcn else "dlav0_34"
    elif family == "res":
        network = f"{'resdcn' if dcn else 'res'}_{_resnet_depth(state)}"
    else:
        network = "hourglass"
    head_names = sorted(top - set(BACKBONE_NAMES[family]))
    heads, head_conv = _heads(state, head_names, family == "hourglass")
    return NetworkSpec(network, heads, head_conv)


def build_network(network="dla_34", heads=None, head_conv=None):
    """Upstream's network `network` (randomly initialised as upstream does),
    with `heads` (default: COCO's hm 80, wh 2, reg 2) and upstream's default
    head width for it unless given."""
    arch, _, layers = network.partition("_")
    heads = dict(heads or {"hm": 80, "wh": 2, "reg": 2})
    head_conv = DEFAULT_HEAD_CONV.get(arch, 256) if head_conv is None else int(head_conv)
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; choose from {', '.join(NETWORKS)}")
    if arch == "dla":
        from pose_dla_dcn import get_pose_net
    elif arch == "dlav0":
        from dlav0 import get_pose_net
    elif arch == "res":
        from msra_resnet import get_pose_net
    elif arch == "resdcn":
        from resnet_dcn import get_pose_net
    else:
        from large_hourglass import get_large_hourglass_net as get_pose_net
    model = get_pose_net(int(layers or 104), heads, head_conv=head_conv)
    model.facts = ModelFacts.for_network(network, heads, head_conv)
    return model


def model_facts(model):
    """The ModelFacts a network carries (build_network, checkpoint.load_model),
    or for a bare pose_dla_dcn network, ctdet DLA-34's with its heads."""
    facts = getattr(model, "facts", None)
    if facts is not None:
        return facts
    heads = dict(getattr(model, "heads", {"hm": 80, "wh": 2, "reg": 2}))
    return ModelFacts.for_network("dla_34", heads, 256)


__all__ = ["NETWORKS", "NetworkSpec", "LayoutError", "detect_network", "build_network", "model_facts",
           "describe_network"]
