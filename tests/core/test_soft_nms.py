"""soft_nms, merge_detections and detections_by_class against a per-row
transcription of upstream's nms.pyx and plain statements of upstream's
ctdet merge_outputs / post_process, and against hand-worked cases.

Tolerance everywhere: none. Results are compared with np.array_equal on
float32 arrays (bit-identical rows, in the same order, stale rows included).
"""
from collections import Counter

import numpy as np
import pytest

from centernet.core.soft_nms import detections_by_class, merge_detections, soft_nms

F32 = np.float32
ONE = F32(1)            # nms.pyx adds the C int 1 to C floats: a float32 operation
W_IDENTICAL = F32(np.exp(-2.0))  # gaussian weight of two identical boxes (IoU 1, sigma 0.5)


def _fmax(a, b):  # nms.pyx's inline max / min on np.float32_t
    return a if a >= b else b


def _fmin(a, b):
    return a if a <= b else b


def plain_soft_nms(boxes, sigma=0.5, threshold=0.001, events=None):
    """soft_nms(boxes, method=2) of upstream's src/lib/external/nms.pyx, row by
    row. Every `cdef float` there is a np.float32 scalar here (boxes is a
    float32 array, so boxes[r, c] is one); float(...) and np.exp(...) are
    double, assigned back to float as Cython does. `events` counts which
    branches ran (to show the random cases reach them)."""
    events = Counter() if events is None else events
    sigma, threshold = F32(sigma), F32(threshold)  # `float sigma`, `float threshold`
    N = boxes.shape[0]
    for i in range(N):
        maxscore = boxes[i, 4]
        maxpos = i
        tx1, ty1, tx2, ty2, ts = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3], boxes[i, 4]
        pos = i + 1
        while pos < N:
            if maxscore < boxes[pos, 4]:
                maxscore = boxes[pos, 4]
                maxpos = pos
            pos = pos + 1
        for c in range(5):
            boxes[i, c] = boxes[maxpos, c]
        boxes[maxpos, 0], boxes[maxpos, 1], boxes[maxpos, 2], boxes[maxpos, 3], boxes[maxpos, 4] = tx1, ty1, tx2, ty2, ts
        tx1, ty1, tx2, ty2, ts = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3], boxes[i, 4]
        pos = i + 1
        discarded_at = -1  # bookkeeping for `events` only
        while pos < N:
            moved_here = discarded_at == pos  # the row at pos was copied down from N-1
            x1, y1, x2, y2 = boxes[pos, 0], boxes[pos, 1], boxes[pos, 2], boxes[pos, 3]
            area = F32((x2 - x1 + ONE) * (y2 - y1 + ONE))
            iw = F32(_fmin(tx2, x2) - _fmax(tx1, x1) + ONE)
            if iw > 0:
                ih = F32(_fmin(ty2, y2) - _fmax(ty1, y1) + ONE)
                if ih > 0:
                    ua = F32(float((tx2 - tx1 + ONE) * (ty2 - ty1 + ONE) + area - iw * ih))
                    ov = F32(iw * ih / ua)
                    weight = F32(np.exp(float(-(ov * ov) / sigma)))
                    boxes[pos, 4] = weight * boxes[pos, 4]
                    events["rescored"] += 1
                    if boxes[pos, 4] < threshold:
                        if pos < N - 1:
                            events["overwritten"] += 1
                        else:
                            events["self (moved row)" if moved_here else "self (own row)"] += 1
                        for c in range(5):
                            boxes[pos, c] = boxes[N - 1, c]
                        N = N - 1
                        discarded_at = pos
                        pos = pos - 1
            pos = pos + 1
    return N


def plain_merge(per_scale, max_per_image=100, run_soft_nms=None):
    """ctdet.py merge_outputs, with plain_soft_nms and a sort for the threshold."""
    if run_soft_nms is None:
        run_soft_nms = len(per_scale) > 1
    classes = sorted({j for d in per_scale for j in d})
    results = {}
    for j in classes:
        results[j] = np.concatenate([d[j] for d in per_scale if j in d], axis=0).astype(np.float32)
        if run_soft_nms:
            plain_soft_nms(results[j])
    scores = sorted((float(s) for j in classes for s in results[j][:, 4]), reverse=True)
    if len(scores) > max_per_image:
        thresh = F32(scores[max_per_image - 1])
        results = {j: r[r[:, 4] >= thresh] for j, r in results.items()}
    return results


# ---------------------------------------------------------------- random cases

def random_rows(rng, n):
    """n rows mixing what reaches every branch: clusters of overlapping boxes
    (some exact duplicates), far-apart boxes, tiny and degenerate (x2 < x1)
    boxes, repeated scores (first-on-ties) and scores low enough that one or
    two identical-box rescorings take them under the threshold."""
    if n == 0:
        return np.zeros((0, 5), np.float32)
    centres = rng.uniform(0, 400, size=(max(1, n // rng.integers(3, 12)), 2))
    pick = centres[rng.integers(0, len(centres), n)]
    size = rng.choice([rng.uniform(0.1, 2), rng.uniform(5, 60), rng.uniform(20, 200)], size=(n, 2))
    jitter = rng.normal(0, rng.choice([0.0, 0.5, 4.0]), size=(n, 2))
    x1y1 = pick + jitter - size / 2
    x2y2 = pick + jitter + size / 2
    degenerate = rng.random(n) < 0.05
    x1y1[degenerate], x2y2[degenerate] = x2y2[degenerate].copy(), x1y1[degenerate].copy()
    kind = rng.integers(0, 4, n)
    scores = np.where(kind == 0, rng.uniform(0, 1, n),
                      np.where(kind == 1, 10 ** rng.uniform(-5, -1.5, n),
                               np.where(kind == 2, rng.choice([0.3, 0.05, 0.001, 0.0073], n),
                                        rng.uniform(0.0005, 0.02, n))))
    if rng.random() < 0.25:  # a faint image: most rows end up under the threshold
        scores *= 0.02
    rows = np.concatenate([x1y1, x2y2, scores[:, None]], axis=1).astype(np.float32)
    dup = rng.random(n) < 0.15  # exact duplicates of an earlier row's box (and sometimes score)
    for r in np.flatnonzero(dup):
        src = rng.integers(0, n)
        rows[r, :4] = rows[src, :4]
        if rng.random() < 0.5:
            rows[r, 4] = rows[src, 4]
    return rows


def test_random_cases_equal_the_per_row_transcription():
    rng = np.random.default_rng(10)
    events = Counter()
    sizes = [0, 1, 2, 3] + list(rng.integers(2, 40, 150)) + list(rng.integers(40, 120, 12)) + [250, 300]
    for case, n in enumerate(sizes):
        rows = random_rows(rng, int(n))
        expected = rows.copy()
        n_plain = plain_soft_nms(expected, events=events)
        got = rows.copy()
        n_got = soft_nms(got)
        assert n_got == n_plain, case
        assert got.dtype == np.float32 and np.array_equal(got, expected), case
    # every branch of the discard path ran, many times
    for key in ("rescored", "overwritten", "self (own row)", "self (moved row)"):
        assert events[key] >= 20, events


@pytest.mark.parametrize("sigma,threshold", [(0.3, 0.01), (1.0, 0.0005), (0.5, 0.05)])
def test_other_parameters_equal_the_transcription(sigma, threshold):
    rng = np.random.default_rng(int(sigma * 100))
    for n in [5, 17, 60]:
        rows = random_rows(rng, n)
        expected = rows.copy()
        n_plain = plain_soft_nms(expected, sigma, threshold)
        got = rows.copy()
        assert soft_nms(got, sigma, threshold) == n_plain
        assert np.array_equal(got, expected)


def test_works_in_place_on_a_strided_view():
    rng = np.random.default_rng(3)
    rows = random_rows(rng, 40)
    expected = rows.copy()
    plain_soft_nms(expected)
    storage = np.zeros((5, 80), np.float32)
    storage[:, ::2] = rows.T
    view = storage[:, ::2].T  # same values, neither C- nor F-contiguous
    soft_nms(view)
    assert np.array_equal(view, expected)


# ---------------------------------------------------------------- hand cases

A = [0, 0, 9, 9]          # 10x10 pixels in the +1 convention
B = [100, 100, 109, 109]  # far from A


def test_hand_case_discard_leaves_stale_rows():
    rows = np.array([A + [0.9], A + [0.005], B + [0.5], A + [0.0001], A + [0.3]], np.float32)
    # i=0 (row 0 is the max): every A row is rescored by W = exp(-2) (IoU 1).
    #   pos 1: 0.005*W < 0.001 -> row 4 (A, 0.3, not yet rescored) is copied over it, N=4;
    #          pos 1 again: 0.3*W kept.
    #   pos 2: B does not overlap, unchanged.
    #   pos 3: 0.0001*W < 0.001 and pos = N-1: it is "copied over itself", N=3.
    #   Rows 3 and 4 are now past N: row 3 keeps its rescored value, row 4 the
    #   unrescored copy of the row that moved to pos 1.
    # i=1: B (0.5) is the max of rows 1..2 and swaps with row 1; no overlap.
    # i=2: nothing left to rescore; i=3 >= N ends.
    expected = np.array([A + [0.9], B + [0.5], A + [0], A + [0], A + [0.3]], np.float32)
    expected[2, 4] = F32(0.3) * W_IDENTICAL
    expected[3, 4] = F32(0.0001) * W_IDENTICAL
    got = rows.copy()
    assert soft_nms(got) == 3
    assert np.array_equal(got, expected)
    plain = rows.copy()
    assert plain_soft_nms(plain) == 3 and np.array_equal(plain, expected)


def test_hand_case_last_row_discards_itself_after_moving_down():
    rows = np.array([A + [0.9], A + [0.005], A + [0.0002]], np.float32)
    # pos 1: 0.005*W < 0.001 -> row 2 copied over it, N=2; pos 1 again:
    # 0.0002*W < 0.001 and pos = N-1: discarded in place, N=1. The original
    # row 1 is gone; row 2 appears twice, rescored at 1 and unrescored at 2.
    expected = np.array([A + [0.9], A + [0], A + [0.0002]], np.float32)
    expected[1, 4] = F32(0.0002) * W_IDENTICAL
    got = rows.copy()
    assert soft_nms(got) == 1
    assert np.array_equal(got, expected)


def test_hand_case_partial_overlap_and_plus_one_convention():
    C = [5, 0, 14, 9]    # overlaps A by 5x10 of 10x10: IoU 50 / 150
    D = [10, 0, 19, 9]   # touches A: iw = 9 - 10 + 1 = 0, not rescored
    E = [9, 0, 18, 9]    # one shared pixel column: IoU 10 / 190
    rows = np.array([A + [0.9], C + [0.8], D + [0.7], E + [0.6]], np.float32)
    got = rows.copy()
    assert soft_nms(got) == 4
    # i=0: A rescores C (IoU 50/150) and E (10/190), not D.
    # i=1: D (0.7) is now the max and swaps with C; it rescores C (50/150) and E (90/110).
    # i=2: C rescores E (60/140).
    w = lambda inter, union: F32(np.exp(float(-(F32(inter / union) ** 2) / F32(0.5))))  # noqa: E731
    assert np.array_equal(got[:, :4], np.array([A, D, C, E], np.float32))
    assert got[0, 4] == F32(0.9) and got[1, 4] == F32(0.7)
    assert got[2, 4] == (F32(0.8) * w(50, 150)) * w(50, 150)
    assert got[3, 4] == ((F32(0.6) * w(10, 190)) * w(90, 110)) * w(60, 140)


def test_hand_case_ties_and_low_scores_without_overlap():
    # Equal scores: the first stays first (strict '<' scan). A row already below
    # the threshold is only discarded when something overlaps it.
    rows = np.array([B + [0.0005], A + [0.4], [50, 50, 59, 59, 0.4], A + [0.0002]], np.float32)
    got = rows.copy()
    # i=0: max 0.4 first at row 1 (A) -> swap with row 0; row 3 (A) falls to 0.0002*W and
    # discards itself; B (0.0005 < 0.001, no overlap) stays. i=1: max 0.4 at row 2 -> swap.
    assert soft_nms(got) == 3
    expected = np.array([A + [0.4], [50, 50, 59, 59, 0.4], B + [0.0005], A + [0]], np.float32)
    expected[3, 4] = F32(0.0002) * W_IDENTICAL
    assert np.array_equal(got, expected)


def test_empty_and_single_row():
    empty = np.zeros((0, 5), np.float32)
    assert soft_nms(empty) == 0
    one = np.array([A + [0.00001]], np.float32)
    assert soft_nms(one) == 1 and np.array_equal(one, np.array([A + [0.00001]], np.float32))


def test_bad_rows_are_refused():
    with pytest.raises(ValueError, match="float32"):
        soft_nms(np.zeros((3, 5), np.float64))
    with pytest.raises(ValueError, match="float32"):
        soft_nms(np.zeros((3, 6), np.float32))
    bad = np.zeros((3, 5), np.float32)
    bad[1, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        soft_nms(bad)


# ---------------------------------------------------------------- merge_detections

def _scale_dicts(rng, num_scales, num_classes, per_scale_rows):
    out = []
    for _ in range(num_scales):
        classes = rng.integers(0, num_classes, per_scale_rows)
        rows = random_rows(rng, per_scale_rows)
        d = {int(j): rows[classes == j] for j in np.unique(classes)}
        if rng.random() < 0.5:
            d[num_classes] = np.zeros((0, 5), np.float32)  # a class with 0 rows
        out.append(d)
    return out


def test_merge_random_images_equal_the_plain_statement():
    rng = np.random.default_rng(11)
    for case in range(12):
        per_scale = _scale_dicts(rng, int(rng.integers(1, 6)), int(rng.integers(1, 8)), int(rng.integers(10, 100)))
        before = [{j: r.copy() for j, r in d.items()} for d in per_scale]
        got = merge_detections(per_scale)
        expected = plain_merge(before)
        assert got.keys() == expected.keys(), case
        for j in expected:
            assert got[j].dtype == np.float32 and np.array_equal(got[j], expected[j]), (case, j)
        for d, b in zip(per_scale, before):  # inputs untouched
            assert all(np.array_equal(d[j], b[j]) for j in b)


def test_merge_keeps_ties_at_the_100th_score():
    scores = np.concatenate([np.linspace(0.9, 0.5, 97), [0.3] * 6, np.linspace(0.2, 0.1, 10)]).astype(np.float32)
    boxes = np.arange(len(scores) * 4, dtype=np.float32).reshape(-1, 4) * 20
    rows = np.concatenate([boxes, scores[:, None]], axis=1)
    per_scale = [{0: rows[::2], 3: rows[1::2]}]
    got = merge_detections(per_scale)  # one scale: no soft-NMS
    kept = np.concatenate([got[0][:, 4], got[3][:, 4]])
    assert len(kept) == 103 and (kept >= F32(0.3)).all()  # 97 + all six 0.3 ties
    assert np.array_equal(got[0], rows[::2][rows[::2, 4] >= F32(0.3)])


def test_merge_keeps_everything_up_to_max_per_image():
    rng = np.random.default_rng(5)
    rows = random_rows(rng, 60)
    per_scale = [{1: rows[:30]}, {1: rows[30:50], 2: rows[50:]}]
    got = merge_detections(per_scale)  # 100 rows: soft-NMS (every class: two scales), then all kept
    expected = {1: rows[:50].copy(), 2: rows[50:].copy()}
    plain_soft_nms(expected[1])
    plain_soft_nms(expected[2])
    assert np.array_equal(got[1], expected[1]) and np.array_equal(got[2], expected[2])
    assert len(got[1]) == 50  # stale rows are kept too
    fewer = merge_detections(per_scale, max_per_image=99)
    assert sum(len(r) for r in fewer.values()) < 100


def test_merge_single_scale_leaves_rows_as_they_are():
    rng = np.random.default_rng(6)
    rows = random_rows(rng, 50)
    got = merge_detections([{7: rows}])
    assert np.array_equal(got[7], rows) and got[7] is not rows


def test_merge_concatenates_in_scale_order():
    s0 = np.array([A + [0.6], B + [0.2]], np.float32)
    s1 = np.array([[1, 0, 10, 9, 0.6], B + [0.0001]], np.float32)
    got = merge_detections([{0: s0}, {0: s1}], run_soft_nms=False)
    assert np.array_equal(got[0], np.concatenate([s0, s1]))
    # With soft-NMS the order decides which of the two 0.6 boxes comes first
    # (and keeps its score), so it must be the scale order.
    got = merge_detections([{0: s0}, {0: s1}])
    expected = np.concatenate([s0, s1])
    plain_soft_nms(expected)
    assert np.array_equal(got[0], expected)
    reverse = np.concatenate([s1, s0])
    plain_soft_nms(reverse)
    assert not np.array_equal(got[0], reverse)


def test_merge_classes_missing_in_some_scales():
    got = merge_detections([{0: np.zeros((0, 5), np.float32)}, {2: np.array([A + [0.5]], np.float32)}])
    assert sorted(got) == [0, 2] and got[0].shape == (0, 5) and got[0].dtype == np.float32
    assert merge_detections([{}, {}]) == {}


# ---------------------------------------------------------------- detections_by_class

def upstream_post_process(scores, classes, boxes, num_classes, scale):
    """ctdet_post_process + CtdetDetector.post_process after the affine: the
    boxes land in a float32 (1, K, 6) array, each class's rows go through
    .tolist() and back to float32, then are divided by the scale in place."""
    dets = np.zeros((1, len(scores), 6), np.float32)
    dets[0, :, :4] = boxes
    dets[0, :, 4] = scores
    dets[0, :, 5] = classes
    out = {}
    for j in range(num_classes):
        inds = dets[0, :, -1] == j
        rows = np.concatenate([dets[0, inds, :4].astype(np.float32), dets[0, inds, 4:5].astype(np.float32)], axis=1)
        out[j] = np.array(rows.tolist(), dtype=np.float32).reshape(-1, 5)
        out[j][:, :4] /= scale
    return out


@pytest.mark.parametrize("scale", [1, 0.5, 0.75, 1.25, 1.5])
def test_detections_by_class_matches_upstream_grouping(scale):
    rng = np.random.default_rng(7)
    K, C = 100, 6
    scores = np.sort(rng.random(K).astype(np.float32))[::-1]
    classes = rng.integers(0, C - 1, K)  # class C-1 never occurs
    boxes = rng.uniform(-5, 700, (K, 4))  # float64, as the inverse affine gives
    got = detections_by_class(scores, classes, boxes, C, scale=scale)
    expected = upstream_post_process(scores, classes, boxes, C, scale)
    assert sorted(got) == list(range(C)) and got[C - 1].shape == (0, 5)
    for j in range(C):
        assert got[j].dtype == np.float32 and np.array_equal(got[j], expected[j]), j


def test_detections_by_class_refuses_bad_classes():
    with pytest.raises(ValueError, match="class indices"):
        detections_by_class(np.ones(2, np.float32), np.array([0, 5]), np.zeros((2, 4)), 5)
    with pytest.raises(ValueError, match="expected"):
        detections_by_class(np.ones(2, np.float32), np.array([0, 1]), np.zeros((2, 3)), 5)
