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
it: the same ResNet, and upstream's inits and heads).
"""
from torch import nn

import msra_resnet  # the same ResNet
from dcn_v2 import DCN
from msra_resnet import RESNET_SPEC, _bn
from pose_dla_dcn import fill_up_weights, make_head  # upstream's inits and heads

DEFAULT_HEADS = {"hm": 80, "wh": 2, "reg": 2}


class PoseResNet(msra_resnet.PoseResNet):
    """msra_resnet's ResNet backbone, then 3 x (DCN, transposed conv) to stride 4
    (64 channels), one head per output (registered in the order of `heads`, as
    upstream's resnet_dcn does)."""

    sorted_heads = False

    def _make_deconv_layers(self, planes_per_stage=(256, 128, 64)):
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
        return make_head(name, 64, classes, head_conv)


def get_pose_net(num_layers=18, heads=None, head_conv=64):
    """Upstream's factory: ResNet-`num_layers` + DCN upsampling (`heads` defaults to hm 80, wh 2, reg 2).

    head_conv defaults to 64, the value upstream's options give every resdcn
    model (its function's own default, 256, is never used by its recipes).
    Randomly initialised (upstream's ImageNet download is not done); load
    weights with `centernet.model.checkpoint.load_model`.
    """
    if num_layers not in RESNET_SPEC:
        raise ValueError(f"no ResNet-{num_layers}; supported depths: {sorted(RESNET_SPEC)}")
    block, layers = RESNET_SPEC[num_layers]
    return PoseResNet(block, layers, heads or DEFAULT_HEADS, head_conv)
