"""CenterNet's DLA-34 without deformable convs ("dlav0_34"), without downloads.

Upstream's dlav0 DLASeg: the DLA-34 backbone, then a DLAUp whose IDAUp
stages merge levels with plain 3x3 conv + BN + ReLU nodes over the
concatenation of two maps, 1x1 conv + BN + ReLU projections and bilinear
depthwise transposed convs; one head per output on the stride-4, 64-channel
map. Unlike pose_dla_dcn there is no final ida_up: dla_up's last stage
already ends at stride 4.

Module and parameter names match upstream's checkpoints exactly, e.g.
base.level2.tree1.conv1.weight, dla_up.ida_0.proj_1.0.weight,
dla_up.ida_2.up_3.weight, dla_up.ida_2.node_3.1.running_mean, hm.2.bias.
The ImageNet classifier `base.fc` is not built: the detector never uses it.
The forward returns the raw head outputs (no sigmoid), in the order of
`heads`. Needs torch and pose_dla_dcn.py (beside it: the DLA-34 backbone is
the same).
"""
import math

import torch
from torch import nn

from pose_dla_dcn import DLA, BasicBlock, fill_up_weights, head_layers, make_head  # the same backbone, inits, heads

DEFAULT_HEADS = {"hm": 80, "wh": 2, "reg": 2}


def _bn(channels):
    return nn.BatchNorm2d(channels)  # upstream's dlav0 keeps PyTorch's defaults


def _init_convs_and_bns(module):
    """Upstream's DLA init: He-normal Conv2d weights (fan-out), BN weight 1 and bias 0.
    Transposed convs are not Conv2d, so their bilinear init survives."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()


def dla34():
    """pose_dla_dcn's DLA-34 backbone (the same modules and keys), with dlav0's init."""
    backbone = DLA([1, 1, 1, 2, 2, 1], [16, 32, 64, 128, 256, 512], block=BasicBlock)
    _init_convs_and_bns(backbone)
    return backbone


class IDAUp(nn.Module):
    """Iterative deep aggregation of `channels` maps into `out_dim` channels.

    Map i is projected (proj_i: 1x1 conv + BN + ReLU, or nothing where it
    already has out_dim channels) and upsampled by up_factors[i] (up_i, or
    nothing at factor 1); then node_i (3x3 conv + BN + ReLU) merges the
    running result with map i by concatenation. Modules without parameters
    are nn.Identity: they add no state_dict keys, as upstream's Identity."""

    def __init__(self, node_kernel, out_dim, channels, up_factors):
        super().__init__()
        self.channels = list(channels)
        for i, c in enumerate(channels):
            proj = nn.Identity()
            if c != out_dim:
                proj = nn.Sequential(nn.Conv2d(c, out_dim, 1, stride=1, bias=False),
                                     _bn(out_dim), nn.ReLU(inplace=True))
            f = int(up_factors[i])
            up = nn.Identity()
            if f != 1:
                up = nn.ConvTranspose2d(out_dim, out_dim, f * 2, stride=f, padding=f // 2,
                                        output_padding=0, groups=out_dim, bias=False)
                fill_up_weights(up)
            setattr(self, f"proj_{i}", proj)
            setattr(self, f"up_{i}", up)
        for i in range(1, len(channels)):
            setattr(self, f"node_{i}", nn.Sequential(
                nn.Conv2d(out_dim * 2, out_dim, node_kernel, stride=1,
                          padding=node_kernel // 2, bias=False),
                _bn(out_dim), nn.ReLU(inplace=True)))
        _init_convs_and_bns(self)

    def forward(self, layers):
        """Returns the final merged map and the list of every node's output."""
        layers = [getattr(self, f"up_{i}")(getattr(self, f"proj_{i}")(x))
                  for i, x in enumerate(layers)]
        x = layers[0]
        merged = []
        for i in range(1, len(layers)):
            x = getattr(self, f"node_{i}")(torch.cat([x, layers[i]], 1))
            merged.append(x)
        return x, merged


class DLAUp(nn.Module):
    """Merges levels from the deepest up: stage i aggregates the last i + 2 maps
    into the channels of the shallowest of them, replacing the deeper ones."""

    def __init__(self, channels, scales):
        super().__init__()
        in_channels = list(channels)
        scales = [int(s) for s in scales]
        for i in range(len(channels) - 1):
            j = -i - 2
            setattr(self, f"ida_{i}", IDAUp(3, channels[j], in_channels[j:],
                                            [s // scales[j] for s in scales[j:]]))
            # The merged maps are now at level j's scale and width.
            scales[j + 1:] = [scales[j]] * len(scales[j + 1:])
            in_channels[j + 1:] = [channels[j]] * len(in_channels[j + 1:])

    def forward(self, layers):
        layers = list(layers)
        for i in range(len(layers) - 1):
            x, merged = getattr(self, f"ida_{i}")(layers[-i - 2:])
            layers[-i - 1:] = merged
        return x


class DLASeg(nn.Module):
    """DLA-34 backbone + DLAUp (plain convs) + one head per output."""

    def __init__(self, heads, down_ratio=4, head_conv=256):
        super().__init__()
        assert down_ratio in (2, 4, 8, 16)
        self.first_level = int(math.log2(down_ratio))
        self.base = dla34()
        channels = self.base.channels
        scales = [2 ** i for i in range(len(channels[self.first_level:]))]
        self.dla_up = DLAUp(channels[self.first_level:], scales)
        out_channel = channels[self.first_level]
        self.heads = dict(heads)
        for name, classes in self.heads.items():
            setattr(self, name, make_head(name, out_channel, classes, head_conv))

    def head(self, name):
        """The layers run for head `name`; `[-1]` is its final Conv2d."""
        return head_layers(getattr(self, name))

    def forward(self, x):
        x = self.dla_up(self.base(x)[self.first_level:])
        return tuple(getattr(self, name)(x) for name in self.heads)


def get_pose_net(num_layers=34, heads=None, head_conv=256, down_ratio=4):
    """Upstream's factory: ctdet DLA-34 without DCN (`heads` defaults to hm 80, wh 2, reg 2).

    Randomly initialised (upstream's ImageNet download is not done); load
    weights with `centernet.model.checkpoint.load_model`.
    """
    if num_layers != 34:
        raise ValueError(f"no dlav0_{num_layers}: only DLA-34 (num_layers=34) is implemented")
    return DLASeg(heads or DEFAULT_HEADS, down_ratio=down_ratio, head_conv=head_conv)
