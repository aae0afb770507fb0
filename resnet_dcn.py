"""CenterNet's ResNet + DCNv2 upsampling network ("resdcn_18", "resdcn_101", ...), without downloads.

Upstream's resnet_dcn PoseResNet: a torchvision-style ResNet (conv1, bn1,
layer1..layer4), then three upsampling stages of
DCN 3x3 -> BN -> ReLU -> 4x4 stride-2 transposed conv -> BN -> ReLU with 256,
128 and 64 channels (`deconv_layers`, output stride 4), then one head per
output on 64 channels. Module and parameter names match upstream's
checkpoints exactly, e.g. layer1.0.conv3.weight,
deconv_layers.0.conv_offset_mask.weight, deconv_layers.3.weight, hm.2.bias.
The forward returns the raw head outputs (no sigmoid), in the order of
`heads`. Needs torch, dcn_v2.py, msra_resnet.py and pose_dla_dcn.py (beside
it: the ResNet blocks and the weight inits are the same).
"""

from torch import nn

from dcn_v2 import DCN
from msra_resnet import RESNET_SPEC, _bn, _downsample  # the same ResNet
from pose_dla_dcn import fill_fc_weights, fill_up_weights  # upstream's inits

DEFAULT_HEADS = {"hm": 80, "wh": 2, "reg": 2}


class PoseResNet(nn.Module):
    """ResNet backbone, 3 x (DCN, transposed conv) to stride 4 (64 channels), one head per output."""

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
        self.deconv_layers = self._make_deconv_layers([256, 128, 64])
        for name, classes in self.heads.items():
            setattr(self, name, self._make_head(name, classes, head_conv))

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = _downsample(self.inplanes, planes * block.expansion, stride)
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _make_deconv_layers(self, planes_per_stage):
        # Six modules a stage, so the keys are deconv_layers.{0,6,12} (DCN),
        # .{1,4,7,...} (BN) and .{3,9,15} (transposed conv), as upstream's.
        layers = []
        for planes in planes_per_stage:
            dcn = DCN(self.inplanes, planes, kernel_size=(3, 3), stride=1, padding=1,
                      dilation=1, deformable_groups=1)
            # 4x4, stride 2, padding 1 doubles the size exactly.
            up = nn.ConvTranspose2d(planes, planes, 4, stride=2, padding=1, output_padding=0,
                                    bias=False)
            fill_up_weights(up)
            layers += [dcn, _bn(planes), nn.ReLU(inplace=True),
                       up, _bn(planes), nn.ReLU(inplace=True)]
            self.inplanes = planes
        return nn.Sequential(*layers)

    @staticmethod
    def _make_head(name, classes, head_conv):
        if head_conv > 0:
            fc = nn.Sequential(nn.Conv2d(64, head_conv, 3, padding=1, bias=True),
                               nn.ReLU(inplace=True),
                               nn.Conv2d(head_conv, classes, 1, stride=1, padding=0, bias=True))
            final = fc[-1]
        else:
            fc = final = nn.Conv2d(64, classes, 1, stride=1, padding=0, bias=True)
        if "hm" in name:
            final.bias.data.fill_(-2.19)  # focal-loss prior, as upstream
        else:
            fill_fc_weights(fc)
        return fc

    def head(self, name):
        """The layers run for head `name`; `[-1]` is its final Conv2d.
        With head_conv=0 upstream's head is a bare Conv2d (keys hm.weight,
        hm.bias), which is returned wrapped in a Sequential."""
        fc = getattr(self, name)
        return fc if isinstance(fc, nn.Sequential) else nn.Sequential(fc)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.deconv_layers(x)
        return tuple(getattr(self, name)(x) for name in self.heads)


def get_pose_net(num_layers=18, heads=None, head_conv=64):
    """Upstream's factory: ResNet-`num_layers` + DCN upsampling (`heads` defaults to hm 80, wh 2, reg 2).

    head_conv defaults to 64, the value upstream's options give every resdcn
    model (its function's own default, 256, is never used by its recipes).
    Randomly initialised (upstream's ImageNet download is not done); load
    weights with `centernet.model.checkpoint.load_checkpoint`.
    """
    if num_layers not in RESNET_SPEC:
        raise ValueError(f"no ResNet-{num_layers}; supported depths: {sorted(RESNET_SPEC)}")
    block, layers = RESNET_SPEC[num_layers]
    return PoseResNet(block, layers, heads or DEFAULT_HEADS, head_conv)
