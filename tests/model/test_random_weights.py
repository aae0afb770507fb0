"""The test weights behave like the trained network on photos: the ranges of
its outputs, DCN offsets and masks, and BatchNorm activations."""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import photo_inputs


@pytest.fixture(scope="module")
def observed(random_ctdet):
    """One forward pass over held-out synthetic photos (not the calibration
    ones) at the fixed 512x512 input, recording every DCN's offsets and mask
    and every BatchNorm's normalised output."""
    offsets, masks, bn_stds = {}, {}, {}
    hooks = []
    for name, module in random_ctdet.named_modules():
        if name.endswith("conv_offset_mask"):
            def hook(m, inputs, out, name=name):
                taps = out.shape[1] // 3
                offsets[name] = out[:, :2 * taps]
                masks[name] = torch.sigmoid(out[:, 2 * taps:])
            hooks.append(module.register_forward_hook(hook))
        elif isinstance(module, nn.BatchNorm2d):
            def hook(m, inputs, out, name=name):
                x = inputs[0]
                normalised = (x - m.running_mean.view(1, -1, 1, 1)) / torch.sqrt(m.running_var.view(1, -1, 1, 1) + m.eps)
                bn_stds[name] = float(normalised.std())
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            hm, wh, reg = (t.numpy() for t in random_ctdet(torch.from_numpy(photo_inputs(2, (512, 512), seed=7))))
    finally:
        for h in hooks:
            h.remove()
    return {"hm": hm, "wh": wh, "reg": reg, "offsets": offsets, "masks": masks, "bn_stds": bn_stds}


def test_heatmap_logits_like_a_trained_detector(observed):
    hm = observed["hm"]
    # Mostly background between -6 and -1, peaks above 0, nothing absurd.
    assert np.mean((hm > -6) & (hm < -1)) >= 0.9
    assert 0 < hm.max() < 16 and -30 < hm.min() < -8
    assert 1e-5 < np.mean(hm > 0) < 0.02  # peaks, not plateaus
    # Scores spread out instead of saturating at 1.0 in float32.
    assert 1 / (1 + np.exp(-hm.max())) < 1.0


def test_sizes_are_tens_of_output_pixels(observed):
    wh, reg = observed["wh"], observed["reg"]
    assert 10 <= np.median(wh) <= 40
    lo, hi = np.percentile(wh, [5, 95])
    assert lo > 0 and hi < 80
    lo, hi = np.percentile(reg, [5, 95])
    assert -0.5 < lo < 0.5 < hi < 1.5


def test_dcn_offsets_are_pixels_and_masks_spread(observed):
    assert len(observed["offsets"]) == 16
    for name, off in observed["offsets"].items():
        assert off.abs().mean() >= 1.0, name          # a pixel or more
        assert off.std(dim=(0, 2, 3)).mean() >= 0.2, name  # and they depend on the input
    for name, mask in observed["masks"].items():
        assert mask.std() >= 0.15, name             # not all 0.5, as at upstream's init
        assert 0.2 < mask.mean() < 0.8, name


def test_batchnorm_activations_near_unit_scale(observed):
    stds = observed["bn_stds"]
    assert len(stds) > 40
    assert all(0.4 < s < 2.5 for s in stds.values()), {k: round(v, 2) for k, v in stds.items()
                                                       if not 0.4 < v < 2.5}
