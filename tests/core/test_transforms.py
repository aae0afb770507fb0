"""transforms.py against hand-derived statements of the test transform."""
import cv2
import numpy as np
import pytest

from centernet.core.transforms import (MEAN, STD, get_affine_transform, normalise_to_chw, prepare_input, preprocess_image,
                                  test_geometry, transform_points)

SIZES = [(640, 480), (480, 640), (500, 375), (333, 500), (161, 97), (97, 161), (1, 1), (3, 700)]  # (w, h)


def hand_fixed_matrix(width, height, out_w, out_h):
    """The fixed-mode transform written out: scale out_w/s about the image
    centre, which lands on the output centre (float64 throughout)."""
    s = float(max(width, height))
    a = out_w / s
    return np.array([[a, 0.0, out_w / 2 - width / 2 * a],
                     [0.0, a, out_h / 2 - height / 2 * a]])


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("out", [(512, 512), (128, 128)])
def test_fixed_mode_matrix_is_scale_plus_translation(width, height, out):
    center, scale, in_hw = test_geometry(height, width)
    assert in_hw == (512, 512)
    assert scale == max(width, height)
    np.testing.assert_array_equal(center, [width / 2, height / 2])
    m = get_affine_transform(center, scale, out)
    np.testing.assert_allclose(m, hand_fixed_matrix(width, height, *out), rtol=0, atol=1e-9)


@pytest.mark.parametrize("width,height", SIZES)
def test_inverse_undoes_forward(width, height):
    center, scale, _ = test_geometry(height, width)
    fwd = get_affine_transform(center, scale, (128, 128))
    inv = get_affine_transform(center, scale, (128, 128), inverse=True)
    pts = np.random.default_rng(0).uniform(-50, 700, size=(20, 2))
    np.testing.assert_allclose(transform_points(transform_points(pts, fwd), inv), pts, rtol=0, atol=1e-9)


@pytest.mark.parametrize("width,height", [(640, 427), (500, 375), (33, 65)])
def test_keep_res_places_the_image_without_scaling(width, height):
    center, scale, (in_h, in_w) = test_geometry(height, width, keep_res=True)
    # (h | 31) + 1 is the smallest multiple of 32 above h.
    assert (in_h, in_w) == ((height // 32 + 1) * 32, (width // 32 + 1) * 32)
    np.testing.assert_array_equal(center, [width // 2, height // 2])
    np.testing.assert_array_equal(scale, [in_w, in_h])
    m = get_affine_transform(center, scale, (in_w, in_h))
    expected = np.array([[1.0, 0.0, in_w / 2 - width // 2], [0.0, 1.0, in_h / 2 - height // 2]])
    np.testing.assert_allclose(m, expected, rtol=0, atol=1e-9)


def test_keep_res_sizes_match_upstream_rounding():
    # (h | 31) + 1 for a few values worked by hand.
    for h, expected in [(427, 448), (480, 512), (512, 544), (1, 32), (31, 32), (32, 64)]:
        assert test_geometry(h, 10, keep_res=True)[2][0] == expected


def test_transform_points_applies_the_matrix():
    m = np.array([[2.0, 0.5, 3.0], [-1.0, 1.5, -4.0]])
    pts = np.array([[1.0, 2.0], [0.0, 0.0], [-3.0, 5.0]])
    expected = np.array([[2 + 1 + 3, -1 + 3 - 4], [3, -4], [-6 + 2.5 + 3, 3 + 7.5 - 4]])
    np.testing.assert_allclose(transform_points(pts, m), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("width,height", [(160, 120), (96, 144), (500, 375)])
def test_preprocess_image_matches_hand_built_warp_and_normalisation(width, height):
    img = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    center, scale, in_hw = test_geometry(height, width)
    got = preprocess_image(img, center, scale, in_hw)
    assert got.shape == (1, 3, 512, 512) and got.dtype == np.float32 and got.flags.c_contiguous
    # Same warp from the hand-built matrix (identical to within 1e-9 above, so
    # warpAffine's fixed point sees the same numbers), normalised by hand.
    warped = cv2.warpAffine(img, hand_fixed_matrix(width, height, 512, 512), (512, 512), flags=cv2.INTER_LINEAR)
    # Upstream (detectors/base_detector.py pre_process) with its opts.py values, its mean
    # and std float32 arrays: ((inp / 255. - mean) / std).astype(np.float32), bit for bit.
    mean = np.array([0.40789654, 0.44719302, 0.47026115], dtype=np.float32)
    std = np.array([0.28863828, 0.27408164, 0.27809835], dtype=np.float32)
    expected = ((warped / 255. - mean) / std).astype(np.float32).transpose(2, 0, 1)[None]
    np.testing.assert_array_equal(got, expected)


def test_warp_agrees_with_float_bilinear_sampling_on_a_smooth_image():
    """Geometry check independent of OpenCV: sample input pixel (u, v) at the
    image point ((u - 256) * s / 512 + cx, ...) by float bilinear
    interpolation, zero outside. warpAffine quantises coordinates to 1/32 px
    and rounds to uint8, so on an image whose values change by at most 2 per
    pixel the two agree to 0.5 + 2/32 + 0.25 (margin) levels."""
    width, height = 120, 90
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 1.5, yy * 2.0, 100 + xx + yy * 0.5], axis=-1)  # <= 2 levels / px
    img_u8 = img.astype(np.uint8)
    img = img_u8.astype(np.float64)
    center, scale, in_hw = test_geometry(height, width)
    got = preprocess_image(img_u8, center, scale, in_hw)[0].transpose(1, 2, 0)
    got_levels = (got * STD + MEAN) * 255

    v, u = np.mgrid[0:512, 0:512].astype(np.float64)
    x = (u - 256) * scale / 512 + width / 2
    y = (v - 256) * scale / 512 + height / 2
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]

    def px(yi, xi):
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        return np.where(inside[..., None], img[np.clip(yi, 0, height - 1), np.clip(xi, 0, width - 1)], 0.0)

    expected = ((1 - fy) * ((1 - fx) * px(y0, x0) + fx * px(y0, x0 + 1))
                + fy * ((1 - fx) * px(y0 + 1, x0) + fx * px(y0 + 1, x0 + 1)))
    # Compare away from the image border, where the zero padding makes a step.
    interior = (x >= 1) & (x <= width - 2) & (y >= 1) & (y <= height - 2)
    assert interior.sum() > 30000
    diff = np.abs(got_levels - expected)[interior]
    assert diff.max() <= 0.5 + 2 / 32 + 0.25, diff.max()
    # Outside the image the input is the normalised zero.
    outside = (x < -1) | (y < -1) | (x > width) | (y > height)
    np.testing.assert_allclose(got[outside], np.broadcast_to(-MEAN / STD, got[outside].shape), rtol=0, atol=1e-6)


def test_lookup_table_normalisation_is_bitwise_upstreams_formula():
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    img[0, :3] = [[0, 0, 0], [255, 255, 255], [128, 1, 254]]
    mean = np.array([0.40789654, 0.44719302, 0.47026115], dtype=np.float32)
    std = np.array([0.28863828, 0.27408164, 0.27809835], dtype=np.float32)
    upstream = ((img / 255. - mean) / std).astype(np.float32).transpose(2, 0, 1)[None]
    np.testing.assert_array_equal(normalise_to_chw(img), upstream)


def normalised(warped):
    mean = np.array([0.40789654, 0.44719302, 0.47026115])
    std = np.array([0.28863828, 0.27408164, 0.27809835])
    return ((warped.astype(np.float64) / 255 - mean) / std).transpose(2, 0, 1)[None]


@pytest.mark.parametrize("width,height", [(160, 120), (96, 144), (75, 50)])
@pytest.mark.parametrize("t", [0.5, 0.75, 1.0, 1.25, 1.5])
def test_scaled_fixed_mode_resizes_then_keeps_the_original_scale(width, height, t):
    """Upstream's multi-scale pre_process, fixed mode: cv2.resize to
    (int(w*t), int(h*t)), then the transform about the resized image's centre
    with s = max(h, w) of the ORIGINAL image."""
    img = np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)
    tensor, center, scale, in_hw = prepare_input(img, (128, 128), test_scale=t)
    new_w, new_h = int(width * t), int(height * t)
    assert in_hw == (128, 128) and scale == max(width, height)
    np.testing.assert_array_equal(center, [new_w / 2, new_h / 2])
    a = 128 / max(width, height)
    m = np.array([[a, 0.0, 64 - new_w / 2 * a], [0.0, a, 64 - new_h / 2 * a]])
    resized = cv2.resize(img, (new_w, new_h)) if t != 1 else img
    expected = normalised(cv2.warpAffine(resized, m, (128, 128), flags=cv2.INTER_LINEAR))
    np.testing.assert_allclose(tensor, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("width,height", [(160, 120), (96, 144), (75, 50)])
@pytest.mark.parametrize("t", [0.5, 1.0, 1.5])
def test_scaled_keep_res_places_the_resized_image(width, height, t):
    """Keep resolution at scale t: the resized image, unscaled, its centre
    (new_w//2, new_h//2) at the centre of an input (new|31)+1 on each side."""
    img = np.random.default_rng(4).integers(0, 256, (height, width, 3), dtype=np.uint8)
    tensor, center, scale, (in_h, in_w) = prepare_input(img, keep_res=True, test_scale=t)
    new_w, new_h = int(width * t), int(height * t)
    assert (in_h, in_w) == ((new_h // 32 + 1) * 32, (new_w // 32 + 1) * 32)
    assert tensor.shape == (1, 3, in_h, in_w)
    np.testing.assert_array_equal(center, [new_w // 2, new_h // 2])
    np.testing.assert_array_equal(scale, [in_w, in_h])
    m = np.array([[1.0, 0.0, in_w / 2 - new_w // 2], [0.0, 1.0, in_h / 2 - new_h // 2]])
    resized = cv2.resize(img, (new_w, new_h)) if t != 1 else img
    expected = normalised(cv2.warpAffine(resized, m, (in_w, in_h), flags=cv2.INTER_LINEAR))
    np.testing.assert_allclose(tensor, expected, rtol=0, atol=1e-4)
    if t == 1:  # an integer shift: the image itself, framed by the normalised zero
        dx, dy = in_w // 2 - width // 2, in_h // 2 - height // 2
        np.testing.assert_allclose(tensor[0, :, dy:dy + height, dx:dx + width],
                                   normalised(img)[0], rtol=0, atol=1e-4)


def test_a_scale_that_empties_the_image_is_an_error():
    with pytest.raises(ValueError, match="test scale 0.1 makes a 5x5 image empty"):
        prepare_input(np.zeros((5, 5, 3), np.uint8), test_scale=0.1)
