"""Upstream's ctdet training targets (datasets/sample/ctdet.py and
utils/image.py): a gaussian peak per object on the class heatmap, its size
and sub-pixel centre offset at the peak. Written from their rules."""
import math
from dataclasses import dataclass

import numpy as np

from centernet.core.transforms import get_affine_transform, transform_points

MAX_OBJECTS = 32  # rows of wh/reg/ind per image (upstream: max_objs 128 for COCO)


def gaussian_radius(height, width, min_overlap=0.7):
    """Upstream's (CornerNet's) radius for a box of `height` x `width`: the
    smallest of its three quadratic roots, with their `(b + sq) / 2` as upstream
    has it (not the textbook /2a)."""
    def root(a, b, c):
        return (b + math.sqrt(b * b - 4 * a * c)) / 2
    r1 = root(1, height + width, width * height * (1 - min_overlap) / (1 + min_overlap))
    r2 = root(4, 2 * (height + width), (1 - min_overlap) * width * height)
    r3 = root(4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height)
    return min(r1, r2, r3)


def gaussian_2d(radius):
    """(2r+1, 2r+1) gaussian with sigma (2r+1)/6, peak 1, tiny values set to 0."""
    d = 2 * radius + 1
    sigma = d / 6
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    g = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    return g


def draw_gaussian(heatmap, cx, cy, radius):
    """heatmap = max(heatmap, gaussian of `radius` centred at integer (cx, cy)), clipped at the borders."""
    g = gaussian_2d(radius)
    h, w = heatmap.shape
    left, right = min(cx, radius), min(w - cx, radius + 1)
    top, bottom = min(cy, radius), min(h - cy, radius + 1)
    if min(right + left, bottom + top) <= 0:
        return heatmap
    region = heatmap[cy - top:cy + bottom, cx - left:cx + right]
    np.maximum(region, g[radius - top:radius + bottom, radius - left:radius + right], out=region)
    return heatmap


@dataclass
class CtdetTargets:
    hm: np.ndarray        # (C, H/4, W/4) float32, gaussian peaks
    wh: np.ndarray        # (MAX_OBJECTS, 2) box width, height on the output map
    reg: np.ndarray       # (MAX_OBJECTS, 2) centre minus its integer cell
    ind: np.ndarray       # (MAX_OBJECTS,) int64 flat index of the centre cell
    reg_mask: np.ndarray  # (MAX_OBJECTS,) float32, 1 where a row is an object


def ctdet_targets(objects, center, scale, output_size, num_classes, flipped_width=None):
    """Targets for `objects` [(x, y, w, h, class index), ...] of an image
    warped with (center, scale) onto an input whose output map is
    output_size (H, W). flipped_width: the image's width when it was
    mirrored (boxes are mirrored as upstream does: x1' = width - x2 - 1)."""
    out_h, out_w = output_size
    trans = get_affine_transform(center, scale, (out_w, out_h))
    t = CtdetTargets(np.zeros((num_classes, out_h, out_w), np.float32), np.zeros((MAX_OBJECTS, 2), np.float32),
                     np.zeros((MAX_OBJECTS, 2), np.float32), np.zeros(MAX_OBJECTS, np.int64),
                     np.zeros(MAX_OBJECTS, np.float32))
    for k, (x, y, w, h, cls) in enumerate(objects[:MAX_OBJECTS]):
        x1, y1, x2, y2 = float(x), float(y), float(x + w), float(y + h)
        if flipped_width is not None:
            x1, x2 = flipped_width - x2 - 1, flipped_width - x1 - 1
        (x1, y1), (x2, y2) = transform_points([[x1, y1], [x2, y2]], trans)
        x1, x2 = np.clip([x1, x2], 0, out_w - 1)
        y1, y2 = np.clip([y1, y2], 0, out_h - 1)
        bh, bw = y2 - y1, x2 - x1
        if bh <= 0 or bw <= 0:
            continue
        radius = max(0, int(gaussian_radius(math.ceil(bh), math.ceil(bw))))
        ct = np.array([(x1 + x2) / 2, (y1 + y2) / 2], np.float32)
        ix, iy = ct.astype(np.int32)
        draw_gaussian(t.hm[cls], int(ix), int(iy), radius)
        t.wh[k] = bw, bh
        t.ind[k] = iy * out_w + ix
        t.reg[k] = ct - (ix, iy)
        t.reg_mask[k] = 1
    return t
