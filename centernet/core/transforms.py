"""Test-time affine transform and input normalisation (upstream: src/lib/utils/image.py,
src/lib/detectors/base_detector.py pre_process).

The matrix is built exactly as upstream does, with cv2.getAffineTransform from
three float32 point pairs: warpAffine works in fixed point, so a matrix that
differs only in the last bits can move pixel values visibly.
"""
import functools

import cv2
import numpy as np

from centernet.constants import DOWN_RATIO, INPUT_SIZE, KEEP_RES_PAD, MEAN, STD  # noqa: F401 (re-exported)


def _third_point(a, b):
    """The point that makes a right angle at b with the segment a-b."""
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=np.float32)


def get_affine_transform(center, scale, output_size, inverse=False):
    """2x3 matrix mapping the box of width scale[0] centred at `center` onto an
    output of `output_size` = (width, height); `inverse` maps back.

    `scale` is one number (a square) or (sx, sy); only its width matters, as
    upstream. No rotation or shift: the test transform never uses them.
    """
    center = np.asarray(center, dtype=np.float32)
    if np.ndim(scale) == 0:
        scale = np.array([scale, scale], dtype=np.float32)
    src_w = np.float32(scale[0])
    dst_w, dst_h = output_size
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + np.array([0, src_w * -0.5], dtype=np.float32)
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = np.array([dst_w * 0.5, dst_h * 0.5], np.float32) + np.array([0, dst_w * -0.5], np.float32)
    src[2] = _third_point(src[0], src[1])
    dst[2] = _third_point(dst[0], dst[1])
    if inverse:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def test_geometry(height, width, input_size=(INPUT_SIZE, INPUT_SIZE), keep_res=False, test_scale=1.0,
                  pad=KEEP_RES_PAD):
    """Centre, scale and (input_h, input_w) of upstream's test transform
    (base_detector.pre_process) for an image of `height` x `width` resized by
    `test_scale` first (multi-scale test; 1 means no resize).

    The resized size is (int(h * t), int(w * t)). Fixed mode: c = (new_w/2,
    new_h/2) but s = max(h, w) of the ORIGINAL image (upstream's code, kept
    as is), and the given input size. Keep-resolution mode: input
    (new_h|pad)+1 by (new_w|pad)+1 (pad: 31, or 127 for Hourglass-104),
    c = (new_w//2, new_h//2), s = (input_w, input_h), so the image is placed
    rather than scaled.
    Returns (center float32[2], scale float or float32[2], (in_h, in_w)).
    """
    new_h, new_w = resized_size(height, width, test_scale)
    if keep_res:
        in_h, in_w = (new_h | pad) + 1, (new_w | pad) + 1
        center = np.array([new_w // 2, new_h // 2], dtype=np.float32)
        scale = np.array([in_w, in_h], dtype=np.float32)
    else:
        in_h, in_w = input_size
        center = np.array([new_w / 2.0, new_h / 2.0], dtype=np.float32)
        scale = float(max(height, width))
    return center, scale, (in_h, in_w)


def resized_size(height, width, test_scale=1.0):
    """(int(h * t), int(w * t)): the image size at test scale t, as upstream."""
    return int(height * test_scale), int(width * test_scale)


test_geometry.__test__ = False  # not a pytest test, despite the name


# (v / 255 - mean) / std for every uint8 v and channel, computed as upstream
# does per pixel (float32 mean and std, float64 arithmetic, then cast to
# float32), so a table lookup gives the same float32 bits at a fraction of
# the cost.
_COCO = (tuple(float(v) for v in MEAN), tuple(float(v) for v in STD))


@functools.lru_cache(maxsize=8)
def normalise_lut(mean=_COCO[0], std=_COCO[1]):
    """(3, 256) float32 table: B, G, R value -> network input, for upstream's
    mean and std numbers (B, G, R order)."""
    m = np.asarray(mean, np.float32).astype(np.float64)
    sd = np.asarray(std, np.float32).astype(np.float64)
    table = ((np.arange(256, dtype=np.float64)[None, :] / 255.0 - m[:, None]) / sd[:, None]).astype(np.float32)
    table.flags.writeable = False
    return table


NORMALISE_LUT = normalise_lut()  # COCO's


@functools.lru_cache(maxsize=8)
def _lut_rows(mean, std):
    """normalise_lut's rows as cv2.LUT takes them, (1, 256) each, made once per mean/std."""
    return tuple(row.reshape(1, 256) for row in normalise_lut(mean, std))


_COCO_ROWS = _lut_rows(*_COCO)


def normalise_to_chw(warped, out=None, mean=None, std=None):
    """uint8 HxWx3 BGR -> float32 1x3xHxW, (x/255 - mean)/std per channel
    (COCO's mean and std unless given)."""
    if out is None:
        out = np.empty((1, 3) + warped.shape[:2], np.float32)
    rows = _COCO_ROWS if mean is None else _lut_rows(tuple(mean), tuple(std))
    # cv2.LUT with a float32 table gives float32: a vectorised lookup
    # written straight into the CHW planes.
    for ch, plane in enumerate(cv2.split(warped)):
        cv2.LUT(plane, rows[ch], dst=out[0, ch])
    return out


def warp_image(image, center, scale, input_hw, warp_buffer=None):
    """BGR uint8 HxWx3 -> the warped BGR uint8 input_hw image of the test transform."""
    in_h, in_w = input_hw
    trans = get_affine_transform(center, scale, (in_w, in_h))
    return cv2.warpAffine(image, trans, (in_w, in_h), dst=warp_buffer, flags=cv2.INTER_LINEAR)


def preprocess_image(image, center, scale, input_hw, out=None, warp_buffer=None, mean=None, std=None):
    """BGR uint8 HxWx3 -> float32 1x3xHxW network input (warp, normalise, CHW).
    `out` (1x3xHxW float32) and `warp_buffer` (HxWx3 uint8) may be reused arrays."""
    return normalise_to_chw(warp_image(image, center, scale, input_hw, warp_buffer), out, mean, std)


def warp_input(image, input_size=(INPUT_SIZE, INPUT_SIZE), keep_res=False, test_scale=1.0, warp_buffer=None,
               pad=KEEP_RES_PAD):
    """BGR uint8 image -> (warped BGR uint8 HxWx3, center, scale, (in_h, in_w))
    for one test scale: cv2.resize to (int(w*t), int(h*t)) first (bilinear,
    as upstream; skipped at the image's own size, where OpenCV copies), then
    the warp of the test transform of that size (test_geometry). The network
    input is normalise_to_chw of it (or NORMALISE_LUT applied elsewhere)."""
    height, width = image.shape[:2]
    new_h, new_w = resized_size(height, width, test_scale)
    if min(new_h, new_w) < 1:
        raise ValueError(f"test scale {test_scale} makes a {width}x{height} image empty")
    if (new_h, new_w) != (height, width):
        image = cv2.resize(image, (new_w, new_h))
    center, scale, input_hw = test_geometry(height, width, input_size, keep_res, test_scale, pad)
    return warp_image(image, center, scale, input_hw, warp_buffer), center, scale, input_hw


def prepare_input(image, input_size=(INPUT_SIZE, INPUT_SIZE), keep_res=False, test_scale=1.0,
                  out=None, warp_buffer=None, mean=None, std=None, pad=KEEP_RES_PAD):
    """BGR uint8 image -> (1x3xHxW float32 input, center, scale, (in_h, in_w))
    for one test scale (warp_input, then normalise_to_chw)."""
    warped, center, scale, input_hw = warp_input(image, input_size, keep_res, test_scale, warp_buffer, pad)
    return normalise_to_chw(warped, out, mean, std), center, scale, input_hw


def transform_points(points, matrix):
    """Apply a 2x3 affine matrix to an (N, 2) array of points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def clip_box(box, height, width):
    """(x1, y1, x2, y2) in continuous image coordinates, corners in order and
    clipped to [0, width] x [0, height]."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
            min(max(x2, 0.0), width), min(max(y2, 0.0), height))
