"""centernet.train.targets against loop transcriptions of upstream's rules
(utils/image.py: gaussian_radius, gaussian2D, draw_umich_gaussian;
datasets/sample/ctdet.py: the targets of one image)."""
import math

import numpy as np
import pytest

from centernet.core.transforms import get_affine_transform
from centernet.train.targets import MAX_OBJECTS, ctdet_targets, draw_gaussian, gaussian_radius


def upstream_radius(det_size, min_overlap=0.7):
    # upstream's code, verbatim in its arithmetic
    height, width = det_size
    a1 = 1
    b1 = (height + width)
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    sq1 = np.sqrt(b1 ** 2 - 4 * a1 * c1)
    r1 = (b1 + sq1) / 2
    a2 = 4
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    sq2 = np.sqrt(b2 ** 2 - 4 * a2 * c2)
    r2 = (b2 + sq2) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    sq3 = np.sqrt(b3 ** 2 - 4 * a3 * c3)
    r3 = (b3 + sq3) / 2
    return min(r1, r2, r3)


@pytest.mark.parametrize("h, w", [(1, 1), (3, 17), (10, 10), (40, 7), (63, 64), (5, 120)])
def test_radius_is_upstreams(h, w):
    assert gaussian_radius(h, w) == pytest.approx(upstream_radius((h, w)), rel=1e-12)


def loop_gaussian(heatmap, cx, cy, radius):
    """Pixel by pixel: max(heatmap, exp(-d^2 / 2 sigma^2)) within the (2r+1) window, sigma = (2r+1)/6,
    values below eps * peak dropped."""
    out = heatmap.copy()
    sigma = (2 * radius + 1) / 6
    eps = np.finfo(np.float64).eps
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            dx, dy = x - cx, y - cy
            if abs(dx) <= radius and abs(dy) <= radius:
                g = math.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
                if g >= eps:
                    out[y, x] = max(out[y, x], g)
    return out


@pytest.mark.parametrize("cx, cy, radius", [(5, 5, 2), (0, 0, 3), (9, 3, 4), (2, 8, 0), (7, 7, 6)])
def test_draw_gaussian_is_the_pixelwise_rule(cx, cy, radius):
    rng = np.random.default_rng(cx * 10 + cy)
    heatmap = (rng.random((10, 10)) * 0.5).astype(np.float32)
    expected = loop_gaussian(heatmap.astype(np.float64), cx, cy, radius)
    got = draw_gaussian(heatmap.copy(), cx, cy, radius)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)  # float32 storage of float64 values


def loop_targets(objects, center, scale, out_h, out_w, num_classes, flipped_width=None):
    """upstream's ctdet __getitem__ target section, one object at a time."""
    trans = get_affine_transform(center, scale, (out_w, out_h))
    hm = np.zeros((num_classes, out_h, out_w), np.float64)
    rows = []
    for x, y, w, h, cls in objects:
        bbox = np.array([x, y, x + w, y + h], np.float64)
        if flipped_width is not None:
            bbox[[0, 2]] = flipped_width - bbox[[2, 0]] - 1
        p1 = trans @ np.array([bbox[0], bbox[1], 1.0])
        p2 = trans @ np.array([bbox[2], bbox[3], 1.0])
        bbox = np.array([p1[0], p1[1], p2[0], p2[1]])
        bbox[[0, 2]] = np.clip(bbox[[0, 2]], 0, out_w - 1)
        bbox[[1, 3]] = np.clip(bbox[[1, 3]], 0, out_h - 1)
        bh, bw = bbox[3] - bbox[1], bbox[2] - bbox[0]
        if bh > 0 and bw > 0:
            radius = max(0, int(upstream_radius((math.ceil(bh), math.ceil(bw)))))
            ct = np.array([(bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2], np.float32)
            ix, iy = ct.astype(np.int32)
            hm[cls] = loop_gaussian(hm[cls], ix, iy, radius)
            rows.append(((bw, bh), ct - (ix, iy), iy * out_w + ix))
        else:
            rows.append(None)
    return hm, rows


@pytest.mark.parametrize("flip", [False, True])
def test_targets_are_upstreams(flip):
    objects = [(10, 20, 60, 40, 0), (100, 50, 30, 90, 2), (150, 5, 40, 40, 2), (0, 200, 20, 39, 1),
               (300, 300, 30, 30, 1)]  # the last lies outside the crop
    center, scale = np.array([130.0, 140.0], np.float32), 300.0
    t = ctdet_targets(objects, center, scale, (32, 32), 3, flipped_width=320 if flip else None)
    hm, rows = loop_targets(objects, center, scale, 32, 32, 3, flipped_width=320 if flip else None)
    np.testing.assert_allclose(t.hm, hm, rtol=0, atol=1e-7)
    assert t.hm.max() == 1.0
    for k, row in enumerate(rows):
        if row is None:
            assert t.reg_mask[k] == 0
            continue
        (bw, bh), reg, ind = row
        assert t.reg_mask[k] == 1 and t.ind[k] == ind
        np.testing.assert_allclose(t.wh[k], (bw, bh), rtol=1e-6)
        np.testing.assert_allclose(t.reg[k], reg, atol=1e-6)
    assert t.reg_mask[len(objects):].sum() == 0 and t.wh.shape == (MAX_OBJECTS, 2)
