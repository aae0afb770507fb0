"""Decoding on the PyTorch device (decode_ctdet_torch: decode_ctdet's
detections and tie order bit for bit given the same heat) and the flip
test's average there (combine_flip_torch; multi_pose's: combine_flip_pose_torch,
which the exported flip graph holds), so that only the top K per input
cross back to the host."""

import torch
import torch.nn.functional as F

from centernet.core.pose import mirror_joint_order




def decode_ctdet_torch(hm, wh, reg, K=100, hm_is_heat=False):
    """decode.decode_ctdet on torch tensors, on their own device: sigmoid,
    3x3 peak suppression, top K over all classes, boxes on the output map.
    Returns float32 scores (N, K), int64 classes (N, K), float32 boxes (N, K, 4).

    Given the same heat (sigmoid(hm), or hm itself with hm_is_heat) it returns
    decode_ctdet's detections in its order, ties included (equal scores: the
    lower class, then row, then column): each entry is ranked by one unique
    int64 key, its score's float32 bits (monotone for scores >= 0) above its
    reversed flat index. torch.sigmoid and numpy's may differ by one ulp."""
    n, c, h, w = hm.shape
    if wh.shape != (n, 2, h, w) or reg.shape != (n, 2, h, w):
        raise ValueError(f"wh {tuple(wh.shape)} and reg {tuple(reg.shape)} must be {(n, 2, h, w)} "
                         f"to match hm {tuple(hm.shape)}")
    if not 0 < K <= h * w:
        raise ValueError(f"K={K} must be between 1 and H*W={h * w}")
    heat = hm.float() if hm_is_heat else torch.sigmoid(hm.float())
    keep = (heat == F.max_pool2d(heat, 3, stride=1, padding=1)) & (heat > 0)
    flat = torch.where(keep, heat, torch.zeros((), dtype=heat.dtype, device=heat.device)).reshape(n, -1)
    size = flat.shape[1]
    reversed_index = (size - 1) - torch.arange(size, device=flat.device, dtype=torch.int64)
    key = flat.view(torch.int32).to(torch.int64) * (1 << 32) + reversed_index
    top = (size - 1) - (torch.topk(key, K, dim=1).values & 0xFFFFFFFF)
    scores = flat.gather(1, top)
    classes, pix = top // (h * w), top % (h * w)
    ys, xs = pix // w, pix % w
    off, sizes = reg.float().reshape(n, 2, -1), wh.float().reshape(n, 2, -1)
    cx = xs.float() + off[:, 0].gather(1, pix)
    cy = ys.float() + off[:, 1].gather(1, pix)
    half_w, half_h = sizes[:, 0].gather(1, pix) / 2, sizes[:, 1].gather(1, pix) / 2
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
    return scores, classes, boxes


def combine_flip_torch(hm, wh, reg):
    """modes.combine_flip on torch tensors: outputs of a batch followed by its
    mirror (2N) -> (heat, wh, reg) of the N inputs: hm averaged with the
    mirrored pass after the sigmoid, wh averaged, reg of the unflipped pass."""
    n = len(hm) // 2
    heat = torch.sigmoid(hm.float())
    return (heat[:n] + heat[n:].flip(3)) / 2, (wh[:n].float() + wh[n:].float().flip(3)) / 2, reg[:n].float()


def flip_lr_torch(x):
    """Upstream's flip_lr on torch tensors (N, J, H, W): mirrored along the width, left and right joints swapped."""
    return x.flip(3)[:, mirror_joint_order().tolist()]


def flip_lr_off_torch(x):
    """Upstream's flip_lr_off on torch tensors (N, 2J, H, W): mirrored, the x
    offsets negated, left and right joints swapped (both channels of each)."""
    n, c, h, w = x.shape
    y = x.flip(3).reshape(n, c // 2, 2, h, w)[:, mirror_joint_order().tolist()]
    sign = torch.tensor([-1.0, 1.0], dtype=x.dtype, device=x.device).view(1, 1, 2, 1, 1)
    return (y * sign).reshape(n, c, h, w)


def combine_flip_pose_torch(hm, wh, hps, reg, hm_hp, hp_offset):
    """multi_pose's flip test on torch tensors (upstream detectors/multi_pose.py):
    outputs of a batch followed by its mirror (2N) -> the N inputs' (heat,
    wh, hps, reg, hm_hp heat, hp_offset); hm and hm_hp after their sigmoid.
    Keeps the inputs' dtype (the export check runs it in float64). The
    batch size comes from a shape (not len()), so an ONNX trace keeps it dynamic."""
    n = hm.shape[0] // 2
    heat, joint_heat = hm.sigmoid(), hm_hp.sigmoid()
    return ((heat[:n] + heat[n:].flip(3)) / 2, (wh[:n] + wh[n:].flip(3)) / 2,
            (hps[:n] + flip_lr_off_torch(hps[n:])) / 2, reg[:n],
            (joint_heat[:n] + flip_lr_torch(joint_heat[n:])) / 2, hp_offset[:n])
