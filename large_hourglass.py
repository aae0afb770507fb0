"""CenterNet's Hourglass-104 network ("hourglass" arch), without downloads.

Two stacked hourglasses (CornerNet's design) behind a stride-4 stem. Module and
parameter names match upstream's checkpoints exactly, e.g. pre.0.conv.weight,
kps.0.low2.low1.0.skip.0.weight, cnvs.1.bn.running_var, inters_.0.1.weight,
hm.1.0.conv.bias, wh.1.1.weight: every head is a ModuleList holding one head per
stack. The forward returns the LAST stack's raw head outputs (no sigmoid), in the
order of `heads`, at output stride 4; the first stack's heads exist so that
checkpoints load, but nothing reads them at test time, so they are not run.

Input sides must be multiples of 128 (stem /4, then five /2 levels); upstream
pads keep-resolution inputs with pad 127 for that reason. Needs only torch.
"""
from torch import nn

DEFAULT_HEADS = {"hm": 80, "wh": 2, "reg": 2}
NUM_STACKS = 2
# Hourglass-104: channels and residual blocks per level, outermost first.
LEVEL_DIMS = (256, 256, 384, 384, 384, 512)
LEVEL_BLOCKS = (2, 2, 2, 2, 2, 4)
CNV_DIM = 256


class Convolution(nn.Module):
    """k x k conv (+ BN) + ReLU; upstream's `convolution`.

    Without BN the conv carries the bias instead (the heads' first layer).
    """

    def __init__(self, k, inp_dim, out_dim, stride=1, with_bn=True):
        super().__init__()
        self.conv = nn.Conv2d(inp_dim, out_dim, k, padding=(k - 1) // 2, stride=stride,
                              bias=not with_bn)
        # nn.Identity holds no state, so the keys stay upstream's (no `bn.*` without BN).
        self.bn = nn.BatchNorm2d(out_dim) if with_bn else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Residual(nn.Module):
    """Two 3x3 conv + BN layers plus a skip; upstream's `residual`.

    The skip is a 1x1 conv + BN (keys skip.0.*, skip.1.*) only where the shape
    changes (stride or channels), else the identity.
    """

    def __init__(self, inp_dim, out_dim, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inp_dim, out_dim, 3, padding=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(out_dim)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_dim)
        if stride != 1 or inp_dim != out_dim:
            self.skip = nn.Sequential(
                nn.Conv2d(inp_dim, out_dim, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_dim))
        else:
            self.skip = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.skip(x))


def _residuals(inp_dim, out_dim, count, stride=1):
    """`count` residual blocks; the first changes inp_dim -> out_dim (and strides)."""
    blocks = [Residual(inp_dim, out_dim, stride=stride)]
    blocks += [Residual(out_dim, out_dim) for _ in range(count - 1)]
    return nn.Sequential(*blocks)


def _residuals_to(inp_dim, out_dim, count):
    """`count` residual blocks; the LAST changes inp_dim -> out_dim (upstream's make_layer_revr)."""
    blocks = [Residual(inp_dim, inp_dim) for _ in range(count - 1)]
    blocks.append(Residual(inp_dim, out_dim))
    return nn.Sequential(*blocks)


class HourglassLevel(nn.Module):
    """One level of an hourglass, recursing inwards; upstream's `kp_module`.

    up1 keeps the resolution; low1 halves it (a stride-2 residual, upstream
    has no max pooling here), low2 is the next level in (or, innermost, plain
    residuals), low3 returns to this level's channels, up2 doubles the
    resolution back (nearest) and the two branches are summed. Upstream's
    parameterless max1 (identity) and merge (sum) modules are not built.
    """

    def __init__(self, depth, dims, blocks):
        super().__init__()
        curr_dim, next_dim = dims[0], dims[1]
        self.up1 = _residuals(curr_dim, curr_dim, blocks[0])
        self.low1 = _residuals(curr_dim, next_dim, blocks[0], stride=2)
        if depth > 1:
            self.low2 = HourglassLevel(depth - 1, dims[1:], blocks[1:])
        else:
            self.low2 = _residuals(next_dim, next_dim, blocks[1])
        self.low3 = _residuals_to(next_dim, curr_dim, blocks[0])
        self.up2 = nn.Upsample(scale_factor=2)

    def forward(self, x):
        return self.up1(x) + self.up2(self.low3(self.low2(self.low1(x))))


def _head(out_dim):
    """3x3 conv (with bias) + ReLU, then a 1x1 conv to the head's channels."""
    return nn.Sequential(Convolution(3, CNV_DIM, LEVEL_DIMS[0], with_bn=False),
                         nn.Conv2d(LEVEL_DIMS[0], out_dim, 1))


class HourglassNet(nn.Module):
    """Stem + `num_stacks` hourglasses, joined by upstream's intermediate layers.

    Between stacks the stem/previous features (`inters_`) and the previous
    stack's output (`cnvs_`) are each projected by 1x1 conv + BN, summed,
    ReLU'd and passed through one residual (`inters`).
    """

    def __init__(self, heads, num_stacks=NUM_STACKS):
        super().__init__()
        self.heads = dict(heads)
        self.num_stacks = num_stacks
        dim = LEVEL_DIMS[0]
        depth = len(LEVEL_DIMS) - 1
        self.pre = nn.Sequential(Convolution(7, 3, 128, stride=2),
                                 Residual(128, dim, stride=2))
        self.kps = nn.ModuleList(HourglassLevel(depth, LEVEL_DIMS, LEVEL_BLOCKS)
                                 for _ in range(num_stacks))
        self.cnvs = nn.ModuleList(Convolution(3, dim, CNV_DIM) for _ in range(num_stacks))
        self.inters = nn.ModuleList(Residual(dim, dim) for _ in range(num_stacks - 1))
        self.inters_ = nn.ModuleList(self._projection(dim, dim) for _ in range(num_stacks - 1))
        self.cnvs_ = nn.ModuleList(self._projection(CNV_DIM, dim) for _ in range(num_stacks - 1))
        for name, classes in self.heads.items():
            stacks = nn.ModuleList(_head(classes) for _ in range(num_stacks))
            if "hm" in name:
                for head in stacks:
                    head[-1].bias.data.fill_(-2.19)  # focal-loss prior, as upstream
            # Upstream leaves the other heads' biases at PyTorch's default init.
            setattr(self, name, stacks)
        self.relu = nn.ReLU(inplace=True)

    @staticmethod
    def _projection(inp_dim, out_dim):
        return nn.Sequential(nn.Conv2d(inp_dim, out_dim, 1, bias=False), nn.BatchNorm2d(out_dim))

    def head(self, name):
        """The head run at test time for `name`: the last stack's (its [-1] is the final conv)."""
        return getattr(self, name)[-1]

    def forward(self, x):
        inter = self.pre(x)
        for i in range(self.num_stacks):
            cnv = self.cnvs[i](self.kps[i](inter))
            if i < self.num_stacks - 1:
                inter = self.relu(self.inters_[i](inter) + self.cnvs_[i](cnv))
                inter = self.inters[i](inter)
        return tuple(self.head(name)(cnv) for name in self.heads)


def get_large_hourglass_net(num_layers=0, heads=None, head_conv=64):
    """Upstream's factory: ctdet Hourglass-104, two stacks (`heads` defaults to hm 80, wh 2, reg 2).

    As upstream, `num_layers` and `head_conv` are ignored (the heads are 256 wide).
    Randomly initialised; load weights with `centernet.model.checkpoint.load_state_dict`.
    """
    return HourglassNet(heads or DEFAULT_HEADS, NUM_STACKS)
