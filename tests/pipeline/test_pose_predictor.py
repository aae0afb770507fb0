"""The predictor on a multi_pose model: the same one path as ctdet, with
upstream's multi_pose decoding, flip and merge (core.pose) in its Decoder,
on every backend and test mode."""
import numpy as np
import pytest

from conftest import calibrated_pose_network, stand_in_om_session
from centernet.constants import POSE_CHANNELS as CHANNELS, POSE_HEADS
from centernet.convert.export import export_onnx
from centernet.core.decode import map_boxes_to_image
from centernet.core.modes import TestMode
from centernet.core.pose import (combine_flip_pose, decode_multi_pose, map_joints_to_image, merge_pose, pose_rows,
                                 pose_to_coco)
from centernet.io.synthetic import synthetic_photo
from centernet.pipeline.predictor import Decoder, Detections, Predictor
from centernet.runtime.ort_session import open_ort_session
from centernet.runtime.torch_session import TorchSession

POSE_CHANNELS = tuple(CHANNELS[h] for h in POSE_HEADS)


def _raw_outputs(rng, n, h, w):
    """Raw heads at a trained network's scales: logits mostly -6..-1, sizes
    and joint offsets of tens of pixels, sub-pixel offsets."""
    hm = rng.normal(-4, 2, (n, 1, h, w))
    wh = rng.uniform(2, 30, (n, 2, h, w))
    hps = rng.normal(0, 8, (n, 34, h, w))
    reg = rng.uniform(0, 1, (n, 2, h, w))
    hm_hp = rng.normal(-4, 2.5, (n, 17, h, w))
    hp_offset = rng.uniform(0, 1, (n, 2, h, w))
    return [a.astype(np.float32) for a in (hm, wh, hps, reg, hm_hp, hp_offset)]


def test_the_decoder_is_multi_pose_decode_then_the_inverse_affine_and_upstreams_merge():
    rng = np.random.default_rng(0)
    outputs = _raw_outputs(rng, 2, 16, 20)
    geometries = [(np.array([40.0, 30.0]), 100.0, (16, 20)), (np.array([25.0, 45.0]), 90.0, (16, 20))]
    decoder = Decoder(1, K=40, task="multi_pose")
    got = decoder.decode(outputs, geometries)
    scores, boxes, joints = decode_multi_pose(*outputs, K=40)
    for i, (center, scale, _) in enumerate(geometries):
        assert got[i].scores.tobytes() == scores[i].tobytes() and not got[i].classes.any()
        assert got[i].boxes.tobytes() == map_boxes_to_image(boxes[i], center, scale, (20, 16)).tobytes()
        assert got[i].joints.tobytes() == map_joints_to_image(joints[i], center, scale, (20, 16)).tobytes()
    # one scale: upstream's float32 rows, every one kept
    one = decoder.merge([got[0]])
    rows = pose_rows(got[0].scores, got[0].boxes, got[0].joints)
    assert len(one) == 40 and one.boxes.dtype == np.float32
    assert np.column_stack([one.boxes, one.scores, one.joints.reshape(40, -1)]).tobytes() == rows.tobytes()
    # scales: soft_nms_39 over all scales' rows, no top-100 cut
    multi = Decoder(1, K=40, scales=(0.5, 1.0), task="multi_pose").merge(got)
    expected = merge_pose([pose_rows(d.scores, d.boxes, d.joints) for d in got], (0.5, 1.0))
    assert len(multi) == 80 and multi.scores.tobytes() == expected[:, 4].tobytes()
    assert multi.joints.reshape(80, -1).tobytes() == expected[:, 5:].tobytes()
    # a flip batch: combine_flip_pose, then the heatmaps decode as heat
    flip_outputs = [np.concatenate([a, a[:, :, :, ::-1]]) for a in outputs]
    flipped = Decoder(1, K=40, numpy_flip=True, hm_is_heat=True, task="multi_pose").decode(flip_outputs, geometries)
    scores, boxes, joints = decode_multi_pose(*combine_flip_pose(*flip_outputs), K=40, hm_is_heat=True)
    assert flipped[1].scores.tobytes() == scores[1].tobytes()
    assert flipped[1].joints.tobytes() == map_joints_to_image(joints[1], *geometries[1][:2], (20, 16)).tobytes()


def test_pose_detections_survive_transport_and_become_keypoint_results():
    rng = np.random.default_rng(1)
    d = Detections(rng.random(5, dtype=np.float32), np.zeros(5, np.int64),
                   (rng.random((5, 4)) * 300).astype(np.float32), (rng.random((5, 17, 2)) * 300).astype(np.float32))
    rows = d.to_rows()
    assert rows.shape == (5, 6 + 34)
    back = Detections.from_rows(rows)
    assert back.joints.tobytes() == d.joints.tobytes() and back.boxes.tobytes() == d.boxes.tobytes()
    entries = back.to_coco(7, [1])
    assert entries == pose_to_coco(7, pose_rows(d.scores, d.boxes, d.joints), 1)
    assert len(entries[0]["keypoints"]) == 51 and entries[0]["category_id"] == 1
    assert Detections.from_rows(np.zeros((0, 6))).joints is None  # an unreadable image's empty row set


@pytest.fixture(scope="module")
def pose_onnx(tmp_path_factory):
    """A calibrated multi_pose ResNet-18 + DCN exported with a dynamic size,
    with and without the flip test in the graph."""
    model = calibrated_pose_network("resdcn_18")
    folder = tmp_path_factory.mktemp("pose")
    plain, flip = folder / "pose.onnx", folder / "pose_flip.onnx"
    export_onnx(model, plain, input_size=(128, 128), dynamic_size=True)
    export_onnx(model, flip, input_size=(128, 128), dynamic_size=True, flip=True)
    return model, plain, flip


def _photos():
    rng = np.random.default_rng(3)
    return [synthetic_photo(rng, 160, 120)[0], synthetic_photo(rng, 200, 150)[0]]


@pytest.mark.parametrize("mode", [TestMode(input_size=(128, 128)), TestMode(keep_res=True),
                                  TestMode(keep_res=True, flip=True),
                                  TestMode(keep_res=True, flip=True, scales=(0.5, 1.0, 1.5))],
                         ids=lambda m: m.name)
def test_onnx_runtime_and_pytorch_give_the_same_people_in_every_mode(pose_onnx, mode):
    model, plain, flip = pose_onnx
    images = _photos()
    ort, _ = Predictor(open_ort_session(plain), mode).detect(images)
    torch_, _ = Predictor(TorchSession(model, input_size=None), mode).detect(images)
    for a, b in zip(ort, torch_):
        assert a.joints.shape == (len(a), 17, 2) and len(a) == 100 * len(mode.scales)
        # float32 rounding between the backends may swap near-equal people: compare them matched by box
        for i in range(10):
            j = int(np.argmin(np.abs(b.boxes - a.boxes[i]).sum(1)))
            assert abs(float(a.scores[i]) - float(b.scores[j])) <= 1e-4
            assert np.abs(a.boxes[i] - b.boxes[j]).max() <= 0.02
            # a joint may snap in one backend and not the other only at a boundary; most agree
            close = np.abs(a.joints[i] - b.joints[j]).max(axis=1) <= 0.05
            assert close.mean() >= 0.9, (i, np.abs(a.joints[i] - b.joints[j]).max(axis=1))
    if mode.flip:  # the flip test in the graph is the numpy flip test (sigmoids may differ by an ulp)
        in_graph, _ = Predictor(open_ort_session(flip), mode).detect(images)
        for a, c in zip(ort, in_graph):
            assert np.abs(a.scores - c.scores).max() <= 1e-6
            assert np.abs(a.boxes - c.boxes).max() <= 1e-3 and np.abs(a.joints - c.joints).max() <= 1e-3


def test_an_om_of_a_pose_export_needs_no_flag(pose_onnx, tmp_path):
    """An .om keeps no metadata: its six outputs say multi_pose. A fixed-size
    Ascend-style compile of the flip export (ais_bench's interface stood in by
    ONNX Runtime on the same file) gives ONNX Runtime's people."""
    model = calibrated_pose_network("resdcn_18")
    fixed = tmp_path / "pose_flip_128.onnx"
    export_onnx(model, fixed, input_size=(128, 128), flip=True)
    om = stand_in_om_session(fixed, (1, 3, 128, 128), [(1, c, 32, 32) for c in POSE_CHANNELS], flip_in_graph=True)
    assert om.capabilities.facts is None and dict(om.capabilities.heads)["hps"] == 34
    images = _photos()
    got, _ = Predictor(om, TestMode(flip=True)).detect(images)
    expected, _ = Predictor(open_ort_session(fixed), TestMode(flip=True)).detect(images)
    for a, b in zip(got, expected):
        assert a.joints is not None and a.scores.tobytes() == b.scores.tobytes()
        assert a.joints.tobytes() == b.joints.tobytes() and a.boxes.tobytes() == b.boxes.tobytes()
