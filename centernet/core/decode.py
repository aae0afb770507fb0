"""Raw network outputs -> detections on the image (upstream: src/lib/models/decode.py
ctdet_decode, src/lib/utils/post_process.py ctdet_post_process).

decode_ctdet restates upstream's ctdet_decode in numpy over a batch: sigmoid,
3x3 peak suppression, top K, sub-pixel offsets and sizes, boxes on the output
map. map_boxes_to_image undoes the test transform. decode_bins_to_coco runs
both over a folder of ais_bench output bins and yields COCO results entries.
"""

import numpy as np

from centernet.core.transforms import get_affine_transform, transform_points


def sigmoid(x):
    """float32 1 / (1 + exp(-x)), as torch computes it (saturates to 0 and 1)."""
    out = np.negative(x, dtype=np.float32)
    with np.errstate(over="ignore"):  # exp(-x) = inf for x < -88 gives 0, as in torch
        np.exp(out, out=out)
    out += 1
    return np.reciprocal(out, out=out)


def max_pool3x3(x):
    """3x3 max pool, stride 1, over the last two axes; the border behaves as
    padding with -inf (as torch's max_pool2d with padding 1)."""
    rows = x.copy()
    np.maximum(rows[..., 1:, :], x[..., :-1, :], out=rows[..., 1:, :])
    np.maximum(rows[..., :-1, :], x[..., 1:, :], out=rows[..., :-1, :])
    pooled = rows.copy()
    np.maximum(pooled[..., :, 1:], rows[..., :, :-1], out=pooled[..., :, 1:])
    np.maximum(pooled[..., :, :-1], rows[..., :, 1:], out=pooled[..., :, :-1])
    return pooled


def as_heat(x):
    """The activation of an hm that is already a heatmap (the flip test's
    sigmoid average): a float32 copy, so callers may overwrite it."""
    return np.array(x, dtype=np.float32)


CLASS_BLOCK = 8  # classes per step: 8x128x128 float32 (512 KiB) stays in cache


def _peaks(hm_img, act=sigmoid):
    """Flat indices (ascending) and scores of the nonzero entries of
    heat * (heat == maxpool3x3(heat)) for one image's (C,H,W) heatmap,
    heat = act(hm), worked through in cache-sized blocks of classes."""
    c, h, w = hm_img.shape
    idx, val = [], []
    for c0 in range(0, c, CLASS_BLOCK):
        heat = act(hm_img[c0:c0 + CLASS_BLOCK])
        keep = heat == max_pool3x3(heat)
        keep &= heat > 0
        nz = np.flatnonzero(keep)
        idx.append(nz + c0 * h * w)
        val.append(heat.reshape(-1)[nz])
    return np.concatenate(idx), np.concatenate(val)


def _top_k(indices, values, K, size):
    """The K best (value desc, then index asc) of candidates with ascending
    indices; padded with zero scores at the lowest other indices when there
    are fewer than K (upstream's top K then returns suppressed zeros too)."""
    m = values.size
    if m > 64 * K:
        # Cheap lower bound of the K-th largest value: the K-th largest of a
        # strided sample (the full set has at least K values >= it). Keeps
        # the exact selection below small, and avoids np.partition's slow
        # path on inputs with long runs of equal values.
        sample = values[::m // (16 * K)]
        bound = -np.partition(-sample, K - 1)[K - 1]
        sel = np.flatnonzero(values >= bound)
        indices, values, m = indices[sel], values[sel], sel.size
    if m > K:
        t = -np.partition(-values, K - 1)[K - 1]  # the K-th largest value
        above = np.flatnonzero(values > t)
        ties = np.flatnonzero(values == t)[:K - above.size]  # lowest indices win ties
        sel = np.concatenate([above, ties])
        indices, values = indices[sel], values[sel]
    elif m < K:
        pad = np.setdiff1d(np.arange(min(K + m, size)), indices)[:K - m]
        indices = np.concatenate([indices, pad])
        values = np.concatenate([values, np.zeros(pad.size, np.float32)])
    order = np.lexsort((indices, -values))
    return indices[order], values[order]


def _peak_test(flat, shape, cand, act=sigmoid):
    """The candidates (flat indices into a (C,H,W) heatmap) that are peaks,
    and their scores: same activation, same 3x3 equality test as _peaks."""
    _, h, w = shape
    y, x = np.divmod(cand % (h * w), w)
    score = act(flat[cand])
    best = score.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                inside = (y + dy >= 0) & (y + dy < h) & (x + dx >= 0) & (x + dx < w)
                # a neighbour outside the map stands in as the pixel itself,
                # which cannot change the max (like -inf padding)
                np.maximum(best, act(flat[np.where(inside, cand + dy * w + dx, cand)]), out=best)
    keep = (score == best) & (score > 0)
    return cand[keep], score[keep]


SAMPLE_STEP = 97       # stride of the sample that picks the threshold (prime: no aliasing with rows)
CANDIDATES_PER_K = 64  # aim for this many candidate pixels per wanted detection


def _top_k_thresholded(hm_img, K, act=sigmoid):
    """Top K of one image looking only at pixels whose logit is above a
    threshold, or None where that cannot be shown to give the exact answer.

    The threshold comes from a strided sample. The candidates' peaks are
    the answer when there are at least K of them and the K-th score beats
    act(threshold): every pixel below the threshold scores at most that
    (the activation is monotone).
    Otherwise the threshold is lowered, and after a few tries the caller
    falls back to the full map.
    """
    flat = hm_img.reshape(-1)
    n = flat.size
    sample = flat[::SAMPLE_STEP]
    q = max(1, CANDIDATES_PER_K * K // SAMPLE_STEP)
    while 8 * q * SAMPLE_STEP < n and q <= sample.size:  # give up once candidates approach n / 8
        theta = -np.partition(-sample, q - 1)[q - 1]
        cand = np.flatnonzero(flat >= theta)
        if cand.size * 8 >= n:
            return None
        idx, val = _peak_test(flat, hm_img.shape, cand, act)
        if idx.size >= K:
            idx, val = _top_k(idx, val, K, n)
            if val[-1] > act(np.array([theta], np.float32))[0]:
                return idx, val
        q *= 8
    return None


def decode_ctdet(hm, wh, reg, K=100, hm_is_heat=False):
    """Decode raw outputs of a batch: hm (N,C,H,W), wh and reg (N,2,H,W).
    hm_is_heat: hm is already a heatmap in [0, 1] (the flip test averages
    after the sigmoid), so no sigmoid is applied.

    Returns scores (N,K) float32 (descending), classes (N,K) int64 (0..C-1)
    and boxes (N,K,4) float32 (x1, y1, x2, y2) on the output map.

    Top K over all classes at once equals upstream's top K per class followed
    by top K overall: an entry among the best K overall has fewer than K
    better entries in its own class. Equal scores (in practice only
    suppressed zeros) go to the lower class, then row, then column.
    """
    hm = np.asarray(hm, dtype=np.float32)
    wh = np.asarray(wh, dtype=np.float32)
    reg = np.asarray(reg, dtype=np.float32)
    n, c, h, w = hm.shape
    if wh.shape != (n, 2, h, w) or reg.shape != (n, 2, h, w):
        raise ValueError(f"wh {wh.shape} and reg {reg.shape} must be {(n, 2, h, w)} to match hm {hm.shape}")
    if not 0 < K <= h * w:
        raise ValueError(f"K={K} must be between 1 and H*W={h * w}")
    top, scores = top_k_peaks(hm, K, as_heat if hm_is_heat else sigmoid)
    classes, pix = np.divmod(top, h * w)
    return scores, classes, boxes_at(wh, reg, pix)


def top_k_peaks(hm, K, act=sigmoid):
    """Top K peaks of each image of a batch hm (N,C,H,W) after heat = act(hm)
    and the 3x3 peak test, over all C*H*W positions (upstream's _topk):
    flat indices (N,K) int64 into C*H*W and scores (N,K) float32, score
    descending, lower index first among equal scores, padded with zero
    scores at the lowest other indices when an image has fewer than K peaks."""
    n, c, h, w = hm.shape
    top = np.empty((n, K), np.int64)
    scores = np.empty((n, K), np.float32)
    for i in range(n):
        found = _top_k_thresholded(hm[i], K, act)
        top[i], scores[i] = found if found is not None else _top_k(*_peaks(hm[i], act), K, c * h * w)
    return top, scores


def boxes_at(wh, reg, pix):
    """Boxes (N,K,4) float32 on the output map of the centres at flat pixel
    indices pix (N,K) into H*W: centre = (x, y) + reg there, sides wh there."""
    n, _, h, w = wh.shape
    ys, xs = np.divmod(pix, w)
    batch = np.arange(n)[:, None]
    off = reg.reshape(n, 2, -1)
    size = wh.reshape(n, 2, -1)
    cx = xs.astype(np.float32) + off[batch, 0, pix]
    cy = ys.astype(np.float32) + off[batch, 1, pix]
    half_w = size[batch, 0, pix] / 2
    half_h = size[batch, 1, pix] / 2
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def map_boxes_to_image(boxes, center, scale, out_size):
    """Boxes (...,4) on the output map -> image pixels (float64), through the
    inverse affine of the test transform; out_size = (out_w, out_h)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    trans = get_affine_transform(center, scale, out_size, inverse=True)
    corners = transform_points(boxes.reshape(-1, 2), trans)
    return corners.reshape(boxes.shape)


def _round2(values):
    """Upstream's float("{:.2f}".format(v)) of every value (coco.py convert_eval_format)."""
    return [float(f"{v:.2f}") for v in values]


def detections_to_coco(image_id, scores, classes, boxes, category_ids, upstream_rounding=False):
    """COCO results entries of one image; boxes (K,4) x1,y1,x2,y2 on the image.

    upstream_rounding: as upstream's results JSON, from which its published
    AP was computed: boxes as float32, width = x2 - x1 in float32, then the
    four numbers and the score rounded to 2 decimals. Default: full precision.
    """
    cat = np.asarray(category_ids)[classes].tolist()
    if upstream_rounding:
        b32 = np.asarray(boxes, dtype=np.float32)
        xywh = np.concatenate([b32[:, :2], b32[:, 2:] - b32[:, :2]], axis=1)
        return [{"image_id": image_id, "category_id": c, "bbox": _round2(b), "score": float(f"{s:.2f}")}
                for c, b, s in zip(cat, xywh.tolist(), np.asarray(scores, np.float32).tolist())]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
    return [{"image_id": image_id, "category_id": c, "bbox": b, "score": s}
            for c, b, s in zip(cat, xywh, scores.astype(np.float64).tolist())]


