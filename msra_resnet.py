"""CenterNet's ResNet + deconvolution network ("res_18", "res_101", ...), without downloads.

Upstream's PoseResNet (Xiao et al., "Simple Baselines"): a torchvision-style
ResNet (conv1, bn1, layer1..layer4), three 4x4 stride-2 transposed convs of
256 channels (`deconv_layers`) back up to output stride 4, then one head per
output. Module and parameter names match upstream's checkpoints exactly, e.g.
layer1.0.conv1.weight, layer3.0.downsample.1.running_var,
deconv_layers.3.weight, hm.2.bias. The forward returns the raw head outputs
(no sigmoid), in the order of `heads`. Needs torch and pose_dla_dcn.py
(beside it: the heads' form).
"""
from torch import nn

from pose_dla_dcn import head_layers

BN_MOMENTUM = 0.1
DEFAULT_HEADS = {"hm": 80, "wh": 2, "reg": 2}


def _bn(channels):
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _downsample(inplanes, planes, stride):
    """1x1 conv + BN on the shortcut where a block changes size or width."""
    return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), _bn(planes))


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = _bn(planes)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = _bn(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


# Depth -> (block, blocks per stage), as upstream's resnet_spec.
RESNET_SPEC = {18: (BasicBlock, [2, 2, 2, 2]),
               34: (BasicBlock, [3, 4, 6, 3]),
               50: (Bottleneck, [3, 4, 6, 3]),
               101: (Bottleneck, [3, 4, 23, 3]),
               152: (Bottleneck, [3, 8, 36, 3])}


class PoseResNet(nn.Module):
    """ResNet backbone, 3 transposed convs to stride 4 (256 channels), one head per output.
    resnet_dcn.PoseResNet changes the upsampling and the heads (_make_deconv_layers,
    _make_head, sorted_heads)."""

    sorted_heads = True

    def __init__(self, block, layers, heads, head_conv):
        super().__init__()
        self.heads = dict(heads)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.deconv_layers = self._make_deconv_layers()
        # Upstream registers the heads in sorted order (its state_dict lists
        # them so) but runs them in the order of `heads`; we do the same.
        for name in (sorted(self.heads) if self.sorted_heads else self.heads):
            setattr(self, name, self._make_head(name, self.heads[name], head_conv))

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = _downsample(self.inplanes, planes * block.expansion, stride)
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _make_deconv_layers(self, num_layers=3, planes=256):
        # Each 4x4, stride 2, padding 1 transposed conv doubles the size exactly.
        layers = []
        for _ in range(num_layers):
            up = nn.ConvTranspose2d(self.inplanes, planes, 4, stride=2, padding=1,
                                    output_padding=0, bias=False)
            nn.init.normal_(up.weight, std=0.001)  # upstream's init_weights
            layers += [up, _bn(planes), nn.ReLU(inplace=True)]
            self.inplanes = planes
        return nn.Sequential(*layers)

    @staticmethod
    def _make_head(name, classes, head_conv):
        if head_conv > 0:
            fc = nn.Sequential(nn.Conv2d(256, head_conv, 3, padding=1, bias=True),
                               nn.ReLU(inplace=True),
                               nn.Conv2d(head_conv, classes, 1, stride=1, padding=0))
            final = fc[-1]
        else:
            fc = final = nn.Conv2d(256, classes, 1, stride=1, padding=0)
        # Upstream's init_weights touches only the final conv: hm gets the
        # focal-loss prior bias, the others small weights and a zero bias.
        if "hm" in name:
            nn.init.constant_(final.bias, -2.19)
        else:
            nn.init.normal_(final.weight, std=0.001)
            nn.init.zeros_(final.bias)
        return fc

    def head(self, name):
        """The layers run for head `name`; `[-1]` is its final Conv2d."""
        return head_layers(getattr(self, name))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.deconv_layers(x)
        return tuple(getattr(self, name)(x) for name in self.heads)


def get_pose_net(num_layers=18, heads=None, head_conv=64):
    """Upstream's factory: ResNet-`num_layers` + deconvs (`heads` defaults to hm 80, wh 2, reg 2).

    Randomly initialised (upstream's ImageNet download is not done); load
    weights with `centernet.model.checkpoint.load_model`.
    """
    if num_layers not in RESNET_SPEC:
        raise ValueError(f"no ResNet-{num_layers}; supported depths: {sorted(RESNET_SPEC)}")
    block, layers = RESNET_SPEC[num_layers]
    return PoseResNet(block, layers, heads or DEFAULT_HEADS, head_conv)
