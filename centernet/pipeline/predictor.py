"""The one path from pixels to detections: prepare an image for a test mode,
batch inputs by shape, run the session, decode, map back onto the image,
merge the scales.

Every runner composes these pieces: the staged scripts (the decoding half,
on ais_bench's output bins), the streaming evaluation, Ray Data, the demo
and the mode benchmark. A test mode or a backend capability added here works
in all of them.

- InputSpec prepares one image at one test scale (picklable: worker
  processes and Ray tasks take it);
- batches_by_shape is the one batching rule: consecutive inputs of one shape;
- Decoder turns a batch's raw outputs into Detections on the images and
  merges an image's scales (picklable, numpy only);
- Predictor puts a Session, an InputSpec and a Decoder together, after
  checking once that the model can serve the test mode.
"""
import logging
from dataclasses import dataclass

import cv2
import numpy as np

from centernet.constants import COCO_MEAN, COCO_STD, DOWN_RATIO, INPUT_SIZE, K, KEEP_RES_PAD
from centernet.core.decode import decode_ctdet, detections_to_coco, map_boxes_to_image
from centernet.core.model_facts import ModelFacts
from centernet.core.modes import TestMode, combine_flip, flip_batch
from centernet.core.pose import (combine_flip_pose, decode_multi_pose, map_joints_to_image, merge_pose, pose_rows,
                                 pose_to_coco)
from centernet.core.soft_nms import detections_by_class, merge_detections
from centernet.core.transforms import prepare_input, test_geometry, warp_input
from centernet.errors import UserError

logger = logging.getLogger(__name__)

UNREADABLE = "cannot read or decode the image (corrupt, empty or not an image)"
EXPORT_DYNAMIC_HINT = "python CenterNet_pth2onnx.py CHECKPOINT.pth CenterNet_dynamic.onnx --dynamic-size"


# --- preparing inputs ----------------------------------------------------------

@dataclass
class Prepared:
    """One network input: an image at one test scale, and the geometry that
    maps its outputs back onto the image. tensor: float32 (3, H, W), or
    uint8 (H, W, 3) warped BGR for a session that normalises on its device."""
    tensor: np.ndarray
    center: np.ndarray
    scale: object        # a number (fixed size) or (sx, sy) (keep resolution)
    out_hw: tuple        # output map (height, width)

    @property
    def geometry(self):
        return self.center, self.scale, self.out_hw


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes its network inputs, one per test scale: the
    test mode's geometry and the model's own settings (mean and std for the
    B, G, R channels, the keep-resolution padding; ModelFacts)."""
    input_size: tuple = (INPUT_SIZE, INPUT_SIZE)
    keep_res: bool = False
    scales: tuple = (1.0,)
    warped: bool = False
    mean: tuple = COCO_MEAN
    std: tuple = COCO_STD
    pad: int = KEEP_RES_PAD

    @classmethod
    def for_model(cls, facts, mode, warped=False):
        """The spec of a resolved TestMode for a model of these ModelFacts."""
        return cls(tuple(mode.input_size), mode.keep_res, tuple(mode.scales), warped, tuple(facts.mean),
                   tuple(facts.std), facts.pad)

    def input_hw(self, height, width, scale_index=0):
        """The input size of an image of height x width at one scale, without reading it."""
        return test_geometry(height, width, self.input_size, self.keep_res, self.scales[scale_index], self.pad)[2]

    def prepare(self, image, source, scale_index=0):
        """A BGR image -> (Prepared, None), or (None, one error line naming `source`)."""
        try:
            if self.warped:
                tensor, center, scale, (in_h, in_w) = warp_input(image, self.input_size, self.keep_res,
                                                                 self.scales[scale_index], pad=self.pad)
            else:
                tensor, center, scale, (in_h, in_w) = prepare_input(image, self.input_size, self.keep_res,
                                                                    self.scales[scale_index], mean=self.mean,
                                                                    std=self.std, pad=self.pad)
                tensor = tensor[0]
        except ValueError as e:
            return None, f"{source}: {e}"
        except cv2.error as e:
            return None, f"{source}: OpenCV cannot process the image ({e.err})"
        return Prepared(tensor, center, scale, (in_h // DOWN_RATIO, in_w // DOWN_RATIO)), None


def batches_by_shape(items, shape_of, batch_size):
    """Consecutive runs of `items` (any iterable, consumed lazily) whose
    shape_of(item) is the same, at most batch_size long: the one batching
    rule. A full batch is given out before the next item is read (a stream
    never waits for an input it does not need yet). Sort the items by shape
    first to batch all of a shape together."""
    batch, shape = [], None
    for item in items:
        s = shape_of(item)
        if batch and s != shape:
            yield batch
            batch = []
        batch.append(item)
        shape = s
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- decoding ------------------------------------------------------------------

ROW_WIDTH = 6  # to_rows: x1, y1, x2, y2, score, class; a multi_pose row adds the joints' x, y


@dataclass
class Detections:
    """One image's detections: scores (N,) float32, class indices (N,) int64
    and boxes (N, 4) x1, y1, x2, y2 in image pixels. Decoded at one scale
    they are best first (boxes float64 from the inverse affine); merged
    across scales, class by class as upstream lists them (boxes float32).
    joints: a multi_pose model's (N, 17, 2) keypoints x, y in image pixels
    (None for ctdet); its merged detections are upstream's float32 rows, in
    its order."""
    scores: np.ndarray
    classes: np.ndarray
    boxes: np.ndarray
    joints: np.ndarray = None

    def __len__(self):
        return len(self.scores)

    def __iter__(self):  # scores, classes, boxes = detections
        return iter((self.scores, self.classes, self.boxes))

    def best_first(self):
        order = np.argsort(-self.scores, kind="stable")
        joints = None if self.joints is None else self.joints[order]
        return Detections(self.scores[order], self.classes[order], self.boxes[order], joints)

    def to_coco(self, image_id, category_ids, upstream_rounding=False):
        """COCO results entries (see core.decode.detections_to_coco); with
        joints, keypoint results (core.pose.pose_to_coco) of the first category."""
        if self.joints is not None:
            return pose_to_coco(image_id, pose_rows(self.scores, self.boxes, self.joints),
                                int(np.asarray(category_ids)[0]), upstream_rounding)
        return detections_to_coco(image_id, self.scores, self.classes, self.boxes, category_ids, upstream_rounding)

    def to_rows(self):
        """(N, 6) float64 [x1, y1, x2, y2, score, class], and with joints the
        34 joint coordinates after them: every value exact, for transport."""
        parts = [self.boxes, self.scores, self.classes]
        if self.joints is not None:
            parts.append(np.reshape(self.joints, (len(self.scores), -1)))
        width = ROW_WIDTH + (0 if self.joints is None else parts[-1].shape[1])
        return np.column_stack(parts).astype(np.float64).reshape(-1, width)

    @classmethod
    def from_rows(cls, rows, merged=False):
        rows = np.asarray(rows, dtype=np.float64)
        rows = rows.reshape(-1, rows.shape[-1] if rows.ndim == 2 else ROW_WIDTH)
        if rows.shape[1] > ROW_WIDTH:  # multi_pose: upstream's float32 rows
            joints = rows[:, ROW_WIDTH:].astype(np.float32).reshape(len(rows), -1, 2)
            return cls(rows[:, 4].astype(np.float32), rows[:, 5].astype(np.int64), rows[:, :4].astype(np.float32),
                       joints)
        boxes = rows[:, :4].astype(np.float32) if merged else rows[:, :4]
        return cls(rows[:, 4].astype(np.float32), rows[:, 5].astype(np.int64), boxes)


@dataclass(frozen=True)
class Decoder:
    """Raw outputs of a batch -> Detections per input, and an image's scales
    merged. numpy_flip: the batch ran as flip_batch (its mirror is averaged
    in here); hm_is_heat: a flip test, whose heatmap has had its sigmoid
    (multi_pose: hm_hp too). task: "ctdet", or "multi_pose" (upstream's
    multi_pose_decode, post-process and merge; core.pose)."""
    num_classes: int
    K: int = K
    numpy_flip: bool = False
    hm_is_heat: bool = False
    scales: tuple = (1.0,)
    task: str = "ctdet"

    def decode(self, outputs, geometries, decoded=False):
        """outputs of one batch (or, decoded, decode_ctdet's result from the
        device) -> [Detections] per input; geometries[i] = (center, scale, (out_h, out_w))."""
        if self.task == "multi_pose":
            return self._decode_pose(outputs, geometries)
        if decoded:
            scores, classes, boxes = outputs
        else:
            hm, wh, reg = combine_flip(*outputs) if self.numpy_flip else outputs
            scores, classes, boxes = decode_ctdet(hm, wh, reg, K=self.k_for(hm.shape[2:]), hm_is_heat=self.hm_is_heat)
        return [Detections(scores[i], classes[i], map_boxes_to_image(boxes[i], center, scale, (out_w, out_h)))
                for i, (center, scale, (out_h, out_w)) in enumerate(geometries)]

    def _decode_pose(self, outputs, geometries):
        heads = combine_flip_pose(*outputs) if self.numpy_flip else outputs
        scores, boxes, joints = decode_multi_pose(*heads, K=self.k_for(heads[0].shape[2:]),
                                                  hm_is_heat=self.hm_is_heat)
        none = np.zeros(scores.shape[1], np.int64)
        return [Detections(scores[i], none, map_boxes_to_image(boxes[i], center, scale, (out_w, out_h)),
                           map_joints_to_image(joints[i], center, scale, (out_w, out_h)))
                for i, (center, scale, (out_h, out_w)) in enumerate(geometries)]

    def k_for(self, out_hw):
        """K, or fewer where the output map has fewer positions (keep
        resolution: a tiny image's map is 8x8 at least)."""
        return min(self.K, int(out_hw[0]) * int(out_hw[1]))

    def merge(self, per_scale):
        """One image's Detections at each test scale (scale order) -> its
        result: the one scale as it is, or upstream's multi-scale merge
        (soft-NMS per class, top 100 overall), class by class. multi_pose:
        upstream's rows (float32, divided by the scale), soft_nms_39 over all
        scales' rows when there are several, every row kept."""
        if self.task == "multi_pose":
            rows = merge_pose([pose_rows(d.scores, d.boxes, d.joints) for d in per_scale], self.scales)
            return Detections(rows[:, 4], np.zeros(len(rows), np.int64), rows[:, :4],
                              rows[:, 5:].reshape(len(rows), -1, 2))
        if len(self.scales) == 1:
            return per_scale[0]
        merged = merge_detections([detections_by_class(d.scores, d.classes, d.boxes, self.num_classes, scale=t)
                                   for d, t in zip(per_scale, self.scales)])
        classes = sorted(j for j in merged if len(merged[j]))
        if not classes:
            return Detections(np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
        rows = np.concatenate([merged[j] for j in classes])
        return Detections(rows[:, 4], np.concatenate([np.full(len(merged[j]), j, np.int64) for j in classes]),
                          rows[:, :4])


# --- the model and the mode ------------------------------------------------------

def resolve_mode(capabilities, model_name, mode):
    """Check that a model can serve `mode` and settle what runs where.
    Returns (mode, numpy_flip): a model with the flip test in its graph
    makes every run a flip test (and needs no mirror outside it); a fixed
    mode runs at the model's own fixed size, or where the model takes any
    size, at mode.input_size or (None) the size the model records (ModelFacts)."""
    fixed = capabilities.input_size
    facts = capabilities.facts or ModelFacts()
    if mode.keep_res and fixed is not None:
        raise UserError(f"{model_name}: fixed {fixed[0]}x{fixed[1]} input, but --keep-res feeds each image at its own "
                        f"size; export a model with a dynamic height and width: {EXPORT_DYNAMIC_HINT}, or give "
                        "the .pth checkpoint as --model")
    if fixed is not None and not mode.keep_res:
        input_size = tuple(fixed)
    else:
        input_size = tuple(mode.input_size or facts.input_size)
    multiple = facts.input_multiple
    if not mode.keep_res and (min(input_size) <= 0 or any(v % multiple for v in input_size)):
        raise UserError(f"input size {input_size[0]}x{input_size[1]}: height and width must be positive "
                        f"multiples of {multiple}{' for ' + facts.network if multiple != 32 else ''}")
    in_graph = capabilities.flip_in_graph
    if in_graph and not mode.flip:
        logger.info(f"note: {model_name} has the flip test in its graph (exported with --flip): this is a flip test")
    mode = TestMode(mode.keep_res, mode.flip or in_graph, tuple(mode.scales), input_size)
    return mode, mode.flip and not in_graph


class Predictor:
    """A session in one test mode: prepare, run, decode, merge."""

    def __init__(self, session, mode=TestMode(), K=K):
        self.session = session
        caps = session.capabilities
        self.mode, numpy_flip = resolve_mode(caps, session.name, mode)
        # A session that decodes on its device makes and averages in a flip
        # test's mirror there too; otherwise the mirror is made in numpy, from
        # float32 inputs.
        self.device_decode = caps.decodes_on_device
        self.numpy_flip = numpy_flip
        warped = caps.accepts_warped and (self.device_decode or not numpy_flip)
        self.spec = InputSpec.for_model(caps.facts or ModelFacts(), self.mode, warped)
        self.decoder = Decoder(caps.num_classes, K, numpy_flip, self.mode.flip, tuple(self.mode.scales), caps.task)

    @property
    def num_classes(self):
        return self.decoder.num_classes

    @property
    def facts(self):
        """The model's ModelFacts (network, classes, names, settings); COCO
        DLA-34's for a model file that records none (an .om)."""
        return self.session.capabilities.facts or ModelFacts()

    @property
    def random_weights(self):
        """The model has random weights: its detections mean nothing (Capabilities.random_weights)."""
        return self.session.capabilities.random_weights

    def run(self, prepared):
        """Inputs of one shape -> the session's outputs (decode_ctdet's, where
        it decodes on its device)."""
        x = np.stack([p.tensor for p in prepared])
        if self.device_decode:
            return self.session.run_decoded(x, self.decoder.k_for(prepared[0].out_hw), warped=self.spec.warped,
                                            flip=self.numpy_flip)
        if self.spec.warped:
            return self.session.run_warped(x)
        return self._run_float(flip_batch(x) if self.numpy_flip else x)

    def _run_float(self, x):
        """session.run, in pieces of a fixed-batch model's batch (the last
        one zero-padded), outputs cut back to the inputs."""
        batch = self.session.capabilities.static_batch
        if batch is None or len(x) == batch:
            return self.session.run(x)
        pieces = []
        for i in range(0, len(x), batch):
            part = x[i:i + batch]
            n = len(part)
            if n < batch:
                part = np.concatenate([part, np.zeros((batch - n, *part.shape[1:]), part.dtype)])
            pieces.append([o[:n] for o in self.session.run(part)])
        return [np.concatenate(outs) for outs in zip(*pieces)]

    def decode(self, prepared, outputs):
        """run()'s outputs -> [Detections] per input, on its image."""
        return self.decoder.decode(outputs, [p.geometry for p in prepared], decoded=self.device_decode)

    def predict(self, prepared):
        """Inputs of one shape -> [Detections] per input."""
        return self.decode(prepared, self.run(prepared))

    def detect(self, images, batch_size=1, sources=None):
        """BGR images -> (Detections of each, every scale merged; error
        lines). An image that cannot be prepared gets None and its error."""
        sources = sources or [f"image {i}" for i in range(len(images))]
        units, errors, failed = [], [], set()
        for n, image in enumerate(images):
            for s in range(len(self.spec.scales)):
                prepared, err = self.spec.prepare(image, sources[n], s)
                if err:
                    errors.append(err)
                    failed.add(n)
                    break
                units.append(((n, s), prepared))
        units = [u for u in units if u[0][0] not in failed]
        units.sort(key=lambda u: (u[1].tensor.shape, u[0]))
        parts = {}
        for batch in batches_by_shape(units, lambda u: u[1].tensor.shape, batch_size):
            for (key, _), found in zip(batch, self.predict([p for _, p in batch])):
                parts[key] = found
        scales = range(len(self.spec.scales))
        results = [None if n in failed else self.decoder.merge([parts[(n, s)] for s in scales])
                   for n in range(len(images))]
        return results, errors


def open_predictor(model, mode=TestMode(), backend=None, device="cpu", threads=0, torch_options=None,
                   cache_fallback=None, input_size_given=True, K=K):
    """A Predictor on an .onnx model, or on a .pth checkpoint: run by
    PyTorch (backend torch), or exported once for ONNX Runtime (cached next
    to it, with a dynamic input size for keep resolution)."""
    from centernet.runtime.backends import default_backend, open_ort_session, open_session
    backend = backend or default_backend(model)
    input_size_given = input_size_given and mode.input_size is not None
    if backend == "torch":
        size = None if mode.keep_res or mode.input_size is None else tuple(mode.input_size)
        session = open_session(model, "torch", device=device, threads=threads, input_size=size,
                               torch_options=torch_options)
        return Predictor(session, mode, K=K)
    if default_backend(model) == "torch":  # a checkpoint for ONNX Runtime: the cached export
        from centernet.convert.cache import cached_export
        model = cached_export(model, dynamic_size=mode.keep_res, input_size=mode.input_size, threads=threads,
                              fallback_folder=cache_fallback)
    session = open_ort_session(model, device=device, threads=threads)
    fixed = session.capabilities.input_size
    if fixed is not None and input_size_given and not mode.keep_res and tuple(mode.input_size) != tuple(fixed):
        raise UserError(f"{model}: fixed {fixed[0]}x{fixed[1]} input; --input-size {mode.input_size[0]} "
                        f"{mode.input_size[1]} does not match")
    return Predictor(session, mode, K=K)
