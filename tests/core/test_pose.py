"""centernet/core/pose.py against upstream CenterNet's multi_pose code: its
torch functions copied verbatim (decode), per-row / per-pixel loop
transcriptions of its rules written here (decode, flips, soft_nms_39,
merge), and hand-built cases (joint snapping, COCO entries).

Tolerance: none unless a test says otherwise. float32 arrays are compared
with np.testing.assert_array_equal (bit-identical, same order)."""
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn

from centernet.constants import FLIP_IDX, NUM_JOINTS
from centernet.core.decode import map_boxes_to_image
from centernet.core.pose import (combine_flip_pose, decode_multi_pose, flip_lr, flip_lr_off, map_joints_to_image,
                                 merge_pose, pose_rows, pose_to_coco, soft_nms_39)

F32 = np.float32
J = NUM_JOINTS


# ------------------------------------------------- upstream's torch code, verbatim
# src/lib/models/utils.py (_gather_feat, _transpose_and_gather_feat) and
# src/lib/models/decode.py (_nms, _topk_channel, _topk, multi_pose_decode) of
# xingyizhou/CenterNet at 2b7692c; copied unchanged apart from indentation.

def _gather_feat(feat, ind, mask=None):
    dim = feat.size(2)
    ind = ind.unsqueeze(2).expand(ind.size(0), ind.size(1), dim)
    feat = feat.gather(1, ind)
    if mask is not None:
        mask = mask.unsqueeze(2).expand_as(feat)
        feat = feat[mask]
        feat = feat.view(-1, dim)
    return feat


def _transpose_and_gather_feat(feat, ind):
    feat = feat.permute(0, 2, 3, 1).contiguous()
    feat = feat.view(feat.size(0), -1, feat.size(3))
    feat = _gather_feat(feat, ind)
    return feat


def _nms(heat, kernel=3):
    pad = (kernel - 1) // 2
    hmax = nn.functional.max_pool2d(heat, (kernel, kernel), stride=1, padding=pad)
    keep = (hmax == heat).float()
    return heat * keep


def _topk_channel(scores, K=40):
    batch, cat, height, width = scores.size()
    topk_scores, topk_inds = torch.topk(scores.view(batch, cat, -1), K)
    topk_inds = topk_inds % (height * width)
    topk_ys = (topk_inds / width).int().float()
    topk_xs = (topk_inds % width).int().float()
    return topk_scores, topk_inds, topk_ys, topk_xs


def _topk(scores, K=40):
    batch, cat, height, width = scores.size()
    topk_scores, topk_inds = torch.topk(scores.view(batch, cat, -1), K)
    topk_inds = topk_inds % (height * width)
    topk_ys = (topk_inds / width).int().float()
    topk_xs = (topk_inds % width).int().float()
    topk_score, topk_ind = torch.topk(topk_scores.view(batch, -1), K)
    topk_clses = (topk_ind / K).int()
    topk_inds = _gather_feat(topk_inds.view(batch, -1, 1), topk_ind).view(batch, K)
    topk_ys = _gather_feat(topk_ys.view(batch, -1, 1), topk_ind).view(batch, K)
    topk_xs = _gather_feat(topk_xs.view(batch, -1, 1), topk_ind).view(batch, K)
    return topk_score, topk_inds, topk_clses, topk_ys, topk_xs


def multi_pose_decode(heat, wh, kps, reg=None, hm_hp=None, hp_offset=None, K=100):
    batch, cat, height, width = heat.size()
    num_joints = kps.shape[1] // 2
    # heat = torch.sigmoid(heat)
    # perform nms on heatmaps
    heat = _nms(heat)
    scores, inds, clses, ys, xs = _topk(heat, K=K)

    kps = _transpose_and_gather_feat(kps, inds)
    kps = kps.view(batch, K, num_joints * 2)
    kps[..., ::2] += xs.view(batch, K, 1).expand(batch, K, num_joints)
    kps[..., 1::2] += ys.view(batch, K, 1).expand(batch, K, num_joints)
    if reg is not None:
        reg = _transpose_and_gather_feat(reg, inds)
        reg = reg.view(batch, K, 2)
        xs = xs.view(batch, K, 1) + reg[:, :, 0:1]
        ys = ys.view(batch, K, 1) + reg[:, :, 1:2]
    else:
        xs = xs.view(batch, K, 1) + 0.5
        ys = ys.view(batch, K, 1) + 0.5
    wh = _transpose_and_gather_feat(wh, inds)
    wh = wh.view(batch, K, 2)
    clses = clses.view(batch, K, 1).float()
    scores = scores.view(batch, K, 1)

    bboxes = torch.cat([xs - wh[..., 0:1] / 2,
                        ys - wh[..., 1:2] / 2,
                        xs + wh[..., 0:1] / 2,
                        ys + wh[..., 1:2] / 2], dim=2)
    if hm_hp is not None:
        hm_hp = _nms(hm_hp)
        thresh = 0.1
        kps = kps.view(batch, K, num_joints, 2).permute(0, 2, 1, 3).contiguous()  # b x J x K x 2
        reg_kps = kps.unsqueeze(3).expand(batch, num_joints, K, K, 2)
        hm_score, hm_inds, hm_ys, hm_xs = _topk_channel(hm_hp, K=K)  # b x J x K
        if hp_offset is not None:
            hp_offset = _transpose_and_gather_feat(hp_offset, hm_inds.view(batch, -1))
            hp_offset = hp_offset.view(batch, num_joints, K, 2)
            hm_xs = hm_xs + hp_offset[:, :, :, 0]
            hm_ys = hm_ys + hp_offset[:, :, :, 1]
        else:
            hm_xs = hm_xs + 0.5
            hm_ys = hm_ys + 0.5

        mask = (hm_score > thresh).float()
        hm_score = (1 - mask) * -1 + mask * hm_score
        hm_ys = (1 - mask) * (-10000) + mask * hm_ys
        hm_xs = (1 - mask) * (-10000) + mask * hm_xs
        hm_kps = torch.stack([hm_xs, hm_ys], dim=-1).unsqueeze(2).expand(batch, num_joints, K, K, 2)
        dist = (((reg_kps - hm_kps) ** 2).sum(dim=4) ** 0.5)
        min_dist, min_ind = dist.min(dim=3)  # b x J x K
        hm_score = hm_score.gather(2, min_ind).unsqueeze(-1)  # b x J x K x 1
        min_dist = min_dist.unsqueeze(-1)
        min_ind = min_ind.view(batch, num_joints, K, 1, 1).expand(batch, num_joints, K, 1, 2)
        hm_kps = hm_kps.gather(3, min_ind)
        hm_kps = hm_kps.view(batch, num_joints, K, 2)
        l = bboxes[:, :, 0].view(batch, 1, K, 1).expand(batch, num_joints, K, 1)  # noqa: E741
        t = bboxes[:, :, 1].view(batch, 1, K, 1).expand(batch, num_joints, K, 1)
        r = bboxes[:, :, 2].view(batch, 1, K, 1).expand(batch, num_joints, K, 1)
        b = bboxes[:, :, 3].view(batch, 1, K, 1).expand(batch, num_joints, K, 1)
        mask = (hm_kps[..., 0:1] < l) + (hm_kps[..., 0:1] > r) + \
               (hm_kps[..., 1:2] < t) + (hm_kps[..., 1:2] > b) + \
               (hm_score < thresh) + (min_dist > (torch.max(b - t, r - l) * 0.3))
        mask = (mask > 0).float().expand(batch, num_joints, K, 2)
        kps = (1 - mask) * hm_kps + mask * kps
        kps = kps.permute(0, 2, 1, 3).contiguous().view(batch, K, num_joints * 2)
    detections = torch.cat([bboxes, scores, kps, clses], dim=2)

    return detections


# src/lib/models/utils.py flip_lr / flip_lr_off / flip_tensor, verbatim.
def upstream_flip_tensor(x):
    return torch.flip(x, [3])


def upstream_flip_lr(x, flip_idx):
    tmp = x.detach().cpu().numpy()[..., ::-1].copy()
    shape = tmp.shape
    for e in flip_idx:
        tmp[:, e[0], ...], tmp[:, e[1], ...] = tmp[:, e[1], ...].copy(), tmp[:, e[0], ...].copy()
    return torch.from_numpy(tmp.reshape(shape)).to(x.device)


def upstream_flip_lr_off(x, flip_idx):
    tmp = x.detach().cpu().numpy()[..., ::-1].copy()
    shape = tmp.shape
    tmp = tmp.reshape(tmp.shape[0], 17, 2, tmp.shape[2], tmp.shape[3])
    tmp[:, :, 0, :, :] *= -1
    for e in flip_idx:
        tmp[:, e[0], ...], tmp[:, e[1], ...] = tmp[:, e[1], ...].copy(), tmp[:, e[0], ...].copy()
    return torch.from_numpy(tmp.reshape(shape)).to(x.device)


def torch_decode(heat, wh, hps, reg, hm_hp_heat, hp_offset, K):
    """Upstream's decode on heatmaps (its detector applies the sigmoid before)
    -> scores (B,K), boxes (B,K,4), joints (B,K,J,2) as numpy."""
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (heat, wh, hps, reg, hm_hp_heat, hp_offset)]
    dets = multi_pose_decode(t[0], t[1], t[2], reg=t[3], hm_hp=t[4], hp_offset=t[5], K=K).numpy()
    return dets[..., 4], dets[..., :4], dets[..., 5:5 + 2 * J].reshape(len(dets), K, J, 2)


# ------------------------------------------------- plain per-pixel transcription

def heat_of(logits):
    """float32 sigmoid written out: 1 / (1 + exp(-x)), every step float32."""
    with np.errstate(over="ignore"):
        return (F32(1) / (F32(1) + np.exp(-np.asarray(logits, F32)))).astype(F32)


def plain_peaks(heat):
    """[(score, flat index)] of one (H, W) map: pixels no smaller than any
    pixel of their 3x3 neighbourhood (clipped at the border), score > 0,
    best first, lower index first among equal scores."""
    H, W = heat.shape
    out = []
    for y in range(H):
        for x in range(W):
            v = heat[y, x]
            if v > 0 and all(v >= heat[yy, xx] for yy in range(max(0, y - 1), min(H, y + 2))
                             for xx in range(max(0, x - 1), min(W, x + 2))):
                out.append((v, y * W + x))
    return sorted(out, key=lambda p: (-p[0], p[1]))


def plain_decode(heat, wh, hps, reg, hm_hp_heat, hp_offset, K):
    """multi_pose_decode of one image from heatmaps, rule by rule, every
    number a float32 scalar. Needs at least K peaks on heat."""
    H, W = heat.shape[1:]
    thresh, far = F32(0.1), F32(0.3)
    centres = plain_peaks(heat[0])[:K]
    assert len(centres) == K, "the test map needs at least K centre peaks"
    peaks = []  # per joint: [(score, x, y)] of its top K peaks, weak ones moved away
    for j in range(J):
        pj = []
        for s, i in plain_peaks(hm_hp_heat[j])[:K]:
            y, x = divmod(i, W)
            if s > thresh:
                pj.append((s, F32(x) + hp_offset[0, y, x], F32(y) + hp_offset[1, y, x]))
            else:
                pj.append((F32(-1), F32(-10000), F32(-10000)))
        pj += [(F32(-1), F32(-10000), F32(-10000))] * (K - len(pj))  # suppressed zeros: weak too
        peaks.append(pj)
    scores, boxes, joints = [], [], []
    for s, i in centres:
        y, x = divmod(i, W)
        cx, cy = F32(x) + reg[0, y, x], F32(y) + reg[1, y, x]
        w2, h2 = wh[0, y, x] / F32(2), wh[1, y, x] / F32(2)
        box = (cx - w2, cy - h2, cx + w2, cy + h2)
        x1, y1, x2, y2 = box
        person = []
        for j in range(J):
            rx, ry = hps[2 * j, y, x] + F32(x), hps[2 * j + 1, y, x] + F32(y)
            best, best_d = None, None
            for p in peaks[j]:
                dx, dy = rx - p[1], ry - p[2]
                d = np.sqrt(dx * dx + dy * dy)
                if best is None or d < best_d:  # first one on ties
                    best, best_d = p, d
            ps, px, py = best
            if (px < x1 or px > x2 or py < y1 or py > y2 or ps < thresh
                    or best_d > max(y2 - y1, x2 - x1) * far):
                person.append((rx, ry))
            else:
                person.append((px, py))
        scores.append(s)
        boxes.append(box)
        joints.append(person)
    return np.array(scores, F32), np.array(boxes, F32), np.array(joints, F32)


def trained_like_heads(rng, b, h, w):
    """Random heads at the scales of a trained model: hm / hm_hp logits mostly
    -6..-1 with some confident peaks, sizes and joint offsets of tens of
    pixels, sub-pixel offsets in 0..1."""
    def heat_logits(c):
        x = rng.uniform(-6, -1, (b, c, h, w))
        spots = rng.random(x.shape) < 0.03
        x[spots] = rng.uniform(0, 4, spots.sum())
        return x.astype(F32)
    hm = heat_logits(1)
    wh = rng.uniform(4, 60, (b, 2, h, w)).astype(F32)
    hps = rng.uniform(-30, 30, (b, 2 * J, h, w)).astype(F32)
    reg = rng.uniform(0, 1, (b, 2, h, w)).astype(F32)
    hm_hp = heat_logits(J)
    hp_offset = rng.uniform(0, 1, (b, 2, h, w)).astype(F32)
    return hm, wh, hps, reg, hm_hp, hp_offset


def assert_both_outcomes(joints, heat, wh, hps, reg, hp_offset, K):
    """The case mix reaches both outcomes: many joints snapped to a peak,
    many kept as regressed (upstream's decode without hm_hp regresses all)."""
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (heat, wh, hps, reg)]
    regressed = multi_pose_decode(t[0], t[1], t[2], reg=t[3], K=K).numpy()[..., 5:5 + 2 * J]
    kept = np.count_nonzero(np.all(joints.reshape(regressed.shape[:2] + (J, 2)) ==
                                   regressed.reshape(regressed.shape[:2] + (J, 2)), axis=-1))
    total = regressed.size // 2
    assert 0 < kept < total and (K < 7 or min(kept, total - kept) >= total // 20), (kept, total)


def assert_same(got, scores, boxes, joints):
    np.testing.assert_array_equal(got.scores, scores)
    np.testing.assert_array_equal(got.boxes, boxes)
    np.testing.assert_array_equal(got.joints, joints)


# ------------------------------------------------------------------- decode

@pytest.mark.parametrize("K", [1, 7, 30])
def test_decode_equals_the_plain_transcription(K):
    rng = np.random.default_rng(K)
    heads = trained_like_heads(rng, 2, 20, 28)  # non-square
    hm, wh, hps, reg, hm_hp, hp_offset = heads
    got = decode_multi_pose(*heads, K=K)
    assert got.scores.dtype == got.boxes.dtype == got.joints.dtype == np.float32
    assert got.joints.shape == (2, K, J, 2)
    heat, joint_heat = heat_of(hm), heat_of(hm_hp)
    for i in range(2):
        s, b, j = plain_decode(heat[i], wh[i], hps[i], reg[i], joint_heat[i], hp_offset[i], K)
        np.testing.assert_array_equal(got.scores[i], s)
        np.testing.assert_array_equal(got.boxes[i], b)
        np.testing.assert_array_equal(got.joints[i], j)
    assert_both_outcomes(got.joints, heat, wh, hps, reg, hp_offset, K)


@pytest.mark.parametrize("shape,K", [((2, 24, 40), 100), ((2, 32, 32), 100), ((3, 48, 36), 37)])
def test_decode_equals_upstreams_torch_code(shape, K):
    """Bit-identical to upstream's own multi_pose_decode (CPU, float32) on
    heatmaps from our sigmoid (upstream's detector sigmoids before decoding),
    both with logits in and with the heatmaps in (hm_is_heat)."""
    b, h, w = shape
    rng = np.random.default_rng(h * w + K)
    hm, wh, hps, reg, hm_hp, hp_offset = trained_like_heads(rng, b, h, w)
    heat, joint_heat = heat_of(hm), heat_of(hm_hp)
    ref = torch_decode(heat, wh, hps, reg, joint_heat, hp_offset, K)
    assert_same(decode_multi_pose(hm, wh, hps, reg, hm_hp, hp_offset, K=K), *ref)
    assert_same(decode_multi_pose(heat, wh, hps, reg, joint_heat, hp_offset, K=K, hm_is_heat=True), *ref)
    assert_both_outcomes(ref[2], heat, wh, hps, reg, hp_offset, K)


def test_decode_with_torchs_own_sigmoid_agrees_closely():
    """With torch's sigmoid (may differ from numpy's in the last bit) the
    results agree up to such rounding: scores within 1e-6, and the joint
    layout identical where no score tie flips the order."""
    rng = np.random.default_rng(5)
    hm, wh, hps, reg, hm_hp, hp_offset = trained_like_heads(rng, 2, 32, 32)
    ref = torch_decode(torch.from_numpy(hm).sigmoid().numpy(), wh, hps, reg,
                       torch.from_numpy(hm_hp).sigmoid().numpy(), hp_offset, 50)
    got = decode_multi_pose(hm, wh, hps, reg, hm_hp, hp_offset, K=50)
    np.testing.assert_allclose(got.scores, ref[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.boxes, ref[1], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got.joints, ref[2], rtol=0, atol=1e-4)


def snap_scene():
    """Two people on a 40x40 map (hm_is_heat: heatmaps given directly), the
    centres at pixels (16, 16) and (14, 18), boxes 20x20 (reg 0), so A's box
    is [6, 26] x [6, 26] and B's [4, 24] x [8, 28]; 0.3 x 20 = 6 px.
    Each joint sets one snapping case up."""
    H = W = 40
    heat = np.zeros((1, 1, H, W), F32)
    heat[0, 0, 16, 16] = 0.9  # person A
    heat[0, 0, 18, 14] = 0.8  # person B
    wh = np.full((1, 2, H, W), 20, F32)
    reg = np.zeros((1, 2, H, W), F32)
    hps = np.zeros((1, 2 * J, H, W), F32)
    joint_heat = np.zeros((1, J, H, W), F32)
    off = np.zeros((1, 2, H, W), F32)

    def regress(person, j, x, y):  # A's joint j regressed to (x, y)
        cx, cy = {"A": (16, 16), "B": (14, 18)}[person]
        hps[0, 2 * j, cy, cx], hps[0, 2 * j + 1, cy, cx] = x - cx, y - cy

    def peak(j, x, y, score, dx=0.0, dy=0.0):
        joint_heat[0, j, y, x] = score
        off[0, :, y, x] = dx, dy

    regress("A", 0, 25, 16)
    peak(0, 27, 16, 0.9)            # 2 px away but right of A's x2 = 26: keeps (25, 16)
    regress("A", 1, 12, 12)
    peak(1, 12, 13, 0.1)            # scores exactly 0.1 (not above): moved away, keeps (12, 12)
    regress("A", 2, 16, 9)
    peak(2, 16, 16, 0.9, 0, 0.5)    # inside the box but 7.5 px > 6 px away: keeps (16, 9)
    regress("A", 3, 12, 12)
    peak(3, 13, 12, 0.6, 0.5, 0.25)  # 1.5 px, inside, confident: A's joint 3 becomes (13.5, 12.25)
    regress("A", 4, 15, 19)
    regress("B", 4, 13, 17)
    peak(4, 14, 18, 0.7, 0.25, 0.5)  # both people snap to (14.25, 18.5)
    regress("A", 5, 20, 20)
    peak(5, 20, 22, np.nextafter(F32(0.1), F32(1)))  # just above 0.1: snapped to (20, 22)
    regress("A", 6, 10, 20)
    peak(6, 4, 20, 0.9)             # left of A's x1 = 6 (and 6 px away): keeps (10, 20)
    regress("A", 7, 20, 8)
    peak(7, 20, 5, 0.9)             # above A's y1 = 6, 3 px away: keeps (20, 8)
    regress("A", 8, 20, 24)
    peak(8, 20, 27, 0.9)            # below A's y2 = 26, 3 px away: keeps (20, 24)
    regress("A", 9, 20, 14)
    peak(9, 20, 20, 0.9)            # exactly 6 px = 0.3 x 20 away (not farther): snapped to (20, 20)
    return heat, wh, hps, reg, joint_heat, off


def test_joint_snapping_cases_by_hand():
    heads = snap_scene()
    got = decode_multi_pose(*heads, K=2, hm_is_heat=True)
    np.testing.assert_array_equal(got.scores[0], F32([0.9, 0.8]))
    np.testing.assert_array_equal(got.boxes[0], F32([[6, 6, 26, 26], [4, 8, 24, 28]]))
    a, b = got.joints[0]
    expected_a = {0: (25, 16), 1: (12, 12), 2: (16, 9), 3: (13.5, 12.25), 4: (14.25, 18.5), 5: (20, 22),
                  6: (10, 20), 7: (20, 8), 8: (20, 24), 9: (20, 20)}
    for j, xy in expected_a.items():
        np.testing.assert_array_equal(a[j], F32(xy), err_msg=f"joint {j}")
    np.testing.assert_array_equal(b[4], F32([14.25, 18.5]))  # the shared peak
    for j in range(10, J):  # no peaks at all: regressed (hps 0: the centre)
        np.testing.assert_array_equal(a[j], F32([16, 16]))
    # upstream's code says the same
    ref = torch_decode(*heads, K=2)
    assert_same(got, *ref)


def test_nearest_peak_first_on_ties_and_top_k_limits_peaks():
    """Two peaks at the same distance: the first in top-K order (the higher
    score) wins; a joint's peaks beyond the K best are not considered."""
    heat, wh, hps, reg, joint_heat, off = snap_scene()
    joint_heat[0, 10, 16, 13] = 0.5  # joint 10 regressed to A's centre (16, 16): 3 px left ...
    joint_heat[0, 10, 16, 19] = 0.6  # ... and 3 px right, higher score: first in top-K order
    joint_heat[0, 11, 16, 17] = 0.2  # joint 11: the nearest peak, but only 3rd best of the joint
    joint_heat[0, 11, 10, 10] = 0.9
    joint_heat[0, 11, 22, 22] = 0.8
    heat[0, 0, 35, 35] = 0.5  # a third person (K=3 below: no zero-score padding, where torch's pick differs)
    got = decode_multi_pose(heat, wh, hps, reg, joint_heat, off, K=2, hm_is_heat=True)
    np.testing.assert_array_equal(got.joints[0, 0, 10], F32([19, 16]))
    np.testing.assert_array_equal(got.joints[0, 0, 11], F32([16, 16]))  # (10,10) and (22,22) > 6 px
    got3 = decode_multi_pose(heat, wh, hps, reg, joint_heat, off, K=3, hm_is_heat=True)
    np.testing.assert_array_equal(got3.joints[0, 0, 11], F32([17, 16]))
    assert_same(got3, *torch_decode(heat, wh, hps, reg, joint_heat, off, K=3))


def test_decode_refuses_mismatched_heads():
    heads = list(snap_scene())
    with pytest.raises(ValueError, match="hps"):
        decode_multi_pose(heads[0], heads[1], heads[2][:, :10], *heads[3:], hm_is_heat=True)
    with pytest.raises(ValueError, match="K=1601"):
        decode_multi_pose(*heads, K=1601, hm_is_heat=True)


# -------------------------------------------------------------------- flips

PAIRS = dict(FLIP_IDX)
PAIRS.update({b: a for a, b in FLIP_IDX})


def test_flip_lr_and_flip_lr_off_equal_upstream_and_the_plain_rule():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, J, 5, 7)).astype(F32)
    off = rng.normal(size=(2, 2 * J, 5, 7)).astype(F32)
    got, got_off = flip_lr(x), flip_lr_off(off)
    np.testing.assert_array_equal(got, upstream_flip_lr(torch.from_numpy(x), FLIP_IDX).numpy())
    np.testing.assert_array_equal(got_off, upstream_flip_lr_off(torch.from_numpy(off), FLIP_IDX).numpy())
    for b in range(2):
        for j in range(J):
            src = PAIRS.get(j, j)
            for y in range(5):
                for xx in range(7):
                    assert got[b, j, y, xx] == x[b, src, y, 6 - xx]
                    assert got_off[b, 2 * j, y, xx] == -off[b, 2 * src, y, 6 - xx]
                    assert got_off[b, 2 * j + 1, y, xx] == off[b, 2 * src + 1, y, 6 - xx]
    np.testing.assert_array_equal(flip_lr(got), x)  # both are involutions
    np.testing.assert_array_equal(flip_lr_off(got_off), off)


def upstream_combine(hm, wh, hps, reg, hm_hp, hp_offset):
    """MultiPoseDetector.process's flip branch on one image pair (torch)."""
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
         dict(hm=hm, wh=wh, hps=hps, reg=reg, hm_hp=hm_hp, hp_offset=hp_offset).items()}
    t["hm"] = torch.from_numpy(heat_of(hm))       # our float32 sigmoid (torch's may differ in the last bit)
    t["hm_hp"] = torch.from_numpy(heat_of(hm_hp))
    out = (
        (t["hm"][0:1] + upstream_flip_tensor(t["hm"][1:2])) / 2,
        (t["wh"][0:1] + upstream_flip_tensor(t["wh"][1:2])) / 2,
        (t["hps"][0:1] + upstream_flip_lr_off(t["hps"][1:2], FLIP_IDX)) / 2,
        t["reg"][0:1],
        (t["hm_hp"][0:1] + upstream_flip_lr(t["hm_hp"][1:2], FLIP_IDX)) / 2,
        t["hp_offset"][0:1],
    )
    return [o.numpy() for o in out]


def test_combine_flip_pose_equals_upstreams_process():
    rng = np.random.default_rng(2)
    heads = trained_like_heads(rng, 4, 12, 16)  # images 0, 1 and their "mirrors" 2, 3
    got = combine_flip_pose(*heads)
    assert all(g.dtype == np.float32 for g in got)
    for i in range(2):
        ref = upstream_combine(*(h[[i, i + 2]] for h in heads))
        for g, r in zip(got, ref):
            np.testing.assert_array_equal(g[i:i + 1], r)


def mirrored(heads):
    """The heads a mirror-equivariant network gives for the mirrored image
    (with reg = hp_offset = 0, so centres and peaks sit on pixels and a
    pixel x mirrors to W - 1 - x exactly)."""
    hm, wh, hps, reg, hm_hp, off = heads
    return (hm[..., ::-1], wh[..., ::-1], flip_lr_off(hps), reg, flip_lr(hm_hp), off)


def integer_heads(rng, b, h, w):
    hm, wh, hps, reg, hm_hp, off = trained_like_heads(rng, b, h, w)
    wh = np.round(wh).astype(F32)
    hps = np.round(hps * 4).astype(F32) / 4  # quarter pixels: sums and mirrors exact
    return hm, wh, hps, np.zeros_like(reg), hm_hp, np.zeros_like(off)


def test_decoding_mirrored_outputs_gives_mirrored_joints_left_right_swapped():
    rng = np.random.default_rng(3)
    heads = integer_heads(rng, 2, 24, 32)
    w = 32
    got = decode_multi_pose(*heads, K=40)
    mir = decode_multi_pose(*(np.ascontiguousarray(a) for a in mirrored(heads)), K=40)
    np.testing.assert_array_equal(mir.scores, got.scores)
    np.testing.assert_array_equal(mir.boxes[..., [2, 1, 0, 3]] * F32([-1, 1, -1, 1]) + F32([w - 1, 0, w - 1, 0]),
                                  got.boxes)
    perm = [PAIRS.get(j, j) for j in range(J)]
    back = mir.joints[:, :, perm].copy()
    back[..., 0] = (w - 1) - back[..., 0]
    np.testing.assert_array_equal(back, got.joints)
    assert np.count_nonzero(got.joints % 1 == 0) < got.joints.size  # some joints were regressed (hps ±.25)


def test_flip_test_of_an_equivariant_network_changes_nothing():
    """combine_flip_pose of a batch and its consistent mirror averages equal
    halves, so its decode equals the plain decode of the unflipped outputs."""
    rng = np.random.default_rng(4)
    heads = integer_heads(rng, 2, 24, 32)
    both = [np.concatenate([a, np.ascontiguousarray(m)]) for a, m in zip(heads, mirrored(heads))]
    flip = decode_multi_pose(*combine_flip_pose(*both), K=40, hm_is_heat=True)
    assert_same(flip, *decode_multi_pose(*heads, K=40))


# ------------------------------------------------------------ mapping, rows

def test_map_joints_to_image_and_pose_rows():
    rng = np.random.default_rng(6)
    joints = rng.uniform(0, 128, (5, J, 2)).astype(F32)
    boxes = rng.uniform(0, 128, (5, 4)).astype(F32)
    center, scale = np.array([320.0, 240.0]), 640.0
    mapped = map_joints_to_image(joints, center, scale, (128, 128))
    assert mapped.shape == (5, J, 2)
    # fixed mode: pure scale 640 / 128 = 5 around the centre
    np.testing.assert_allclose(mapped, (joints.astype(np.float64) - 64) * 5 + center, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(mapped, map_boxes_to_image(joints.reshape(5, -1), center, scale, (128, 128))
                                  .reshape(5, J, 2))
    mboxes = map_boxes_to_image(boxes, center, scale, (128, 128))
    scores = rng.uniform(0, 1, 5).astype(F32)
    rows = pose_rows(scores, mboxes, mapped)
    assert rows.dtype == np.float32 and rows.shape == (5, 39)
    for r in range(5):  # upstream: concatenate (float64) then astype(float32)
        expected = np.concatenate([mboxes[r], [scores[r]], mapped[r].reshape(-1)]).astype(F32)
        np.testing.assert_array_equal(rows[r], expected)
        assert rows[r, 5 + 2 * 3 + 1] == F32(mapped[r, 3, 1])
    with pytest.raises(ValueError):
        pose_rows(scores, mboxes[:4], mapped)


# ---------------------------------------------------------- soft_nms_39

def _fmax(a, b):
    return a if a >= b else b


def _fmin(a, b):
    return a if a <= b else b


def plain_soft_nms_39(boxes, sigma=0.5, threshold=0.001, swap=True, events=None):
    """soft_nms_39(boxes, method=2) of upstream's nms.pyx, row by row; every
    `cdef float` a np.float32 scalar. swap=False: the overwrite-only variant
    (columns 5-38 copied like 0-4), to show the quirk matters."""
    events = Counter() if events is None else events
    sigma, threshold, one = F32(sigma), F32(threshold), F32(1)
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
        boxes[maxpos, 0], boxes[maxpos, 1], boxes[maxpos, 2], boxes[maxpos, 3], boxes[maxpos, 4] = \
            tx1, ty1, tx2, ty2, ts
        for c in range(5, 39):
            tmp = boxes[i, c]
            boxes[i, c] = boxes[maxpos, c]
            boxes[maxpos, c] = tmp
        tx1, ty1, tx2, ty2, ts = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3], boxes[i, 4]
        pos = i + 1
        while pos < N:
            x1, y1, x2, y2 = boxes[pos, 0], boxes[pos, 1], boxes[pos, 2], boxes[pos, 3]
            area = F32((x2 - x1 + one) * (y2 - y1 + one))
            iw = F32(_fmin(tx2, x2) - _fmax(tx1, x1) + one)
            if iw > 0:
                ih = F32(_fmin(ty2, y2) - _fmax(ty1, y1) + one)
                if ih > 0:
                    ua = F32(float((tx2 - tx1 + one) * (ty2 - ty1 + one) + area - iw * ih))
                    ov = F32(iw * ih / ua)
                    weight = F32(np.exp(float(-(ov * ov) / sigma)))
                    boxes[pos, 4] = weight * boxes[pos, 4]
                    if boxes[pos, 4] < threshold:
                        events["discard at the end" if pos == N - 1 else "discard"] += 1
                        for c in range(5):
                            boxes[pos, c] = boxes[N - 1, c]
                        for c in range(5, 39):
                            if swap:
                                tmp = boxes[pos, c]
                                boxes[pos, c] = boxes[N - 1, c]
                                boxes[N - 1, c] = tmp
                            else:
                                boxes[pos, c] = boxes[N - 1, c]
                        N = N - 1
                        pos = pos - 1
            pos = pos + 1
    return N


def random_pose_rows(rng, n):
    """n rows: clustered, often identical boxes (so rows fall under the
    threshold after a rescoring or two), scores down to 1e-5, distinct joint
    columns per row (so where they end up shows)."""
    centres = rng.uniform(0, 300, (max(1, n // int(rng.integers(2, 8))), 2))
    pick = centres[rng.integers(0, len(centres), n)]
    size = rng.uniform(10, 80, (n, 2))
    jitter = rng.normal(0, rng.choice([0.0, 1.0, 5.0]), (n, 2))
    scores = np.where(rng.random(n) < 0.5, 10 ** rng.uniform(-5, -2, n), rng.uniform(0, 1, n))
    rows = np.empty((n, 39), F32)
    rows[:, :2] = pick + jitter - size / 2
    rows[:, 2:4] = pick + jitter + size / 2
    rows[:, 4] = scores
    rows[:, 5:] = rng.uniform(0, 300, (n, 34))
    dup = rng.random(n) < 0.2
    for r in np.flatnonzero(dup):
        rows[r, :4] = rows[rng.integers(0, n), :4]
    return rows


def test_soft_nms_39_equals_the_per_row_transcription_and_the_swap_matters():
    rng = np.random.default_rng(11)
    events = Counter()
    differs = 0
    sizes = [0, 1, 2, 3] + list(rng.integers(2, 40, 120)) + [80, 150, 300]
    for case, n in enumerate(sizes):
        rows = random_pose_rows(rng, int(n)) if n else np.zeros((0, 39), F32)
        expected = rows.copy()
        plain_soft_nms_39(expected, events=events)
        got = rows.copy()
        out = soft_nms_39(got)
        assert out is got  # in place, returned
        np.testing.assert_array_equal(got, expected, err_msg=f"case {case}, n={n}")
        overwrite = rows.copy()
        plain_soft_nms_39(overwrite, swap=False)
        np.testing.assert_array_equal(got[:, :5], overwrite[:, :5])  # the same boxes and scores
        differs += not np.array_equal(got, overwrite)
    assert events["discard"] > 100 and events["discard at the end"] > 20, events
    assert differs > 20  # the swap quirk changes the rows in many cases


@pytest.mark.parametrize("sigma,threshold", [(0.3, 0.01), (1.0, 0.0001)])
def test_soft_nms_39_other_parameters(sigma, threshold):
    rng = np.random.default_rng(12)
    for n in rng.integers(2, 60, 30):
        rows = random_pose_rows(rng, int(n))
        expected = rows.copy()
        plain_soft_nms_39(expected, sigma, threshold)
        np.testing.assert_array_equal(soft_nms_39(rows.copy(), sigma, threshold), expected)


def test_soft_nms_39_hand_case_swaps_the_joints_of_a_discarded_row():
    """Three identical boxes, scores 0.9, 0.004, 0.5: pass 0 rescores row 1
    to 0.004 * e^-2 < 0.001: its box is overwritten by row 2's, its joints
    swapped with row 2's; N = 2; row 2's box, now at 1, is rescored to
    0.5 * e^-2. Row 2 (stale) keeps row 2's box and score but now holds
    row 1's joints."""
    rows = np.zeros((3, 39), F32)
    rows[:, :4] = [10, 10, 50, 50]
    rows[:, 4] = [0.9, 0.004, 0.5]
    rows[:, 5:] = np.arange(3)[:, None] + 1  # joints of row r: all r + 1
    out = soft_nms_39(rows)
    w = F32(np.exp(-2.0))
    np.testing.assert_array_equal(out[:, 4], F32([0.9, F32(0.5) * w, F32(0.5)]))
    np.testing.assert_array_equal(out[:, 5:], np.repeat(F32([[1], [3], [2]]), 34, axis=1))


def test_soft_nms_39_refuses_bad_rows():
    with pytest.raises(ValueError, match=r"\(N, 39\)"):
        soft_nms_39(np.zeros((3, 5), F32))
    with pytest.raises(ValueError, match=r"\(N, 39\)"):
        soft_nms_39(np.zeros((3, 39), np.float64))


# ---------------------------------------------------------------- merge

def plain_merge(per_scale, scales):
    """post_process (divide by the scale, float32) + merge_outputs."""
    parts = []
    for rows, t in zip(per_scale, scales):
        rows = np.array(rows, F32)
        for r in range(len(rows)):
            for c in list(range(4)) + list(range(5, 39)):
                rows[r, c] = rows[r, c] / F32(t)
        parts.append(rows)
    merged = np.concatenate(parts).astype(F32)
    if len(scales) > 1:
        plain_soft_nms_39(merged)
    return merged


def test_merge_pose_one_and_three_scales():
    rng = np.random.default_rng(13)
    one = random_pose_rows(rng, 30)
    np.testing.assert_array_equal(merge_pose([one], [1.0]), one)
    per_scale = [random_pose_rows(rng, 40) for _ in range(3)]
    scales = (0.5, 0.75, 1.25)
    before = [r.copy() for r in per_scale]
    got = merge_pose(per_scale, scales)
    assert got.shape == (120, 39) and got.dtype == np.float32  # all rows kept
    np.testing.assert_array_equal(got, plain_merge(per_scale, scales))
    for r, b in zip(per_scale, before):
        np.testing.assert_array_equal(r, b)  # inputs untouched
    # no soft-NMS with one scale: a scaled single scale is just divided
    np.testing.assert_array_equal(merge_pose([one], [0.75]), plain_merge([one], [0.75]))


# ---------------------------------------------------------------- COCO

def test_pose_to_coco_full_precision_and_upstream_rounding():
    row = np.zeros((1, 39), F32)
    row[0, :5] = [10.126, 20.5, 110.3, 220.754, 0.87654]
    row[0, 5:] = np.arange(34) + F32(0.456)
    full = pose_to_coco(7, row)
    assert len(full) == 1
    e = full[0]
    assert e["image_id"] == 7 and e["category_id"] == 1
    x1, y1, x2, y2, s = (float(v) for v in row[0, :5])
    assert e["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert e["score"] == float(F32(0.87654))
    assert len(e["keypoints"]) == 51
    assert e["keypoints"][:6] == [float(row[0, 5]), float(row[0, 6]), 1.0, float(row[0, 7]), float(row[0, 8]), 1.0]
    up = pose_to_coco(7, row, category_id=1, upstream_rounding=True)[0]
    # coco_hp.convert_eval_format: the list of the row's floats, bbox[2] -= bbox[0] in double, "{:.2f}"
    dets = row[0].tolist()
    bbox = dets[:4]
    bbox[2] -= bbox[0]
    bbox[3] -= bbox[1]
    assert up["bbox"] == [float("{:.2f}".format(v)) for v in bbox] == [10.13, 20.5, 100.17, 200.25]
    assert up["score"] == 0.88
    kps = np.concatenate([np.array(dets[5:39], F32).reshape(-1, 2), np.ones((17, 1), F32)], axis=1).reshape(51)
    assert up["keypoints"] == [float("{:.2f}".format(v)) for v in kps.tolist()]
    assert up["keypoints"][:3] == [0.46, 1.46, 1.0]
    assert pose_to_coco(1, np.zeros((0, 39), F32)) == []
