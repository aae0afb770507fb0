"""CenterNet's DLA-34 + DCNv2 network ("pose_dla_dcn"), without downloads.

Module and parameter names match upstream's checkpoints exactly, e.g.
base.level2.tree1.conv1.weight, dla_up.ida_0.proj_1.conv.weight,
ida_up.node_2.conv.bias, hm.2.bias. The ImageNet classifier `base.fc` is not
built: the detector never uses it. The forward returns the raw head outputs
(no sigmoid), in the order of `heads`. Needs torch and dcn_v2.py (beside it).
"""
import math

import torch
from torch import nn

from dcn_v2 import DCN

BN_MOMENTUM = 0.1
DEFAULT_HEADS = {"hm": 80, "wh": 2, "reg": 2}


def _bn(channels):
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection."""

    def __init__(self, inplanes, planes, stride=1, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = _bn(planes)

    def forward(self, x, residual=None):
        residual = x if residual is None else residual
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Root(nn.Module):
    """Aggregation node of a tree: 1x1 conv over the concatenated children."""

    def __init__(self, in_channels, out_channels, kernel_size, residual):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=1,
                              padding=(kernel_size - 1) // 2, bias=False)
        self.bn = _bn(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual

    def forward(self, *children):
        x = self.bn(self.conv(torch.cat(children, 1)))
        if self.residual:
            x = x + children[0]
        return self.relu(x)


class Tree(nn.Module):
    """Hierarchical deep aggregation tree of `levels` levels."""

    def __init__(self, levels, block, in_channels, out_channels, stride=1, level_root=False,
                 root_dim=0, root_kernel_size=1, dilation=1, root_residual=False):
        super().__init__()
        if root_dim == 0:
            root_dim = 2 * out_channels
        if level_root:
            root_dim += in_channels
        if levels == 1:
            self.tree1 = block(in_channels, out_channels, stride, dilation=dilation)
            self.tree2 = block(out_channels, out_channels, 1, dilation=dilation)
            self.root = Root(root_dim, out_channels, root_kernel_size, root_residual)
        else:
            self.tree1 = Tree(levels - 1, block, in_channels, out_channels, stride, root_dim=0,
                              root_kernel_size=root_kernel_size, dilation=dilation,
                              root_residual=root_residual)
            self.tree2 = Tree(levels - 1, block, out_channels, out_channels,
                              root_dim=root_dim + out_channels, root_kernel_size=root_kernel_size,
                              dilation=dilation, root_residual=root_residual)
        self.level_root = level_root
        self.levels = levels
        self.downsample = nn.MaxPool2d(stride, stride=stride) if stride > 1 else None
        self.project = None
        if in_channels != out_channels:
            self.project = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=1, bias=False), _bn(out_channels))

    def forward(self, x, residual=None, children=None):
        children = [] if children is None else children
        bottom = self.downsample(x) if self.downsample is not None else x
        residual = self.project(bottom) if self.project is not None else bottom
        if self.level_root:
            children.append(bottom)
        x1 = self.tree1(x, residual)
        if self.levels == 1:
            return self.root(self.tree2(x1), x1, *children)
        children.append(x1)
        return self.tree2(x1, children=children)


class DLA(nn.Module):
    """DLA backbone; returns the feature maps of levels 0..5."""

    def __init__(self, levels, channels, block=BasicBlock, residual_root=False):
        super().__init__()
        self.channels = channels
        self.base_layer = nn.Sequential(
            nn.Conv2d(3, channels[0], 7, stride=1, padding=3, bias=False),
            _bn(channels[0]), nn.ReLU(inplace=True))
        self.level0 = self._conv_level(channels[0], channels[0], levels[0])
        self.level1 = self._conv_level(channels[0], channels[1], levels[1], stride=2)
        self.level2 = Tree(levels[2], block, channels[1], channels[2], 2,
                           level_root=False, root_residual=residual_root)
        self.level3 = Tree(levels[3], block, channels[2], channels[3], 2,
                           level_root=True, root_residual=residual_root)
        self.level4 = Tree(levels[4], block, channels[3], channels[4], 2,
                           level_root=True, root_residual=residual_root)
        self.level5 = Tree(levels[5], block, channels[4], channels[5], 2,
                           level_root=True, root_residual=residual_root)

    @staticmethod
    def _conv_level(inplanes, planes, convs, stride=1, dilation=1):
        modules = []
        for i in range(convs):
            modules += [nn.Conv2d(inplanes, planes, 3, stride=stride if i == 0 else 1,
                                  padding=dilation, dilation=dilation, bias=False),
                        _bn(planes), nn.ReLU(inplace=True)]
            inplanes = planes
        return nn.Sequential(*modules)

    def forward(self, x):
        x = self.base_layer(x)
        features = []
        for i in range(6):
            x = getattr(self, f"level{i}")(x)
            features.append(x)
        return features


def dla34():
    return DLA([1, 1, 1, 2, 2, 1], [16, 32, 64, 128, 256, 512], block=BasicBlock)


def fill_up_weights(up):
    """Initialise a transposed conv as bilinear upsampling (upstream's init):
    the [c, 0] kernels, which is all a depthwise one has (for a full one, as
    in resnet_dcn, the other kernels keep their random init)."""
    w = up.weight.data
    f = math.ceil(w.size(2) / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    for i in range(w.size(2)):
        for j in range(w.size(3)):
            w[0, 0, i, j] = (1 - math.fabs(i / f - c)) * (1 - math.fabs(j / f - c))
    w[1:, 0] = w[0, 0]


def fill_fc_weights(layers):
    """Upstream's init of the heads other than hm: small weights, zero biases."""
    for m in layers.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def make_head(name, in_channels, classes, head_conv):
    """One output head as upstream's dlav0 and resnet_dcn build it: 3x3 conv
    (head_conv channels) + ReLU + 1x1 conv, or with head_conv=0 a bare 1x1
    conv; hm's final bias is the focal-loss prior, the other heads get
    fill_fc_weights."""
    if head_conv > 0:
        fc = nn.Sequential(nn.Conv2d(in_channels, head_conv, 3, padding=1, bias=True),
                           nn.ReLU(inplace=True),
                           nn.Conv2d(head_conv, classes, 1, stride=1, padding=0, bias=True))
        final = fc[-1]
    else:
        fc = final = nn.Conv2d(in_channels, classes, 1, stride=1, padding=0, bias=True)
    if "hm" in name:
        final.bias.data.fill_(-2.19)  # focal-loss prior, as upstream
    else:
        fill_fc_weights(fc)
    return fc


def head_layers(fc):
    """A head as a Sequential whose [-1] is its final conv: with head_conv=0
    upstream's head is a bare Conv2d (keys hm.weight, hm.bias), which is
    wrapped here without changing its keys."""
    return fc if isinstance(fc, nn.Sequential) else nn.Sequential(fc)


class DeformConv(nn.Module):
    """DCN 3x3 followed by BN + ReLU (upstream's name; `actf` holds BN + ReLU)."""

    def __init__(self, chi, cho):
        super().__init__()
        self.actf = nn.Sequential(_bn(cho), nn.ReLU(inplace=True))
        self.conv = DCN(chi, cho, kernel_size=(3, 3), stride=1, padding=1, dilation=1,
                        deformable_groups=1)

    def forward(self, x):
        return self.actf(self.conv(x))


class IDAUp(nn.Module):
    """Iterative deep aggregation: project, upsample and merge neighbouring levels."""

    def __init__(self, o, channels, up_f):
        super().__init__()
        for i in range(1, len(channels)):
            f = int(up_f[i])
            up = nn.ConvTranspose2d(o, o, f * 2, stride=f, padding=f // 2, output_padding=0,
                                    groups=o, bias=False)
            fill_up_weights(up)
            setattr(self, f"proj_{i}", DeformConv(channels[i], o))
            setattr(self, f"up_{i}", up)
            setattr(self, f"node_{i}", DeformConv(o, o))

    def forward(self, layers, startp, endp):
        # Updates `layers` in place, as upstream does.
        for i in range(startp + 1, endp):
            up = getattr(self, f"up_{i - startp}")
            proj = getattr(self, f"proj_{i - startp}")
            node = getattr(self, f"node_{i - startp}")
            layers[i] = node(up(proj(layers[i])) + layers[i - 1])


class DLAUp(nn.Module):
    def __init__(self, startp, channels, scales):
        super().__init__()
        self.startp = startp
        in_channels = list(channels)
        channels = list(channels)
        scales = [int(s) for s in scales]
        for i in range(len(channels) - 1):
            j = -i - 2
            setattr(self, f"ida_{i}", IDAUp(channels[j], in_channels[j:], [s // scales[j] for s in scales[j:]]))
            scales[j + 1:] = [scales[j]] * len(scales[j + 1:])
            in_channels[j + 1:] = [channels[j] for _ in channels[j + 1:]]

    def forward(self, layers):
        layers = list(layers)
        out = [layers[-1]]
        for i in range(len(layers) - self.startp - 1):
            getattr(self, f"ida_{i}")(layers, len(layers) - i - 2, len(layers))
            out.insert(0, layers[-1])
        return out


class DLASeg(nn.Module):
    """DLA backbone + DLAUp + IDAUp + one head per output."""

    def __init__(self, heads, down_ratio=4, head_conv=256, last_level=5, final_kernel=1):
        super().__init__()
        assert down_ratio in (2, 4, 8, 16)
        self.first_level = int(math.log2(down_ratio))
        self.last_level = last_level
        self.base = dla34()
        channels = self.base.channels
        scales = [2 ** i for i in range(len(channels[self.first_level:]))]
        self.dla_up = DLAUp(self.first_level, channels[self.first_level:], scales)
        out_channel = channels[self.first_level]
        self.ida_up = IDAUp(out_channel, channels[self.first_level:last_level],
                            [2 ** i for i in range(last_level - self.first_level)])
        self.heads = dict(heads)
        for head, classes in self.heads.items():
            fc = nn.Sequential(
                nn.Conv2d(out_channel, head_conv, 3, padding=1, bias=True),
                nn.ReLU(inplace=True),
                nn.Conv2d(head_conv, classes, final_kernel, stride=1,
                          padding=final_kernel // 2, bias=True))
            if "hm" in head:
                fc[-1].bias.data.fill_(-2.19)  # focal-loss prior, as upstream
            else:
                nn.init.zeros_(fc[0].bias)
                nn.init.zeros_(fc[-1].bias)
            setattr(self, head, fc)

    def head(self, name):
        """The layers of head `name` (its [-1] is the final 1x1 conv)."""
        return getattr(self, name)

    def forward(self, x):
        x = self.dla_up(self.base(x))
        y = [x[i] for i in range(self.last_level - self.first_level)]
        self.ida_up(y, 0, len(y))
        return tuple(getattr(self, head)(y[-1]) for head in self.heads)


def get_pose_net(num_layers=34, heads=None, head_conv=256, down_ratio=4):
    """Upstream's factory: ctdet DLA-34 (`heads` defaults to hm 80, wh 2, reg 2).

    Randomly initialised; load weights with `centernet.model.checkpoint.load_model`.
    """
    if num_layers != 34:
        raise ValueError("only DLA-34 (num_layers=34) is implemented")
    return DLASeg(heads or DEFAULT_HEADS, down_ratio=down_ratio, head_conv=head_conv)
