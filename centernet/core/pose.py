"""multi_pose (human pose) decoding, in numpy (upstream: src/lib/models/decode.py
multi_pose_decode, src/lib/models/utils.py flip_lr / flip_lr_off,
src/lib/detectors/multi_pose.py, src/lib/utils/post_process.py
multi_pose_post_process, src/lib/external/nms.pyx soft_nms_39,
src/lib/datasets/dataset/coco_hp.py convert_eval_format).

The heads are hm (1), wh (2), hps (2 x 17 joint offsets from the centre, x
first), reg (2), hm_hp (17 joint heatmaps) and hp_offset (2). A detection is
a ctdet person box plus 17 joints: each regressed from the centre, then
snapped to the nearest confident joint-heatmap peak when that peak lies in
the box and near enough. float32 wherever upstream's torch is float32.
"""
from typing import NamedTuple

import numpy as np

from centernet.constants import FLIP_IDX, K as DEFAULT_K, NUM_JOINTS, POSE_THRESH
from centernet.core.decode import _round2, as_heat, boxes_at, map_boxes_to_image, sigmoid, top_k_peaks
from centernet.core.modes import combine_flip
from centernet.core.soft_nms import SIGMA, THRESHOLD, _check_rows, gaussian_soft_nms

ROW_WIDTH = 5 + 2 * NUM_JOINTS  # [x1, y1, x2, y2, score, x0, y0, ..., x16, y16]
FAR = np.float32(0.3)          # a peak farther than this x the box's longer side is not snapped to
NO_PEAK = np.float32(-10000)   # where upstream moves the joint peaks scoring <= POSE_THRESH


def mirror_joint_order(num_joints=NUM_JOINTS):
    """The joint permutation of a mirror: joint j of a mirrored image is joint
    order[j] of the original (FLIP_IDX's pairs swapped)."""
    perm = np.arange(num_joints)
    for a, b in FLIP_IDX:
        perm[a], perm[b] = b, a
    return perm


def flip_lr(x):
    """(B, J, H, W) joint heatmaps of a mirrored image -> those of the image:
    mirror along the width, then swap the left/right joint channels."""
    x = np.asarray(x)
    return np.ascontiguousarray(x[:, mirror_joint_order(x.shape[1])][..., ::-1])


def flip_lr_off(x):
    """(B, 2J, H, W) joint offsets (x, y per joint) of a mirrored image ->
    those of the image: mirror along the width, negate the x offsets, swap
    the left/right joints (both channels of each)."""
    x = np.asarray(x)
    b, c, h, w = x.shape
    out = x.reshape(b, c // 2, 2, h, w)[:, mirror_joint_order(c // 2)][..., ::-1].copy()
    np.negative(out[:, :, 0], out=out[:, :, 0])
    return out.reshape(b, c, h, w)


def combine_flip_pose(hm, wh, hps, reg, hm_hp, hp_offset):
    """Outputs of a flip_batch run (2N images: the N, then their mirrors) ->
    (heat, wh, hps, reg, hm_hp_heat, hp_offset) of the N images, as upstream's
    MultiPoseDetector.process with the flip test: sigmoid on hm and hm_hp;
    hm and wh averaged with the mirrored pass; hps averaged with
    flip_lr_off of it, hm_hp with flip_lr of it; reg and hp_offset of the
    unflipped pass. float32. Decode with decode_multi_pose(..., hm_is_heat=True)."""
    heat, wh, reg = combine_flip(hm, wh, np.asarray(reg, np.float32))
    n = len(heat)
    hps = np.asarray(hps, np.float32)
    hps = (hps[:n] + flip_lr_off(hps[n:])) / np.float32(2)
    joint_heat = sigmoid(hm_hp)
    joint_heat = (joint_heat[:n] + flip_lr(joint_heat[n:])) / np.float32(2)
    hp_offset = np.ascontiguousarray(np.asarray(hp_offset, np.float32)[:n])
    return heat, wh, hps, reg, joint_heat, hp_offset


class PoseDetections(NamedTuple):
    """decode_multi_pose's result, on the output map, best score first."""
    scores: np.ndarray  # (B, K) float32
    boxes: np.ndarray   # (B, K, 4) float32 x1, y1, x2, y2
    joints: np.ndarray  # (B, K, J, 2) float32 x, y


def decode_multi_pose(hm, wh, hps, reg, hm_hp, hp_offset, K=DEFAULT_K, hm_is_heat=False):
    """Upstream's multi_pose_decode over a batch: hm (B,1,H,W), wh and reg
    (B,2,H,W), hps (B,2J,H,W), hm_hp (B,J,H,W), hp_offset (B,2,H,W).
    hm_is_heat: hm and hm_hp are already heatmaps (combine_flip_pose's), so
    no sigmoid is applied to either.

    Centres, scores and boxes as decode_ctdet (same peak test, top K and tie
    rules). Joints: hps at the centre plus the integer centre (before reg).
    Then per joint the top K peaks of hm_hp (3x3 peak test) at their pixel
    plus hp_offset; peaks scoring <= POSE_THRESH are moved to (-10000,
    -10000) with score -1. Each detection's joint goes to its nearest peak
    (float32 Euclidean distance, first peak on ties) unless that peak lies
    outside the box, scores < POSE_THRESH, or is farther than 0.3 x the
    box's longer side; then the regressed joint stays.
    """
    hm = np.asarray(hm, np.float32)
    wh, reg = np.asarray(wh, np.float32), np.asarray(reg, np.float32)
    hps, hm_hp = np.asarray(hps, np.float32), np.asarray(hm_hp, np.float32)
    hp_offset = np.asarray(hp_offset, np.float32)
    b, c, h, w = hm.shape
    j = hm_hp.shape[1] if hm_hp.ndim == 4 else -1
    expected = {"hm": (b, 1, h, w), "wh": (b, 2, h, w), "hps": (b, 2 * j, h, w), "reg": (b, 2, h, w),
                "hm_hp": (b, j, h, w), "hp_offset": (b, 2, h, w)}
    for name, arr in zip(expected, (hm, wh, hps, reg, hm_hp, hp_offset)):
        if arr.shape != expected[name] or j < 1:
            raise ValueError(f"{name} is {arr.shape}, want {expected[name]} (hm {hm.shape}, hm_hp {hm_hp.shape})")
    if not 0 < K <= h * w:
        raise ValueError(f"K={K} must be between 1 and H*W={h * w}")
    act = as_heat if hm_is_heat else sigmoid
    batch = np.arange(b)[:, None]

    pix, scores = top_k_peaks(hm, K, act)  # one class: flat indices are pixels
    boxes = boxes_at(wh, reg, pix)
    ys, xs = np.divmod(pix, w)
    regressed = hps.reshape(b, j, 2, h * w)[batch, :, :, pix]  # (B, K, J, 2)
    regressed[..., 0] += xs.astype(np.float32)[..., None]
    regressed[..., 1] += ys.astype(np.float32)[..., None]

    # Per joint channel the top K peaks (upstream's _topk_channel).
    peak_pix, peak_score = top_k_peaks(hm_hp.reshape(b * j, 1, h, w), K, act)
    peak_pix, peak_score = peak_pix.reshape(b, j, K), peak_score.reshape(b, j, K)
    py, px = np.divmod(peak_pix, w)
    off = hp_offset.reshape(b, 2, h * w)
    peak_x = px.astype(np.float32) + off[batch[..., None], 0, peak_pix]
    peak_y = py.astype(np.float32) + off[batch[..., None], 1, peak_pix]
    weak = ~(peak_score > np.float32(POSE_THRESH))
    peak_score[weak] = -1
    peak_x[weak] = NO_PEAK
    peak_y[weak] = NO_PEAK

    # Nearest peak of each (detection, joint): (B, J, K detections, K peaks).
    reg_x = regressed[..., 0].transpose(0, 2, 1)[..., None]
    reg_y = regressed[..., 1].transpose(0, 2, 1)[..., None]
    dx = reg_x - peak_x[:, :, None, :]
    dy = reg_y - peak_y[:, :, None, :]
    dist = np.sqrt(dx * dx + dy * dy)
    nearest = np.argmin(dist, axis=-1)[..., None]  # first on ties
    min_dist = np.take_along_axis(dist, nearest, -1)[..., 0]
    near_x = np.take_along_axis(np.broadcast_to(peak_x[:, :, None, :], dist.shape), nearest, -1)[..., 0]
    near_y = np.take_along_axis(np.broadcast_to(peak_y[:, :, None, :], dist.shape), nearest, -1)[..., 0]
    near_score = np.take_along_axis(peak_score, nearest[..., 0], -1)

    x1, y1, x2, y2 = (boxes[:, None, :, i] for i in range(4))  # (B, 1, K)
    keep_regressed = ((near_x < x1) | (near_x > x2) | (near_y < y1) | (near_y > y2)
                      | (near_score < np.float32(POSE_THRESH))
                      | (min_dist > np.maximum(y2 - y1, x2 - x1) * FAR))
    joints = np.stack([np.where(keep_regressed, reg_x[..., 0], near_x),
                       np.where(keep_regressed, reg_y[..., 0], near_y)], axis=-1)  # (B, J, K, 2)
    return PoseDetections(scores, boxes, np.ascontiguousarray(joints.transpose(0, 2, 1, 3)))


def map_joints_to_image(joints, center, scale, out_size):
    """Joints (..., 2) on the output map -> image pixels (float64), through
    the inverse affine of the test transform (as map_boxes_to_image);
    out_size = (out_w, out_h)."""
    joints = np.asarray(joints)
    if joints.shape[-1] != 2:
        raise ValueError(f"joints must end in (x, y), got shape {joints.shape}")
    return map_boxes_to_image(joints, center, scale, out_size)


def pose_rows(scores, boxes, joints):
    """One image's detections, boxes and joints already on the image ->
    (N, 39) float32 rows [x1, y1, x2, y2, score, x0, y0, ..., x16, y16], each
    value rounded to float32 once, as upstream's multi_pose_post_process."""
    scores, boxes, joints = np.asarray(scores), np.asarray(boxes), np.asarray(joints)
    n = len(scores)
    if scores.shape != (n,) or boxes.shape != (n, 4) or joints.size != n * 2 * NUM_JOINTS:
        raise ValueError(f"expected scores (N,), boxes (N, 4), joints (N, {NUM_JOINTS}, 2); got "
                         f"{scores.shape}, {boxes.shape}, {joints.shape}")
    rows = np.empty((n, ROW_WIDTH), np.float32)
    rows[:, :4] = boxes
    rows[:, 4] = scores
    rows[:, 5:] = joints.reshape(n, 2 * NUM_JOINTS)
    return rows


def soft_nms_39(rows, sigma=SIGMA, threshold=THRESHOLD):
    """Upstream's soft_nms_39 (method 2, gaussian; Nt unused) in place on a
    float32 (N, 39) array of pose rows, which it returns: core.soft_nms's
    rescoring and discards on columns 0-4, and nms.pyx's quirk on the
    joints: a discarded row's columns 0-4 are overwritten by row N-1's, its
    columns 5-38 SWAPPED with row N-1's. All N rows are returned, the stale
    ones past the kept count included, as upstream ignores that count."""
    _check_rows(rows, width=ROW_WIDTH, what="[x1, y1, x2, y2, score, 34 joint coordinates]")
    gaussian_soft_nms(rows, sigma, threshold)
    return rows


def merge_pose(per_scale_rows, scales, run_soft_nms=None):
    """Upstream's MultiPoseDetector post_process + merge_outputs: each scale's
    (n, 39) rows divided by its scale in float32 (box columns 0-3 and joint
    columns 5-38), concatenated in scale order; soft_nms_39 when
    run_soft_nms (default: more than one scale, as upstream without --nms).
    Every row is kept (no top-100 cut). Returns (N, 39) float32; the inputs
    are not modified."""
    if len(per_scale_rows) != len(scales) or not len(scales):
        raise ValueError(f"want one block of rows per scale, got {len(per_scale_rows)} for scales {tuple(scales)}")
    parts = []
    for rows, t in zip(per_scale_rows, scales):
        rows = np.array(rows, dtype=np.float32).reshape(-1, ROW_WIDTH)
        rows[:, :4] /= np.float32(t)
        rows[:, 5:] /= np.float32(t)
        parts.append(rows)
    merged = np.concatenate(parts, axis=0)
    if len(scales) > 1 if run_soft_nms is None else run_soft_nms:
        soft_nms_39(merged)
    return merged


def pose_to_coco(image_id, rows, category_id=1, upstream_rounding=False):
    """COCO keypoint results entries of one image's (N, 39) rows:
    {"image_id", "category_id", "bbox": [x, y, w, h], "score",
    "keypoints": 51 numbers, x, y, 1 per joint}.

    upstream_rounding: as coco_hp.convert_eval_format, from which upstream's
    published AP was computed: the rows as Python floats (upstream's merge
    turns them into lists), w = x2 - x1 and h = y2 - y1 in double, then the
    bbox, the score and every keypoint number rounded to 2 decimals.
    Default: full precision (doubles of the float32 values)."""
    rows = np.asarray(rows, dtype=np.float32).reshape(-1, ROW_WIDTH).astype(np.float64)
    xywh = np.concatenate([rows[:, :2], rows[:, 2:4] - rows[:, :2]], axis=1)
    kps = np.concatenate([rows[:, 5:].reshape(-1, NUM_JOINTS, 2), np.ones((len(rows), NUM_JOINTS, 1))], axis=2)
    kps = kps.reshape(len(rows), 3 * NUM_JOINTS)
    entries = []
    for b, s, k in zip(xywh.tolist(), rows[:, 4].tolist(), kps.tolist()):
        if upstream_rounding:
            b, s, k = _round2(b), float(f"{s:.2f}"), _round2(k)
        entries.append({"image_id": int(image_id), "category_id": int(category_id), "bbox": b, "score": s,
                        "keypoints": k})
    return entries
