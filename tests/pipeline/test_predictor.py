"""centernet.pipeline.predictor: the one path from pixels to detections, and
the Session interface every backend implements (ONNX Runtime, PyTorch,
ais_bench) as the predictor reads it."""

import cv2
import numpy as np
import pytest

from conftest import stand_in_om_session
from centernet.core.decode import decode_ctdet, map_boxes_to_image
from centernet.core.modes import TestMode, combine_flip, flip_batch
from centernet.core.soft_nms import detections_by_class, merge_detections
from centernet.core.transforms import prepare_input, warp_input
from centernet.errors import Interrupted, UserError
from centernet.io.blocks import BlockStore
from centernet.pipeline.jobs import EvaluationJob
from centernet.pipeline.predictor import (Decoder, Detections, InputSpec, Predictor, batches_by_shape,
                                          resolve_mode)
from centernet.pipeline.stream import run_stream
from centernet.runtime.ort_session import OrtSession, make_session
from centernet.runtime.session import Capabilities, Session

SMALL = (128, 128)


def test_batches_by_shape_takes_consecutive_runs_lazily():
    items = iter([(1, "a"), (1, "b"), (1, "c"), (2, "d"), (1, "e")])
    batches = batches_by_shape(items, lambda x: x[0], 2)
    assert next(batches) == [(1, "a"), (1, "b")]
    assert list(items) == [(1, "c"), (2, "d"), (1, "e")]  # nothing read beyond the first full batch
    items = [(1, "a"), (1, "b"), (1, "c"), (2, "d"), (1, "e")]
    assert [[v for _, v in b] for b in batches_by_shape(items, lambda x: x[0], 2)] == [["a", "b"], ["c"], ["d"],
                                                                                         ["e"]]
    assert list(batches_by_shape([], lambda x: x, 3)) == []


def test_detections_survive_transport_exactly():
    rng = np.random.default_rng(0)
    d = Detections(rng.random(7, dtype=np.float32), rng.integers(0, 80, 7), rng.random((7, 4)) * 500)
    back = Detections.from_rows(d.to_rows())
    assert back.scores.tobytes() == d.scores.tobytes() and back.classes.tolist() == d.classes.tolist()
    assert back.boxes.tobytes() == d.boxes.tobytes()
    assert d.to_coco(5, list(range(1, 81))) == back.to_coco(5, list(range(1, 81)))


def test_decoder_is_decode_ctdet_then_the_inverse_affine_and_the_merge_is_upstreams():
    rng = np.random.default_rng(1)
    hm = rng.normal(-4, 2, (2, 80, 16, 12)).astype(np.float32)
    wh = rng.uniform(1, 30, (2, 2, 16, 12)).astype(np.float32)
    reg = rng.uniform(0, 1, (2, 2, 16, 12)).astype(np.float32)
    geometries = [(np.array([40.0, 30.0]), 100.0, (16, 12)), (np.array([20.0, 50.0]), 120.0, (16, 12))]
    got = Decoder(80, K=100).decode([hm, wh, reg], geometries)
    scores, classes, boxes = decode_ctdet(hm, wh, reg, K=100)
    for i, (center, scale, _) in enumerate(geometries):
        assert got[i].scores.tobytes() == scores[i].tobytes() and got[i].classes.tolist() == classes[i].tolist()
        assert got[i].boxes.tobytes() == map_boxes_to_image(boxes[i], center, scale, (12, 16)).tobytes()
    # a flip batch (the inputs, then their mirrors): averaged as upstream, after the sigmoid
    flipped = Decoder(80, K=50, numpy_flip=True, hm_is_heat=True).decode(
        [np.concatenate([hm, hm]), np.concatenate([wh, wh]), np.concatenate([reg, reg])], geometries)
    heat, fwh, freg = combine_flip(np.concatenate([hm, hm]), np.concatenate([wh, wh]), np.concatenate([reg, reg]))
    assert flipped[0].scores.tobytes() == decode_ctdet(heat, fwh, freg, K=50, hm_is_heat=True)[0][0].tobytes()
    # K is clamped to a small output map
    tiny = Decoder(80, K=100).decode([hm[:1, :, :2, :3], wh[:1, :, :2, :3], reg[:1, :, :2, :3]],
                                     [(np.zeros(2), 10.0, (2, 3))])
    assert len(tiny[0]) == 6
    # two scales: soft-NMS per class, then top 100, class by class
    decoder = Decoder(80, scales=(0.5, 1.0))
    merged = decoder.merge(got)
    want = merge_detections([detections_by_class(d.scores, d.classes, d.boxes, 80, scale=t)
                             for d, t in zip(got, (0.5, 1.0))])
    rows = np.concatenate([want[j] for j in sorted(want) if len(want[j])])
    assert merged.boxes.tobytes() == rows[:, :4].tobytes() and merged.scores.tobytes() == rows[:, 4].tobytes()
    assert Decoder(80).merge([got[0]]) is got[0]


class FakeSession(Session):
    """A Session of declared capabilities whose outputs are a fixed function
    of its input, recording what it was given."""

    def __init__(self, caps):
        self._caps, self.calls = caps, []

    @property
    def capabilities(self):
        return self._caps

    def _outputs(self, x):
        n, _, h, w = x.shape
        base = x.astype(np.float32).mean(axis=1, keepdims=True)[:, :, ::4, ::4]
        hm = np.repeat(base, 80, axis=1) - 3 + np.arange(80, dtype=np.float32)[None, :, None, None] / 80
        return [hm, np.full((n, 2, h // 4, w // 4), 8, np.float32), np.full((n, 2, h // 4, w // 4), 0.5, np.float32)]

    def run(self, batch):
        self.calls.append(("run", batch.shape, batch.dtype))
        return self._outputs(batch)

    def run_warped(self, batch):
        self.calls.append(("run_warped", batch.shape, batch.dtype))
        from centernet.core.transforms import normalise_to_chw
        return self._outputs(np.concatenate([normalise_to_chw(b) for b in batch]))

    def describe(self):
        return {"backend": "fake"}


def photo(h=100, w=140, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_the_predictor_uses_what_a_session_declares():
    image = photo()
    plain = Predictor(FakeSession(Capabilities(input_size=SMALL)))
    warped = Predictor(FakeSession(Capabilities(input_size=SMALL, accepts_warped=True)))
    a, _ = plain.detect([image])
    b, _ = warped.detect([image])
    assert plain.session.calls == [("run", (1, 3, 128, 128), np.float32)]
    assert warped.session.calls == [("run_warped", (1, 128, 128, 3), np.uint8)]
    assert a[0].scores.tobytes() == b[0].scores.tobytes() and a[0].boxes.tobytes() == b[0].boxes.tobytes()
    # a flip test outside the graph mirrors float32 inputs (never warped ones) and averages them in
    flip = Predictor(FakeSession(Capabilities(input_size=SMALL, accepts_warped=True)), TestMode(flip=True))
    flip.detect([image])
    assert flip.session.calls == [("run", (2, 3, 128, 128), np.float32)]
    # a model with the flip test in its graph: every run is a flip test, and no mirror is made here
    in_graph = Predictor(FakeSession(Capabilities(input_size=SMALL, flip_in_graph=True)))
    assert in_graph.mode.flip and not in_graph.numpy_flip and in_graph.decoder.hm_is_heat


def test_a_mode_the_model_cannot_serve_is_one_error():
    with pytest.raises(UserError, match="fixed 128x128 input, but --keep-res"):
        resolve_mode(Capabilities(input_size=SMALL), "m.onnx", TestMode(keep_res=True))
    with pytest.raises(UserError, match="multiples of 32"):
        resolve_mode(Capabilities(), "m.onnx", TestMode(input_size=(100, 128)))
    mode, numpy_flip = resolve_mode(Capabilities(input_size=SMALL), "m.onnx", TestMode(flip=True))
    assert mode.input_size == SMALL and numpy_flip  # a fixed model runs at its own size


def test_input_spec_prepares_as_the_transforms_do():
    image = photo(90, 170)
    for keep_res in (False, True):
        for t in (0.5, 1.0):
            spec = InputSpec((128, 128), keep_res, (1.0, t))
            prepared, err = spec.prepare(image, "x.jpg", 1)
            tensor, center, scale, (in_h, in_w) = prepare_input(image, (128, 128), keep_res, t)
            assert err is None and prepared.tensor.tobytes() == tensor[0].tobytes()
            assert prepared.out_hw == (in_h // 4, in_w // 4) and spec.input_hw(90, 170, 1) == (in_h, in_w)
            warped, _ = InputSpec((128, 128), keep_res, (1.0, t), warped=True).prepare(image, "x.jpg", 1)
            assert warped.tensor.tobytes() == warp_input(image, (128, 128), keep_res, t)[0].tobytes()
    _, err = InputSpec(scales=(0.001,)).prepare(photo(20, 20), "small.jpg")
    assert err.startswith("small.jpg: test scale")


def test_every_backend_through_the_predictor_gives_onnx_runtimes_detections(ctdet_onnx, synthetic_coco):
    """ONNX Runtime's session, and ais_bench's interface (here a stand-in
    module over the same ONNX file, as an .om of it would be), give the same
    detections through the predictor."""
    om = stand_in_om_session(ctdet_onnx, (1, 3, 512, 512), [(1, c, 128, 128) for c in (80, 2, 2)])
    # An .om records no facts (the predictor takes COCO DLA-34's)
    assert om.capabilities == Capabilities(input_size=(512, 512), static_batch=1, facts=None)
    ort = OrtSession(make_session(ctdet_onnx, threads=2))
    images = [cv2.imread(str(p)) for p in sorted(synthetic_coco["images_dir"].iterdir())[:2]]
    a, _ = Predictor(ort).detect(images)
    b, _ = Predictor(om).detect(images)
    for x, y in zip(a, b):
        assert x.scores.tobytes() == y.scores.tobytes() and x.boxes.tobytes() == y.boxes.tobytes()


class InterruptAfter(OrtSession):
    """An ONNX Runtime session that is 'interrupted' (Ctrl-C) at its n-th run."""

    def __init__(self, inner, n):
        super().__init__(inner)
        self.n, self.runs = n, 0

    def run(self, batch):
        self.runs += 1
        if self.runs == self.n:
            raise KeyboardInterrupt
        return super().run(batch)


def test_the_streaming_evaluation_resumes_from_its_finished_blocks(small_onnx_128, synthetic_coco, tmp_path):
    job = EvaluationJob(synthetic_coco["annotation_file"], synthetic_coco["images_dir"], limit=6)
    key = {"model": "m", **job.key}
    inner = make_session(small_onnx_128, threads=2)
    whole, _ = run_stream(Predictor(OrtSession(inner), TestMode(input_size=SMALL)), job, block_size=2,
                          progress=False)
    out = tmp_path / "results.json"
    stopped = InterruptAfter(inner, 5)  # blocks of 2 images, batch 1: two blocks finish first
    with pytest.raises(Interrupted, match=r"2 of 3 block\(s\) finished, kept in .*results.json.parts"):
        run_stream(Predictor(stopped, TestMode(input_size=SMALL)), job, store=BlockStore(out, key), block_size=2,
                   progress=False)
    again = InterruptAfter(inner, 0)
    parts, stats = run_stream(Predictor(again, TestMode(input_size=SMALL)), job, store=BlockStore(out, key),
                              block_size=2, progress=False)
    assert again.runs == 2 and stats["blocks_resumed"] == 2  # only the third block ran
    assert [{k: part[k] for k in ("entries", "errors")} for part in parts] == whole
    # another model's blocks are not reused
    parts, stats = run_stream(Predictor(OrtSession(inner), TestMode(input_size=SMALL)), job,
                              store=BlockStore(out, {**key, "model": "other"}), block_size=2, progress=False)
    assert stats["blocks_resumed"] == 0 and parts == whole  # all run again, none read back


@pytest.fixture(scope="module")
def small_onnx_128(random_ctdet, tmp_path_factory):
    from centernet.convert.export import export_onnx
    path = tmp_path_factory.mktemp("onnx_128") / "CenterNet_128.onnx"
    export_onnx(random_ctdet, path, input_size=SMALL)
    return path


def test_a_flip_batch_is_the_inputs_then_their_mirrors():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    assert flip_batch(x)[2:].tobytes() == np.ascontiguousarray(x[..., ::-1]).tobytes()
