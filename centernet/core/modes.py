"""Upstream's test modes (detectors/base_detector.py, detectors/ctdet.py):
fixed 512x512 or keep resolution, optional flip test, optional multi-scale.

- Flip test: the preprocessed batch is run together with its mirror along
  the width axis; after the sigmoid, hm = (hm0 + flip(hm1)) / 2 and
  wh = (wh0 + flip(wh1)) / 2; reg comes from the unflipped pass alone.
- Multi-scale: the image is resized by each scale t first, then given the
  test transform of that size (transforms.test_geometry with test_scale);
  boxes are divided by t and merged across scales (soft_nms.merge_detections).
"""
from dataclasses import dataclass

import numpy as np

from centernet.core.decode import sigmoid
from centernet.errors import UserError
from centernet.core.transforms import INPUT_SIZE

# Upstream's multi-scale test (MODEL_ZOO: "multi scale (0.5, 0.75, 1, 1.25, 1.5)").
UPSTREAM_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)

# COCO val2017 AP of ctdet_coco_dla_2x as upstream publishes it, by mode
# (keep_res, flip, multi-scale). The fixed 512 number is upstream's PyTorch
# result quoted by the Ascend recipe; the others are MODEL_ZOO's.
PUBLISHED_AP = {
    (False, False, False): 36.6,
    (True, False, False): 37.4,
    (True, True, False): 39.2,
    (True, True, True): 41.7,
}


@dataclass(frozen=True)
class TestMode:
    """How images are tested: keep resolution or a fixed input (of
    input_size, (H, W); None: the model's own, which the predictor settles),
    flip, scales."""
    keep_res: bool = False
    flip: bool = False
    scales: tuple = (1.0,)
    input_size: tuple = None

    __test__ = False  # not a pytest class, despite the name

    @property
    def multi_scale(self):
        return len(self.scales) > 1

    @property
    def name(self):
        """Short name, e.g. 'keep-res + flip + scales 0.5,0.75,1,1.25,1.5'."""
        h, w = self.input_size or (None, None)
        parts = ["keep-res" if self.keep_res else "fixed" if h is None else f"fixed {h}" if h == w
                 else f"fixed {h}x{w}"]
        if self.flip:
            parts.append("flip")
        if self.scales != (1.0,):
            parts.append("scales " + ",".join(f"{t:g}" for t in self.scales))
        return " + ".join(parts)

    @property
    def published_ap(self):
        """Upstream's published AP for this mode, or None where it publishes none
        (multi-scale only counts with upstream's own five scales)."""
        if self.multi_scale and tuple(self.scales) != UPSTREAM_SCALES:
            return None
        if not self.keep_res and tuple(self.input_size or (INPUT_SIZE, INPUT_SIZE)) != (INPUT_SIZE, INPUT_SIZE):
            return None
        return PUBLISHED_AP.get((self.keep_res, self.flip, self.multi_scale))

    @property
    def cost_ratio(self):
        """Network passes per image relative to one unflipped pass at scale 1
        (the FLOP ratio before input sizes are taken into account)."""
        return (2 if self.flip else 1) * sum(t * t for t in self.scales)


def parse_scales(text):
    """'0.5,0.75,1' -> (0.5, 0.75, 1.0); one-line errors for bad lists."""
    try:
        scales = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise UserError(f"--scales {text}: want comma-separated numbers, e.g. 0.5,0.75,1,1.25,1.5") from None
    if not scales or min(scales) <= 0:
        raise UserError(f"--scales {text}: want one or more positive numbers, e.g. 0.5,0.75,1,1.25,1.5")
    if len(set(scales)) != len(scales):
        raise UserError(f"--scales {text}: a scale is listed twice")
    return scales


def flip_batch(x):
    """(N,3,H,W) -> (2N,3,H,W): the batch, then its mirror along the width."""
    x = np.asarray(x, dtype=np.float32)
    return np.concatenate([x, x[..., ::-1]])


def combine_flip(hm, wh, reg):
    """Outputs of a flip_batch (2N images) -> (heat, wh, reg) of the N images:
    hm averaged with the mirrored pass after the sigmoid, wh averaged, reg
    of the unflipped pass (float32, as upstream's torch code)."""
    n = len(hm) // 2
    heat = sigmoid(hm)
    heat = (heat[:n] + heat[n:, ..., ::-1]) / np.float32(2)
    wh = np.asarray(wh, np.float32)
    wh = (wh[:n] + wh[n:, ..., ::-1]) / np.float32(2)
    return heat, wh, np.ascontiguousarray(reg[:n])
