"""Upstream's ctdet losses (models/losses.py, trains/ctdet.py): the
penalty-reduced focal loss on the heatmap, L1 on size and offset at the
object centres, weighted 1, 0.1 and 1."""
import torch
import torch.nn.functional as F

HM_WEIGHT, WH_WEIGHT, OFF_WEIGHT = 1.0, 0.1, 1.0


def focal_loss(logits, gt):
    """CornerNet's focal loss (alpha 2, beta 4) on sigmoid(logits) clamped
    to [1e-4, 1 - 1e-4], normalised by the number of peaks (gt == 1)."""
    pred = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = gt.eq(1).float()
    neg = 1 - pos
    pos_loss = (torch.log(pred) * (1 - pred) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - pred) * pred ** 2 * (1 - gt) ** 4 * neg).sum()
    num_pos = pos.sum()
    return -neg_loss if num_pos == 0 else -(pos_loss + neg_loss) / num_pos


def gather_at(output, ind):
    """(N, K, C): output (N, C, H, W) at the flat indices ind (N, K)."""
    n, c = output.shape[:2]
    flat = output.reshape(n, c, -1).permute(0, 2, 1)
    return flat.gather(1, ind.unsqueeze(2).expand(-1, -1, c))


def reg_l1_loss(output, mask, ind, target):
    """Summed L1 at the object rows, over the number of masked values (+1e-4)."""
    pred = gather_at(output, ind)
    m = mask.unsqueeze(2).expand_as(pred)
    return F.l1_loss(pred * m, target * m, reduction="sum") / (m.sum() + 1e-4)


def ctdet_loss(outputs, batch):
    """(total, {"hm", "wh", "off"}) for the head outputs {hm, wh, reg} of a batch of targets."""
    hm = focal_loss(outputs["hm"], batch["hm"])
    wh = reg_l1_loss(outputs["wh"], batch["reg_mask"], batch["ind"], batch["wh"])
    off = reg_l1_loss(outputs["reg"], batch["reg_mask"], batch["ind"], batch["reg"])
    total = HM_WEIGHT * hm + WH_WEIGHT * wh + OFF_WEIGHT * off
    return total, {"hm": hm.item(), "wh": wh.item(), "off": off.item()}
