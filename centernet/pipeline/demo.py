"""The detection demo behind CenterNet_demo.py: images, folders of images and
videos in; annotated copies, detections.json and a line per image out.

The network input is the same as the evaluation's (test transform, ONNX
Runtime session, ctdet decoding, inverse affine back onto the image): fixed
size (512x512 by default) or, with keep_res, the image's own resolution
rounded up to a multiple of 32, which needs an ONNX model with a dynamic input
size. A .pth checkpoint is exported once to an ONNX file next to it (checked
against PyTorch) and reused while the checkpoint is unchanged.

A model with random weights (the demo's; Capabilities.random_weights) gets
a banner on every picture and video frame (visualize.draw_banner),
"random_weights": true in detections.json, and a note in the log.
"""
import logging
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
from tqdm import tqdm

from centernet.constants import RANDOM_WEIGHTS_NOTE, VIS_THRESH
from centernet.core.modes import TestMode
from centernet.errors import UserError
from centernet.io.binio import make_dirs
from centernet.io.media import (DEFAULT_FPS, OutputNames, detections_header, expand_inputs, is_video, load_names,
                                open_video_writer, write_detections_json, write_image)
from centernet.pipeline.jobs import Labels, detections_entry, mode_text
from centernet.pipeline.predictor import open_predictor
from centernet.report.visualize import class_colours, draw_banner, draw_detections


logger = logging.getLogger(__name__)


# --- the model ---------------------------------------------------------------

class DemoModel:
    """A predictor with what the pictures need: class names, colours, the
    mode in words, and whether the weights are random (a banner)."""

    def __init__(self, predictor, names=None):
        self.predictor = predictor
        labels = Labels.for_model(predictor.num_classes, names, predictor.facts.class_names)
        self.names, self.category_ids = labels.names, labels.category_ids
        self.labels = labels
        self.colours = class_colours(predictor.num_classes)
        self.random_weights = predictor.random_weights
        in_graph = predictor.mode.flip and not predictor.numpy_flip
        self.mode = mode_text(predictor.mode) + (" (in the model)" if in_graph else "")

    def detect_many(self, images, sources, batch_size=1):
        """BGR images -> (Detections of each, best first, or None; error lines)."""
        found, errors = self.predictor.detect(images, batch_size=batch_size, sources=sources)
        return [None if d is None else d.best_first() for d in found], errors

    def detect(self, image):
        found, errors = self.detect_many([image], ["image"])
        if errors:
            raise UserError(errors[0])
        return found[0]



def summary_text(dets, thresh, best=None, top=4):
    """'3 above 0.30: 2 person, 1 dog' or 'none above 0.30 (best: cat 0.21)'."""
    if not dets:
        hint = f" (best: {best[0]} {best[1]:.2f})" if best else ""
        return f"none above {thresh:g}{hint}"
    counts = Counter(d["class"] for d in dets).most_common()
    shown = ", ".join(f"{n} {name}" for name, n in counts[:top])
    more = f", +{len(counts) - top} more classes" if len(counts) > top else ""
    return f"{len(dets)} above {thresh:g}: {shown}{more}"


# --- the run -----------------------------------------------------------------

class DemoRun:
    """Detections over many inputs, collected for detections.json."""

    def __init__(self, detector, output, thresh=VIS_THRESH, progress=True, model_name=""):
        self.detector = detector
        self.model_name = str(model_name)
        self.output = make_dirs(output)
        self.names = OutputNames(self.output)
        self.thresh = float(thresh)
        self.progress = progress
        self.entries = []
        self.errors = []
        self.images = self.videos = 0
        self.seconds = 0.0

    def _error(self, line):
        self.errors.append(line)
        logger.error(f"error: {line}")

    def _claim_output(self, src, name):
        out = self.names.take(name)
        try:
            same = out.exists() and out.samefile(src)
        except OSError:
            same = False
        if same:
            self._error(f"{src}: the annotated copy would overwrite the input; choose another --output")
            return None
        return out

    def _draw(self, image, found):
        """(detections.json entries, the annotated picture, the best (name, score))."""
        height, width = image.shape[:2]
        dets, keep = detections_entry(found, self.detector.labels, self.thresh, height, width)
        joints = None if found.joints is None else found.joints[keep]  # a multi_pose model's: skeletons
        drawn = draw_detections(image, found.boxes[keep], found.scores[keep], found.classes[keep],
                                self.detector.names, self.detector.colours, keypoints=joints)
        if self.detector.random_weights:
            drawn = draw_banner(drawn)
        best = (self.detector.names[int(found.classes[0])], float(found.scores[0])) if len(found) else None
        return dets, drawn, best

    def _detect_and_draw(self, image):
        t0 = time.perf_counter()
        found = self.detector.detect(image)
        self.seconds += time.perf_counter() - t0
        return self._draw(image, found)

    def images_batch(self, paths, batch_size=1):
        """Detect on image files together (batch_size inputs of one shape per
        run); write each annotated copy and list its detections."""
        loaded = []
        for path in map(Path, paths):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                self._error(f"{path}: cannot read or decode the image (corrupt, empty or not an image)")
                continue
            out = self._claim_output(path, path.name)
            if out is not None:
                loaded.append((path, image, out))
        if not loaded:
            return
        t0 = time.perf_counter()
        found, errors = self.detector.detect_many([image for _, image, _ in loaded], [str(p) for p, _, _ in loaded],
                                                  batch_size)
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        for line in errors:
            self._error(line)
        for (path, image, out), dets_found in zip(loaded, found):
            if dets_found is None:
                continue
            dets, drawn, best = self._draw(image, dets_found)
            try:
                out = write_image(out, drawn)
            except OSError as e:
                self._error(f"{out}: cannot write ({e.strerror})")
                continue
            height, width = image.shape[:2]
            self.entries.append({"file": str(path), "output": str(out), "width": width, "height": height,
                                 "detections": dets})
            self.images += 1
            logger.info(f"{path.name} ({width}x{height}): {summary_text(dets, self.thresh, best)} "
                     f"[{seconds / len(loaded):.2f}s]")

    def image(self, path):
        self.images_batch([path])

    def video(self, path):
        path = Path(path)
        cap = cv2.VideoCapture(str(path))
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        if not ok or frame is None:
            cap.release()
            self._error(f"{path}: cannot read or decode the video (corrupt, empty or an unknown codec)")
            return
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not (math.isfinite(fps) and fps > 0):
            logger.info(f"{path.name}: no frame rate stated; writing {DEFAULT_FPS:g} fps")
            fps = DEFAULT_FPS
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        height, width = frame.shape[:2]
        out_stem = self._claim_output(path, Path(path.name).stem + ".mp4")
        if out_stem is None:
            cap.release()
            return
        writer, tmp, final = open_video_writer(out_stem, fps, (width, height))
        frames, per_class = 0, Counter()
        bar = tqdm(total=count if count > 0 else None, desc=path.name, unit="frame",
                   disable=not self.progress, file=sys.stderr)
        try:
            while ok:
                if frame.shape[:2] != (height, width):  # a stream that changes size mid-way
                    frame = cv2.resize(frame, (width, height))
                dets, drawn, _ = self._detect_and_draw(frame)
                writer.write(drawn)
                self.entries.append({"file": str(path), "output": str(final), "frame": frames,
                                     "width": width, "height": height, "detections": dets})
                per_class.update(d["class"] for d in dets)
                frames += 1
                bar.update(1)
                ok, frame = cap.read()
            writer.release()
            os.replace(tmp, final)
        except KeyboardInterrupt:
            writer.release()  # what is done stays watchable
            partial = final.with_name(f"{final.stem}.partial{final.suffix}")
            os.replace(tmp, partial)
            logger.info(f"{path.name}: interrupted; the first {frames} frames are in {partial}")
            raise
        finally:
            bar.close()
            cap.release()
            writer.release()
            tmp.unlink(missing_ok=True)
        self.videos += 1
        top = ", ".join(f"{name} {n / frames:.1f}" for name, n in per_class.most_common(4))
        logger.info(f"{path.name} ({width}x{height}, {frames} frames, {fps:g} fps): "
                 f"{sum(per_class.values()) / frames:.1f} objects per frame above {self.thresh:g}"
                 + (f" (per frame: {top})" if top else "") + f" -> {final}")

    def header(self):
        return detections_header(self.model_name, self.detector.mode, self.thresh, self.detector.random_weights)

    def document(self):
        return {**self.header(), "images": self.entries}

    def write_json(self):
        path = self.output / "detections.json"
        write_detections_json(path, self.header(), self.entries)
        return path


def run_demo(inputs, model, output="demo_out", thresh=VIS_THRESH, keep_res=False, input_size=None,
             device="cpu", threads=0, names_file=None, limit=None, progress=True, flip=False, backend="onnxruntime", torch_options=None, scales=(1.0,), batchsize=1):
    """Detect on every input (image file, folder of images, video file) in
    the test mode (keep_res, flip, scales); write annotated copies and
    detections.json into `output`. Returns {"images", "videos", "errors":
    [lines], "json": path, "output", "seconds", "mode", "random_weights"}.
    An unreadable input is named in one error line and skipped. A run that
    annotated nothing leaves an earlier detections.json as it was."""
    if not 0.0 <= thresh <= 1.0:
        raise UserError(f"--vis-thresh {thresh}: must be between 0 and 1")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    if batchsize < 1:
        raise UserError(f"--batchsize {batchsize}: must be at least 1")
    if not inputs:
        raise UserError("no inputs: give image files, folders of images or videos")
    for p in map(Path, inputs):
        if p.is_dir() and Path(output).resolve() == p.resolve():
            raise UserError(f"--output {output} is an input folder: the annotated copies would replace the "
                            "originals; choose another folder")
    names = load_names(names_file) if names_file else None
    files, errors = expand_inputs(inputs, limit)
    for line in errors:
        logger.error(f"error: {line}")
    mode = TestMode(keep_res, flip, tuple(scales), tuple(input_size) if input_size else None)
    predictor = open_predictor(model, mode, backend=backend, device=device, threads=threads,
                               torch_options=torch_options, cache_fallback=output,
                               input_size_given=input_size is not None)
    detector = DemoModel(predictor, names)
    logger.info(f"input: {detector.mode}; showing detections with score >= {thresh:g}")
    if detector.random_weights:
        logger.info(RANDOM_WEIGHTS_NOTE)
    run = DemoRun(detector, output, thresh=thresh, progress=progress, model_name=model)
    run.errors = list(errors)
    images = [f for f in files if not is_video(f)]
    videos = [f for f in files if is_video(f)]
    try:
        with tqdm(total=len(images), desc="demo", unit="img", file=sys.stderr,
                  disable=not progress or len(images) < 2) as bar:
            for i in range(0, len(images), batchsize):
                run.images_batch(images[i:i + batchsize], batchsize)
                bar.update(len(images[i:i + batchsize]))
        for path in videos:
            run.video(path)
    finally:
        json_path = run.write_json() if run.entries else None  # also on Ctrl-C: what is done is listed
    return {"images": run.images, "videos": run.videos, "errors": run.errors, "json": json_path,
            "output": run.output, "seconds": run.seconds, "mode": detector.mode,
            "random_weights": detector.random_weights}
