"""centernet.train.losses against loop transcriptions of upstream's
models/losses.py (_neg_loss, RegL1Loss) in float64."""
import math

import numpy as np
import pytest
import torch

from centernet.train.losses import ctdet_loss, focal_loss, reg_l1_loss


def loop_focal(logits, gt):
    pos_loss = neg_loss = 0.0
    num_pos = 0
    for x, g in zip(logits.ravel().tolist(), gt.ravel().tolist()):
        p = min(max(1 / (1 + math.exp(-x)), 1e-4), 1 - 1e-4)
        if g == 1:
            pos_loss += math.log(p) * (1 - p) ** 2
            num_pos += 1
        else:
            neg_loss += math.log(1 - p) * p ** 2 * (1 - g) ** 4
    return -neg_loss if num_pos == 0 else -(pos_loss + neg_loss) / num_pos


def heatmap_case(seed, peaks=True):
    rng = np.random.default_rng(seed)
    logits = rng.normal(-3, 3, size=(2, 3, 8, 8))
    gt = rng.random((2, 3, 8, 8)) ** 4
    if peaks:
        gt[0, 1, 2, 3] = gt[1, 2, 5, 5] = gt[1, 0, 0, 7] = 1.0
    logits[0, 0, 0, 0] = 30.0  # saturates: the clamp holds it
    return torch.from_numpy(logits), torch.from_numpy(gt)


@pytest.mark.parametrize("seed, peaks", [(0, True), (1, True), (2, False)])
def test_focal_loss_is_upstreams(seed, peaks):
    logits, gt = heatmap_case(seed, peaks)
    assert focal_loss(logits, gt).item() == pytest.approx(loop_focal(logits.numpy(), gt.numpy()), rel=1e-12)


def loop_reg_l1(output, mask, ind, target):
    n, c, h, w = output.shape
    total, count = 0.0, 0.0
    for b in range(n):
        for k in range(ind.shape[1]):
            y, x = divmod(int(ind[b, k]), w)
            for ch in range(c):
                total += abs(output[b, ch, y, x] * mask[b, k] - target[b, k, ch] * mask[b, k])
                count += mask[b, k]
    return total / (count + 1e-4)


def test_reg_l1_is_upstreams():
    rng = np.random.default_rng(3)
    output = rng.normal(size=(2, 2, 6, 7))
    ind = rng.integers(0, 42, size=(2, 5))
    mask = np.array([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0]], np.float64)
    target = rng.normal(size=(2, 5, 2)) * 10
    got = reg_l1_loss(*(torch.from_numpy(a) for a in (output, mask, ind, target)))
    assert got.item() == pytest.approx(loop_reg_l1(output, mask, ind, target), rel=1e-12)


def test_the_total_weights_hm_1_wh_01_off_1():
    logits, gt = heatmap_case(0)
    rng = np.random.default_rng(4)
    batch = {"hm": gt, "reg_mask": torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
             "ind": torch.tensor([[3, 10], [20, 0]]), "wh": torch.from_numpy(rng.normal(size=(2, 2, 2)) * 20),
             "reg": torch.from_numpy(rng.random((2, 2, 2)))}
    outputs = {"hm": logits, "wh": torch.from_numpy(rng.normal(size=(2, 2, 8, 8)) * 20),
               "reg": torch.from_numpy(rng.random((2, 2, 8, 8)))}
    total, parts = ctdet_loss(outputs, batch)
    assert total.item() == pytest.approx(parts["hm"] + 0.1 * parts["wh"] + parts["off"], rel=1e-12)
