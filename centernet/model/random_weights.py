"""Random weights (ctdet or multi_pose heads), for any of upstream's networks, that behave like a
trained network, for tests, the demo and the benchmark (the real checkpoint
is the user's to supply).

Plain random initialisation gives activations far smaller than the trained
model's, and tiny activations hide real problems: float32 rounding that a
fixed tolerance mistakes for a bug, DCN offsets that never leave the pixel,
heatmaps that never peak. So the weights are random, but calibrated on
synthetic photos in one forward pass:
- every BatchNorm gets the mean and variance of its input on those photos,
  so activations stay near unit scale through all layers (statistics from
  white noise would instead make smooth photos explode);
- every DCN's offset/mask conv is rescaled so that offsets are a pixel or
  more and masks spread out around 0.5 (not all 0.5, as at upstream's init);
- the heads' last convs are rescaled per channel to the trained model's
  ranges: hm logits mostly -6..-1 with peaks above 0, wh tens of output
  pixels, reg within a pixel.
The model is marked as random weights (checkpoint.mark_random), and so is the
checkpoint saved from it, and everything made with either.
"""
import torch
from torch import nn

from centernet.io.synthetic import synthetic_input_batch
from centernet.model.checkpoint import mark_random
from centernet.model.networks import build_network

CALIBRATION_IMAGES = 16
CALIBRATION_SIZE = (256, 256)  # input side of the calibration pass: 16 images in ~3 s on 2 cores
# Hourglass-104's innermost maps are 1x1 at this size: 16 images are what keeps
# its BatchNorm statistics (16 samples there) from drifting on other photos.
HOURGLASS_CALIBRATION_SIZE = (128, 128)
OFFSET_STD = 0.5              # pixels: how much each offset channel varies with the input
OFFSET_MEAN_STD = 1.5         # pixels: spread of the offset channels' means (a fixed shift per tap)
MASK_LOGIT_STD = 1.5
# Per output channel of the heads' last convs: (median range, spread range,
# the quantiles (lo, mid, hi) whose lo..hi range is the spread). Quantiles,
# not mean and std: the heads' inputs are sparse (strong at a few edges), and
# their heavy tails would otherwise decide the scale.
HEAD_TARGETS = {
    "hm": ((-4.5, -3.5), (3.0, 4.0), (0.01, 0.5, 0.99)),    # logits mostly -6..-1, peaks above 0
    "wh": ((16.0, 32.0), (8.0, 12.0), (0.05, 0.5, 0.95)),  # tens of output pixels
    "reg": ((0.45, 0.55), (0.4, 0.6), (0.05, 0.5, 0.95)),   # sub-pixel centre offsets
    # multi_pose: joints tens of output pixels from the centre either way,
    # joint heatmaps like hm's, sub-pixel joint offsets.
    "hps": ((-12.0, 12.0), (8.0, 16.0), (0.05, 0.5, 0.95)),
    "hm_hp": ((-4.5, -3.5), (3.0, 4.0), (0.01, 0.5, 0.99)),
    "hp_offset": ((0.45, 0.55), (0.4, 0.6), (0.05, 0.5, 0.95)),
}


def _rescale_channels(conv, out, centres, spreads, quantiles=None):
    """Rescale conv (in place) so that each output channel of `out` (computed
    with the old parameters) is centred at `centres` with spread `spreads`.
    Centre and spread are mean and std, or with quantiles=(lo, mid, hi) the
    median and the lo..hi quantile range, which heavy tails (a few strong
    edges) cannot inflate. Returns the output the new parameters give."""
    flat = out.transpose(0, 1).reshape(out.shape[1], -1)
    if quantiles is None:
        mid, spread = flat.mean(1), flat.std(1)
    else:
        q = torch.quantile(flat, torch.tensor(quantiles, dtype=flat.dtype), dim=1)
        mid, spread = q[1], q[2] - q[0]
    k = spreads / spread.clamp_min(1e-12)
    conv.weight.mul_(k.view(-1, *[1] * (conv.weight.dim() - 1)))
    conv.bias.copy_((conv.bias - mid) * k + centres)
    return (out - mid.view(1, -1, 1, 1)) * k.view(1, -1, 1, 1) + centres.view(1, -1, 1, 1)


def _uniform(gen, n, lo, hi):
    return torch.rand(n, generator=gen) * (hi - lo) + lo


def calibrate(model, images, gen):
    """One forward pass over `images` (N,3,H,W) in training mode: BatchNorms
    record that batch's statistics (momentum None: exactly the batch's, the
    variance as training normalised with it), and
    hooks rescale the DCN offset convs and the heads' last convs on the fly,
    so every later layer is calibrated on the rescaled values."""
    hooks = []

    def offset_hook(conv, inputs, out):
        taps = out.shape[1] // 3
        means = torch.cat([torch.randn(2 * taps, generator=gen) * OFFSET_MEAN_STD,
                           torch.randn(taps, generator=gen) * 0.5])
        stds = torch.cat([torch.full((2 * taps,), OFFSET_STD), torch.full((taps,), MASK_LOGIT_STD)])
        return _rescale_channels(conv, out, means, stds)

    def head_hook(name):
        def hook(conv, inputs, out):
            c = out.shape[1]
            centre_range, spread_range, quantiles = HEAD_TARGETS[name]
            return _rescale_channels(conv, out, _uniform(gen, c, *centre_range),
                                     _uniform(gen, c, *spread_range), quantiles)
        return hook

    samples = {}

    def count_samples(bn, inputs):
        samples[bn] = inputs[0].numel() // inputs[0].shape[1]

    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(count_samples))
            # A trained network's BN scales and shifts differ per channel.
            module.weight.data.copy_(_uniform(gen, module.num_features, 0.75, 1.25))
            module.bias.data.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
            module.reset_running_stats()
            module.momentum = None  # cumulative average: after one batch, that batch's statistics
        elif name.endswith("conv_offset_mask"):
            nn.init.normal_(module.weight, 0, 0.01, generator=gen)
            nn.init.zeros_(module.bias)
            hooks.append(module.register_forward_hook(offset_hook))
    for head in model.heads:
        hooks.append(model.head(head)[-1].register_forward_hook(head_hook(head)))
    try:
        with torch.no_grad():
            model.train()(images)
    finally:
        for h in hooks:
            h.remove()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.1  # upstream's BN_MOMENTUM
                n = samples.get(module, 0)
                if n > 1:
                    # Training normalised with the biased variance but recorded the
                    # unbiased one; with few samples per channel (Hourglass's 1x1
                    # innermost maps) that gap compounds through the layers.
                    module.running_var.mul_((n - 1) / n)
    return model.eval()


def random_model(seed=0, network="dla_34", heads=None, head_conv=None, calibration_size=None,
                 calibration_images=CALIBRATION_IMAGES):
    """A deterministic network (upstream's `network`, e.g. resdcn_18;
    `heads` default COCO's) with random weights calibrated on synthetic photos
    (see the module docstring), marked as random weights (checkpoint.is_random).
    Upstream's parameter names and shapes; it carries its ModelFacts (`facts`).
    calibration_size: (H, W) of the calibration photos; by default
    CALIBRATION_SIZE, and for Hourglass-104 (190 M parameters, inputs in
    multiples of 128) HOURGLASS_CALIBRATION_SIZE."""
    if calibration_size is None:
        calibration_size = HOURGLASS_CALIBRATION_SIZE if network == "hourglass" else CALIBRATION_SIZE
    torch.manual_seed(seed)
    model = build_network(network, heads, head_conv)
    gen = torch.Generator().manual_seed(seed)
    images = torch.from_numpy(synthetic_input_batch(calibration_images, calibration_size, seed=seed + 1000))
    return mark_random(calibrate(model, images, gen))
