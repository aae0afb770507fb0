"""Upstream's multi-scale merge and its gaussian soft-NMS, in numpy.

merge_detections restates CtdetDetector.merge_outputs (upstream
src/lib/detectors/ctdet.py): per class, the rows of every scale are
concatenated, rescored by soft-NMS, and the image keeps its top 100 scores.
soft_nms restates soft_nms(..., method=2) of upstream's Cython
src/lib/external/nms.pyx bit for bit, quirks included (see soft_nms).
Its loop, gaussian_soft_nms, also serves pose.soft_nms_39 (39-column pose
rows, whose joint columns nms.pyx swaps rather than overwrites).
detections_by_class groups the decoder's detections per class the way
upstream's ctdet_post_process and CtdetDetector.post_process do.
"""
import numpy as np

SIGMA = 0.5        # upstream's defaults for method 2 (gaussian)
THRESHOLD = 0.001
MAX_PER_IMAGE = 100


def _check_rows(rows, name="rows", width=5, what="[x1, y1, x2, y2, score]"):
    if not isinstance(rows, np.ndarray) or rows.dtype != np.float32 or rows.ndim != 2 or rows.shape[1] != width:
        got = f"{type(rows).__name__} {getattr(rows, 'dtype', '')} {getattr(rows, 'shape', '')}"
        raise ValueError(f"{name} must be a float32 (N, {width}) numpy array of {what}, got {got}")
    if not np.isfinite(rows).all():
        # Upstream's strict '<' comparisons and numpy's argmax disagree on NaN.
        raise ValueError(f"{name} contains NaN or infinite values")


def _decay(t, rest, sigma, one):
    """Upstream's gaussian rescoring of the rows `rest` by the box t, all rows
    at once. Returns every row's rescored value (float32; unchanged where the
    boxes do not overlap) and the indices of the overlapping rows, the only
    ones upstream rescores and tests against the threshold.

    The arithmetic is nms.pyx's: every variable there is a C float, so every
    step here is a float32 operation in the same order; only np.exp runs in
    double (Cython passes a Python float to np.exp and casts its result back
    to float when it assigns `weight`)."""
    tx1, ty1, tx2, ty2 = t
    x1, y1, x2, y2 = rest[:, 0], rest[:, 1], rest[:, 2], rest[:, 3]
    iw = np.minimum(tx2, x2) - np.maximum(tx1, x1) + one
    ih = np.minimum(ty2, y2) - np.maximum(ty1, y1) + one
    hit = np.flatnonzero((iw > 0) & (ih > 0))  # upstream rescores only these
    scores = rest[:, 4].copy()
    if hit.size:
        iw, ih, x1, y1, x2, y2 = iw[hit], ih[hit], x1[hit], y1[hit], x2[hit], y2[hit]
        area = (x2 - x1 + one) * (y2 - y1 + one)
        inter = iw * ih
        ua = ((tx2 - tx1 + one) * (ty2 - ty1 + one) + area) - inter
        ov = inter / ua
        weight = np.exp((-(ov * ov) / sigma).astype(np.float64)).astype(np.float32)
        scores[hit] = weight * scores[hit]
    return scores, hit


def soft_nms(rows, sigma=SIGMA, threshold=THRESHOLD):
    """In place on a float32 (N, 5) array of [x1, y1, x2, y2, score] rows: upstream's gaussian soft-NMS
    (method 2), including its quirks (overwrite row pos with row N-1 on discard, no swap; stale rows
    past the final N are left in the array). Returns the final count N (upstream's keep count), which
    upstream's merge ignores.

    sigma and threshold are used as float32, as the Cython signature declares
    them (threshold 0.001 is float32(0.001)). Rows must be finite.
    """
    _check_rows(rows)
    return gaussian_soft_nms(rows, sigma, threshold)


def gaussian_soft_nms(rows, sigma=SIGMA, threshold=THRESHOLD):
    """The loop shared by soft_nms (5 columns) and pose.soft_nms_39 (39):
    in place on checked float32 rows whose columns 0-4 are [x1, y1, x2, y2,
    score]; returns the final N. The max row is swapped with row i whole.
    On discard, columns 0-4 follow soft_nms's overwrite; columns 5 and up
    (if any) are SWAPPED with row N-1's, as nms.pyx's soft_nms_39 does (see
    _swap_extra)."""
    sigma, threshold, one = np.float32(sigma), np.float32(threshold), np.float32(1)
    n = rows.shape[0]
    # Upstream loops i over the starting N; once i reaches the shrunken N its
    # max search and rescoring loops are empty, so stopping there is the same.
    for i in range(rows.shape[0]):
        if i >= n:
            break
        k = i + int(np.argmax(rows[i:n, 4]))  # first maximum, as upstream's strict '<' scan
        if k != i:
            rows[[i, k]] = rows[[k, i]]
        rest = rows[i + 1:n]
        if not len(rest):
            continue
        scores, hit = _decay(rows[i, :4], rest, sigma, one)
        dead = np.zeros(len(rest), bool)
        dead[hit] = scores[hit] < threshold
        if not dead.any():
            rest[:, 4] = scores
            continue
        if rows.shape[1] > 5:
            _swap_extra(rest, dead)
        n = i + 1 + _discard(rest, scores, dead)
    return n


def _discard(rest, scores, dead):
    """Apply upstream's discard step to the rows `rest` (positions i+1..N-1)
    given every row's rescored value and whether it falls below threshold;
    returns the number of rows kept (the new N - i - 1).

    Upstream walks pos forward; a row that falls below threshold is
    overwritten by row N-1 (its value from before this pass, not yet
    rescored), N shrinks and pos is looked at again, so row N-1 gets rescored
    there. Each row is rescored exactly once per pass, by the same box, so its
    rescored value and fate do not depend on where it is when that happens:
    the walk is a two-pointer compaction over known flags. With L rows kept:
    - positions < L whose own row survives keep it, rescored;
    - the other positions < L (holes, ascending) receive the surviving rows
      at positions >= L, taken from the end downwards, rescored;
    - positions >= L are past the final N and never written again: each still
      holds its row as it was before this pass (it was copied down from
      there unrescored), except that when the row at L itself is discarded the
      walk ends by discarding in place at L, leaving there the last row it
      rescored: row L+1 if that row was discarded too (it had been copied
      down to L just before), else row L.
    tests/core/test_soft_nms.py checks this against a per-row transcription."""
    m = len(rest)
    kept = m - int(dead.sum())
    rest[:kept, 4] = scores[:kept]
    holes = np.flatnonzero(dead[:kept])
    fill = kept + np.flatnonzero(~dead[kept:])[::-1]
    rest[holes, :4] = rest[fill, :4]
    rest[holes, 4] = scores[fill]
    if dead[kept]:  # kept < m here: some row was discarded
        last = kept + 1 if kept + 1 < m and dead[kept + 1] else kept
        rest[kept, :4] = rest[last, :4]
        rest[kept, 4] = scores[last]
    return kept


def _swap_extra(rest, dead):
    """Columns 5 and up of the rows `rest` after one pass of nms.pyx's
    soft_nms_39 walk (see _discard for the walk), given which rows fall
    below threshold. There a discard at pos SWAPS these columns of rows pos
    and N-1 (columns 0-4 are overwritten), so they are a permutation of the
    rows' own: positions below the final count L hold the row whose box is
    there (kept rows travel whole); position m-1-k, past L, holds the k-th
    row discarded. The walk discards, in order: each hole h_k (a discarded
    row below L, ascending), followed by the discarded rows at or above L
    that the descending scan from the end passes before it reaches the k-th
    surviving row at or above L; then, once the holes are filled, row L
    and the discarded rows above it that are left, descending.
    tests/core/test_pose.py checks this against a per-row transcription."""
    m = len(rest)
    kept = m - int(dead.sum())
    holes = np.flatnonzero(dead[:kept])
    back = kept + np.arange(m - kept)
    alive_back = back[~dead[kept:]]
    dead_back = back[dead[kept:]]
    # surviving rows at or above L that lie above each discarded one: the
    # hole after which the descending scan discards it (len(holes): the tail)
    above = alive_back.size - np.searchsorted(alive_back, dead_back, side="right")
    group = np.concatenate([np.arange(holes.size), above])
    second = np.concatenate([np.zeros(holes.size, np.int64), np.where(dead_back == kept, 0, 1)])
    row = np.concatenate([holes, dead_back])
    order = np.lexsort((-row, second, group))
    discarded = row[order]
    extra = rest[:, 5:].copy()
    rest[holes, 5:] = extra[alive_back[::-1]]
    rest[m - 1 - np.arange(discarded.size), 5:] = extra[discarded]


def merge_detections(per_scale, max_per_image=MAX_PER_IMAGE, run_soft_nms=None):
    """per_scale: list, in scale order, of {class_index: float32 (n, 5) rows} (rows already divided by
    their scale; class_index 0..C-1; a class may be missing or have 0 rows).
    Upstream's ctdet merge_outputs: per class concatenate the scales' rows (float32), soft-NMS each class
    in place when run_soft_nms (default: len(per_scale) > 1), then over all classes keep rows whose score
    >= the max_per_image-th highest score of the image (ties kept; with <= max_per_image rows keep all).
    Returns {class_index: float32 (m, 5)} for every class index present in any scale.

    The inputs are not modified. Soft-NMS keeps all rows of a class, stale
    ones included (see soft_nms), as upstream's merge does."""
    if max_per_image < 1:
        raise ValueError(f"max_per_image must be at least 1, got {max_per_image}")
    if run_soft_nms is None:
        run_soft_nms = len(per_scale) > 1
    classes = sorted(set().union(*(d.keys() for d in per_scale)))
    results = {}
    for j in classes:
        parts = [np.asarray(d[j], dtype=np.float32).reshape(-1, 5) for d in per_scale if j in d]
        rows = np.concatenate(parts, axis=0)  # a new array: the inputs stay as they are
        if run_soft_nms:
            soft_nms(rows)
        results[j] = rows
    scores = np.concatenate([results[j][:, 4] for j in classes]) if classes else np.empty(0, np.float32)
    if len(scores) > max_per_image:
        kth = len(scores) - max_per_image
        thresh = np.partition(scores, kth)[kth]  # the max_per_image-th highest score
        results = {j: rows[rows[:, 4] >= thresh] for j, rows in results.items()}
    return results


def detections_by_class(scores, classes, boxes, num_classes, scale=1):
    """The decoder's detections of one image -> {class_index: float32 (n, 5)
    [x1, y1, x2, y2, score] rows}, rows in the decoder's (score-descending)
    order, one entry for every class 0..num_classes-1 (empty ones too), as
    upstream's ctdet_post_process groups them.

    scores (K,), classes (K,) (0..num_classes-1), boxes (K, 4) in image
    pixels (float64 from the inverse affine is fine). As upstream, boxes are
    rounded to float32 first and then divided by `scale` in float32
    (float32 / float32(scale)), so pass the test scale here rather than
    dividing the float64 boxes beforehand."""
    scores, classes, boxes = np.asarray(scores), np.asarray(classes), np.asarray(boxes)
    k = len(scores)
    if scores.shape != (k,) or classes.shape != (k,) or boxes.shape != (k, 4):
        raise ValueError(f"expected scores (K,), classes (K,), boxes (K, 4); got "
                         f"{scores.shape}, {classes.shape}, {boxes.shape}")
    if k and ((classes < 0).any() or (classes >= num_classes).any() or (classes != np.round(classes)).any()):
        raise ValueError(f"class indices must be integers in 0..{num_classes - 1}")
    rows = np.empty((k, 5), np.float32)
    rows[:, :4] = boxes
    rows[:, 4] = scores
    if scale != 1:
        rows[:, :4] /= np.float32(scale)
    return {j: rows[classes == j] for j in range(num_classes)}
