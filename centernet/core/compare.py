"""How far two runs of the network are apart: output differences and detection agreement.

Used to hold a backend or a precision against a reference run (fp32 on CPU,
say) on the same inputs:
- output_differences: per output, the largest absolute difference and that
  as a fraction of the reference output's largest magnitude;
- detection_agreement: the share of the reference's top-K detections (K = 100,
  as the evaluation decodes) that the other run recovers: a detection of the
  same class whose box overlaps it with IoU >= 0.9, each matched at most once.
"""
import numpy as np

from centernet.core.decode import decode_ctdet

OUTPUT_NAMES = ("hm", "wh", "reg")
MATCH_IOU = 0.9


def difference(got, ref):
    """(max |got - ref|, max |ref|, their ratio): the one parity metric of
    the export self-check, the DCN kernel choice and the benchmarks. A
    non-finite value makes the difference infinite."""
    g, r = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if g.shape != r.shape:
        raise ValueError(f"shape {g.shape} vs reference {r.shape}")
    diff = float(np.abs(g - r).max()) if g.size else 0.0
    if not np.isfinite(diff):
        diff = float("inf")
    scale = float(np.abs(r).max()) if r.size else 0.0
    return diff, scale, diff / scale if scale > 0 else diff


def output_differences(got, ref, names=OUTPUT_NAMES):
    """[{output, max_abs_diff, max_abs_ref, rel}] for each pair of outputs."""
    rows = []
    for name, g, r in zip(names, got, ref):
        try:
            diff, scale, rel = difference(g, r)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        rows.append({"output": name, "max_abs_diff": diff, "max_abs_ref": scale, "rel": rel})
    return rows


def box_iou(a, b):
    """IoU of every box of a (M, 4) with every box of b (N, 4) -> (M, N). A
    box is the rectangle between its two corners (x1, y1), (x2, y2) in either
    order: a network's width or height may come out negative. Two identical
    boxes have IoU 1 even when their area is 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)

    def spans(boxes):
        return (np.minimum(boxes[:, 0], boxes[:, 2]), np.minimum(boxes[:, 1], boxes[:, 3]),
                np.maximum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 1], boxes[:, 3]))
    ax1, ay1, ax2, ay2 = spans(a)
    bx1, by1, bx2, by2 = spans(b)
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(ax1[:, None], bx1[None]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(ay1[:, None], by1[None]), 0, None)
    inter = iw * ih
    union = ((ax2 - ax1) * (ay2 - ay1))[:, None] + ((bx2 - bx1) * (by2 - by1))[None] - inter
    same = np.all(a[:, None, :] == b[None, :, :], axis=-1)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), same.astype(np.float64))


def recovered(ref_classes, ref_boxes, classes, boxes, iou=MATCH_IOU):
    """How many reference detections (in order, best first) find an unmatched
    detection of the same class with box IoU >= iou; each takes its best match."""
    overlaps = box_iou(ref_boxes, boxes)
    same = np.asarray(ref_classes)[:, None] == np.asarray(classes)[None, :]
    overlaps = np.where(same & (overlaps >= iou), overlaps, -1.0)
    taken = np.zeros(len(classes), bool)
    count = 0
    for row in overlaps:
        row = np.where(taken, -1.0, row)
        j = int(row.argmax()) if len(row) else 0
        if len(row) and row[j] >= 0:
            taken[j] = True
            count += 1
    return count


def detection_agreement(got, ref, K=100, iou=MATCH_IOU):
    """Share of the reference's top-K detections recovered by `got` (raw
    [hm, wh, reg] outputs of the same batch), over all images, and per image."""
    ref_scores, ref_classes, ref_boxes = decode_ctdet(*ref, K=K)
    scores, classes, boxes = decode_ctdet(*got, K=K)
    per_image = [recovered(ref_classes[i], ref_boxes[i], classes[i], boxes[i], iou) / K
                 for i in range(len(ref_scores))]
    return {"share": float(np.mean(per_image)), "per_image": per_image, "K": K, "iou": iou}
