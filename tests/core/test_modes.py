"""modes.py: the flip test's mirror and average against upstream's torch code
(detectors/ctdet.py process) and a hand computation with the PyTorch model;
mode names, published AP and cost; --scales parsing."""
import numpy as np
import pytest
import torch

from centernet.errors import UserError
from centernet.core.modes import UPSTREAM_SCALES, TestMode, combine_flip, flip_batch, parse_scales
from centernet.runtime.ort_session import make_session, run_session
from conftest import photo_inputs


def upstream_flip(hm, wh, reg):
    """detectors/ctdet.py process() with flip_test, in torch (models/utils.py
    flip_tensor is torch.flip on the width axis)."""
    hm, wh, reg = (torch.from_numpy(np.ascontiguousarray(a)) for a in (hm, wh, reg))
    hm = hm.sigmoid_()
    hm = (hm[0:1] + torch.flip(hm[1:2], [3])) / 2
    wh = (wh[0:1] + torch.flip(wh[1:2], [3])) / 2
    return hm.numpy(), wh.numpy(), reg[0:1].numpy()


def test_flip_batch_mirrors_the_width_axis():
    x = np.arange(2 * 3 * 2 * 4, dtype=np.float32).reshape(2, 3, 2, 4)
    got = flip_batch(x)
    assert got.shape == (4, 3, 2, 4)
    np.testing.assert_array_equal(got[:2], x)
    np.testing.assert_array_equal(got[2:, :, :, 0], x[:, :, :, 3])  # column w-1-j of each plane
    np.testing.assert_array_equal(got[3, 1, 1], x[1, 1, 1, ::-1])


def test_combine_flip_equals_upstreams_torch_code():
    # Logits at the trained network's scale (-12..+8), sizes of tens of pixels.
    rng = np.random.default_rng(0)
    hm = rng.uniform(-12, 8, (2, 80, 12, 20)).astype(np.float32)
    wh = rng.uniform(0, 60, (2, 2, 12, 20)).astype(np.float32)
    reg = rng.uniform(0, 1, (2, 2, 12, 20)).astype(np.float32)
    heat, wh2, reg2 = combine_flip(hm, wh, reg)
    ref = upstream_flip(hm, wh, reg)
    assert heat.shape == (1, 80, 12, 20) and heat.dtype == np.float32
    # float32 sigmoids of numpy and torch may differ in the last bit (one
    # step, 6e-8, below 1); after the sum and halving that is at most 2 eps.
    np.testing.assert_allclose(heat, ref[0], rtol=0, atol=2 * np.finfo(np.float32).eps)
    np.testing.assert_array_equal(wh2, ref[1])  # the same float32 add and halving
    np.testing.assert_array_equal(reg2, ref[2])


def test_combine_flip_per_image_in_a_batch():
    rng = np.random.default_rng(1)
    hm, wh, reg = (rng.normal(size=(6, c, 5, 7)).astype(np.float32) for c in (3, 2, 2))
    heat, wh2, reg2 = combine_flip(hm, wh, reg)  # images 0..2, mirrors 3..5
    for i in range(3):
        one = combine_flip(hm[[i, i + 3]], wh[[i, i + 3]], reg[[i, i + 3]])
        np.testing.assert_array_equal(heat[i], one[0][0])
        np.testing.assert_array_equal(wh2[i], one[1][0])
        np.testing.assert_array_equal(reg2[i], one[2][0])


def test_flip_test_in_onnx_runtime_equals_hand_computation_with_pytorch(random_ctdet, ctdet_onnx_dynamic):
    """The streaming flip test (flip_batch -> ONNX Runtime -> combine_flip) on
    a keep-resolution-sized photo input, against the PyTorch model run on the
    image and, separately, on its mirror, averaged by hand (float64)."""
    from conftest import assert_close_to_reference, hand_flip_test
    x = photo_inputs(1, (64, 96), seed=2)
    session = make_session(ctdet_onnx_dynamic, threads=2)
    got = combine_flip(*run_session(session, flip_batch(x)))
    # ONNX Runtime vs PyTorch: float32 rounding, relative to each map's magnitude
    assert_close_to_reference(got, *hand_flip_test(random_ctdet, x))


def test_mode_names_published_ap_and_cost():
    assert TestMode(input_size=(512, 512)).name == "fixed 512" and TestMode().published_ap == 36.6
    assert TestMode().name == "fixed"  # the model's own size, which the predictor settles
    assert TestMode(keep_res=True).published_ap == 37.4
    assert TestMode(keep_res=True, flip=True).published_ap == 39.2
    ms = TestMode(keep_res=True, flip=True, scales=UPSTREAM_SCALES)
    assert ms.name == "keep-res + flip + scales 0.5,0.75,1,1.25,1.5" and ms.published_ap == 41.7
    assert ms.cost_ratio == pytest.approx(2 * (0.25 + 0.5625 + 1 + 1.5625 + 2.25))
    # upstream publishes nothing for these
    assert TestMode(flip=True).published_ap is None
    assert TestMode(keep_res=True, flip=True, scales=(0.5, 1.0)).published_ap is None
    assert TestMode(input_size=(384, 384)).name == "fixed 384"
    assert TestMode(input_size=(384, 384)).published_ap is None


def test_parse_scales():
    assert parse_scales("0.5,0.75,1,1.25,1.5") == UPSTREAM_SCALES
    assert parse_scales("1") == (1.0,)
    for bad in ("", "a,b", "0,1", "-1", "1,1"):
        with pytest.raises(UserError, match="--scales"):
            parse_scales(bad)
