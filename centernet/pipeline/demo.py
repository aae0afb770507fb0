"""The detection demo behind CenterNet_demo.py: images, folders of images and
videos in; annotated copies, detections.json and a line per image out.

The network input is the same as the evaluation's (test transform, ONNX
Runtime session, ctdet decoding, inverse affine back onto the image): fixed
size (512x512 by default) or, with keep_res, the image's own resolution
rounded up to a multiple of 32, which needs an ONNX model with a dynamic input
size. A .pth checkpoint is exported once to an ONNX file next to it (checked
against PyTorch) and reused while the checkpoint is unchanged.
"""
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from centernet.io.binio import make_dirs, write_atomic, write_atomic_chunks
from centernet.io.coco import COCO_CATEGORIES
from centernet.core.decode import decode_ctdet, map_boxes_to_image
from centernet.errors import UserError
from centernet.core.modes import combine_flip, flip_batch
from centernet.pipeline.preprocess import IMAGE_EXTENSIONS
from centernet.runtime.ort_session import graph_flip_test, make_session, run_session
from centernet.core.transforms import INPUT_SIZE, preprocess_image, test_geometry
from centernet.report.visualize import class_colours, clip_box, draw_detections

VIS_THRESH = 0.3  # upstream's --vis_thresh
K = 100           # detections decoded per image, as in the evaluation
DEMO_IMAGE_EXTENSIONS = IMAGE_EXTENSIONS + (".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
CHECKPOINT_EXTENSIONS = (".pth", ".pt", ".tar")
# Codecs tried in order for annotated videos: opencv-python-headless writes
# mp4v into .mp4; MJPG into .avi is the fallback where a build lacks it.
VIDEO_CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"))
DEFAULT_FPS = 25.0  # when a video does not state its frame rate
CACHE_KEY = "centernet.checkpoint_sha256"
CACHE_INPUT_KEY = "centernet.input"


def _log_stdout(line):
    tqdm.write(line, file=sys.stdout)  # keeps a progress bar intact


def _log_stderr(line):
    tqdm.write(line, file=sys.stderr)


# --- the model ---------------------------------------------------------------

def file_sha256(path, chunk=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def export_cache_path(checkpoint, dynamic_size, input_size=(INPUT_SIZE, INPUT_SIZE), folder=None):
    """Where the cached export of `checkpoint` lives: next to it (or in
    `folder`), one file per form: <stem>.cache-512x512.onnx, <stem>.cache-dynamic.onnx."""
    checkpoint = Path(checkpoint)
    form = "dynamic" if dynamic_size else f"{input_size[0]}x{input_size[1]}"
    return Path(folder or checkpoint.parent) / f"{checkpoint.stem}.cache-{form}.onnx"


def _cache_metadata(path):
    """The metadata_props of an ONNX file, or None if it cannot be read."""
    import onnx
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # a truncated or foreign file is simply stale
        return None
    return {p.key: p.value for p in proto.metadata_props}


def cached_export(checkpoint, dynamic_size=False, input_size=(INPUT_SIZE, INPUT_SIZE), threads=0,
                  fallback_folder=None, log=print):
    """ONNX export of an upstream checkpoint for ONNX Runtime, made once and
    reused while the checkpoint's contents (SHA-256) are unchanged.

    A new export is checked against PyTorch (CenterNet_pth2onnx.py's
    self-check and tolerance) before it is put in place; the checkpoint's
    hash and the input form are stored in the ONNX file's metadata. The
    cache goes next to the checkpoint, or into `fallback_folder` where that
    is not writable. Returns the ONNX path."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: checkpoint not found")
    folder = None
    if not os.access(checkpoint.parent, os.W_OK):
        if fallback_folder is None:
            raise UserError(f"{checkpoint.parent}: not writable, so the exported model cannot be cached "
                            f"next to {checkpoint.name}")
        folder = fallback_folder
        log(f"model: {checkpoint.parent} is not writable; caching the export in {folder}")
    path = export_cache_path(checkpoint, dynamic_size, input_size, folder)
    form = "dynamic" if dynamic_size else f"{input_size[0]}x{input_size[1]}"
    digest = file_sha256(checkpoint)
    if path.is_file():
        meta = _cache_metadata(path)
        if meta and meta.get(CACHE_KEY) == digest and meta.get(CACHE_INPUT_KEY) == form:
            log(f"model: {path} (cached export of {checkpoint.name})")
            return path
        log(f"model: {path} is from another checkpoint or older; exporting again")

    from centernet.model.checkpoint import load_model
    from centernet.model.export import check_export, export_onnx, require_passed
    t0 = time.perf_counter()
    log(f"model: exporting {checkpoint} to {path} ({'dynamic input size' if dynamic_size else form}; "
        f"once, reused while the checkpoint is unchanged)")
    model = load_model(checkpoint, log=log)
    make_dirs(path.parent)
    proto = export_onnx(model, path, input_size=tuple(input_size), dynamic_size=dynamic_size)
    # Until the metadata below is written the file counts as stale, so an
    # interrupted or failed export is redone next time.
    log("model: checking the export against PyTorch (float64) ...")
    checks = check_export(model, proto, input_size=tuple(input_size), batch=1, threads=threads, name=str(path))
    try:
        require_passed(checks, path)
    except UserError:
        path.unlink(missing_ok=True)
        raise
    for key, value in ((CACHE_KEY, digest), (CACHE_INPUT_KEY, form), ("centernet.checkpoint", checkpoint.name)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    write_atomic(path, proto.SerializeToString())
    worst = max(c.rel_diff for c in checks)
    log(f"model: exported and checked against PyTorch float64 (largest difference {worst:.1e} of an "
        f"output's magnitude) in {time.perf_counter() - t0:.1f}s")
    return path


def is_checkpoint(path):
    return Path(path).suffix.lower() in CHECKPOINT_EXTENSIONS


def load_names(path):
    """Class names from a text file: one per line in the model's class order;
    blank lines and lines starting with # are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: names file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the names file ({getattr(e, 'strerror', None) or e})") from None
    names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise UserError(f"{path}: no class names (one name per line)")
    return names


class Detector:
    """One ONNX Runtime session and the test-time geometry around it."""

    def __init__(self, session, keep_res=False, input_size=None, names=None, model_name="model", flip=False):
        self.session = session
        shape = session.get_inputs()[0].shape
        static_hw = [d for d in shape[2:4] if isinstance(d, int)]
        self.dynamic = len(static_hw) < 2
        self.keep_res = keep_res
        if keep_res and not self.dynamic:
            raise UserError(f"{model_name}: fixed {shape[2]}x{shape[3]} input, but --keep-res needs a model "
                            "with a dynamic input size: export one with `python CenterNet_pth2onnx.py "
                            "ctdet_coco_dla_2x.pth CenterNet_dynamic.onnx --dynamic-size`, or pass the "
                            ".pth checkpoint to --model")
        if not self.dynamic:
            if input_size is not None and tuple(input_size) != tuple(static_hw):
                raise UserError(f"{model_name}: fixed {static_hw[0]}x{static_hw[1]} input; "
                                f"--input-size {input_size[0]} {input_size[1]} does not match")
            input_size = tuple(static_hw)
        self.input_size = tuple(input_size or (INPUT_SIZE, INPUT_SIZE))
        if min(self.input_size) <= 0 or any(v % 32 for v in self.input_size):
            raise UserError(f"input size {self.input_size[0]}x{self.input_size[1]}: height and width must be "
                            "positive multiples of 32")
        hm_channels = session.get_outputs()[0].shape[1]
        self.num_classes = hm_channels if isinstance(hm_channels, int) else len(COCO_CATEGORIES)
        if names is None:
            if self.num_classes != len(COCO_CATEGORIES):
                raise UserError(f"{model_name}: {self.num_classes} classes, not COCO's 80; give --names FILE")
            names = [name for _, name, _ in COCO_CATEGORIES]
        elif len(names) != self.num_classes:
            raise UserError(f"names: {len(names)} names, the model has {self.num_classes} classes "
                            "(one name per line, in the model's class order)")
        self.names = list(names)
        # Channel j is the j-th smallest COCO category id (as in the evaluation);
        # a model with other classes numbers them 1..C.
        self.category_ids = ([cid for cid, _, _ in COCO_CATEGORIES] if self.num_classes == len(COCO_CATEGORIES)
                             else list(range(1, self.num_classes + 1)))
        self.colours = class_colours(self.num_classes)
        # An export with --flip outputs the flip test's averaged heatmap, not
        # logits; otherwise the flip test, when asked for, runs here.
        self.flip_in_graph = graph_flip_test(session)
        self.flip = flip or self.flip_in_graph

    @property
    def mode(self):
        mode = "keep resolution" if self.keep_res else f"fixed {self.input_size[0]}x{self.input_size[1]}"
        if self.flip:
            mode += " + flip" + (" (in the model)" if self.flip_in_graph else "")
        return mode

    def detect(self, image):
        """The top K detections of a BGR image, best first: scores (K,),
        class indices (K,) and boxes (K, 4) x1, y1, x2, y2 in image pixels."""
        height, width = image.shape[:2]
        center, scale, (in_h, in_w) = test_geometry(height, width, self.input_size, keep_res=self.keep_res)
        x = preprocess_image(image, center, scale, (in_h, in_w))
        if self.flip and not self.flip_in_graph:
            hm, wh, reg = combine_flip(*run_session(self.session, flip_batch(x)))
        else:
            hm, wh, reg = run_session(self.session, x)
        out_h, out_w = hm.shape[2:]
        scores, classes, boxes = decode_ctdet(hm, wh, reg, K=min(K, out_h * out_w), hm_is_heat=self.flip)
        boxes = map_boxes_to_image(boxes[0], center, scale, (out_w, out_h))
        return scores[0], classes[0], boxes


def open_detector(model, keep_res=False, input_size=None, device="cpu", threads=0, names=None,
                  cache_fallback=None, log=print, flip=False, backend="onnxruntime", torch_options=None):
    """A Detector for an .onnx model or a .pth checkpoint (exported once,
    cached: with a dynamic input size when keep_res), or with backend="torch"
    the checkpoint in PyTorch (torch_options: a TorchOptions); flip:
    upstream's flip test (the image and its mirror, averaged)."""
    model = Path(model)
    if backend == "torch":
        from centernet.runtime.backends import open_session
        size = None if keep_res else tuple(input_size or (INPUT_SIZE, INPUT_SIZE))
        session = open_session(model, "torch", device=device, threads=threads, input_size=size,
                               torch_options=torch_options, log=log)
        return Detector(session, keep_res=keep_res, input_size=input_size, names=names, model_name=str(model),
                        flip=flip)
    if is_checkpoint(model):
        size = tuple(input_size or (INPUT_SIZE, INPUT_SIZE))
        model = cached_export(model, dynamic_size=keep_res, input_size=size, threads=threads,
                              fallback_folder=cache_fallback, log=log)
    session = make_session(model, device=device, threads=threads)
    return Detector(session, keep_res=keep_res, input_size=input_size, names=names, model_name=str(model),
                    flip=flip)


# --- inputs and outputs ------------------------------------------------------

def is_video(path):
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def expand_inputs(paths, limit=None):
    """Each PATH as a list of files: a folder gives its images in name order
    (the first `limit`), a file itself. Returns (files, error lines)."""
    files, errors = [], []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in DEMO_IMAGE_EXTENSIONS)
            if not found:
                errors.append(f"{p}: no images ({', '.join(DEMO_IMAGE_EXTENSIONS)}) in this folder")
            files += found[:limit]
        elif p.is_file():
            files.append(p)
        else:
            errors.append(f"{p}: not found")
    return files, errors


class OutputNames:
    """The annotated copy keeps its input's name; a second input of the same
    name gets -2, -3, ... so nothing is overwritten within a run."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.used = set()

    def take(self, name):
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, n = name, 1
        while candidate.lower() in self.used:
            n += 1
            candidate = f"{stem}-{n}{suffix}"
        self.used.add(candidate.lower())
        return self.folder / candidate


def detections_entry(scores, classes, boxes, detector, thresh, height, width):
    """The detections at or above `thresh` as JSON-ready dicts, best first;
    boxes x1, y1, x2, y2 in pixels, clipped to the image."""
    keep = np.flatnonzero(scores >= thresh)
    out = []
    for i in keep:
        c = int(classes[i])
        out.append({"box": [round(v, 2) for v in clip_box(boxes[i], height, width)],
                    "class": detector.names[c], "category_id": detector.category_ids[c],
                    "score": round(float(scores[i]), 4)})
    return out, keep


def summary_text(dets, thresh, best=None, top=4):
    """'3 above 0.30: 2 person, 1 dog' or 'none above 0.30 (best: cat 0.21)'."""
    if not dets:
        hint = f" (best: {best[0]} {best[1]:.2f})" if best else ""
        return f"none above {thresh:g}{hint}"
    counts = Counter(d["class"] for d in dets).most_common()
    shown = ", ".join(f"{n} {name}" for name, n in counts[:top])
    more = f", +{len(counts) - top} more classes" if len(counts) > top else ""
    return f"{len(dets)} above {thresh:g}: {shown}{more}"


def write_image(path, image):
    """Encode by the file's extension (JPEG where OpenCV cannot write that
    format) and write atomically; returns the path written."""
    path = Path(path)
    ok, buf = False, None
    try:
        ok, buf = cv2.imencode(path.suffix or ".jpg", image)
    except cv2.error:
        pass
    if not ok:
        path = path.with_suffix(".jpg")
        ok, buf = cv2.imencode(".jpg", image)
    write_atomic(path, buf.tobytes())
    return path


def open_video_writer(stem_path, fps, size):
    """A cv2.VideoWriter on a temporary name for the first codec this OpenCV
    can write. Returns (writer, temporary path, final path)."""
    stem_path = Path(stem_path)
    for fourcc, ext in VIDEO_CODECS:
        final = stem_path.with_suffix(ext)
        tmp = final.with_name(f".{final.stem}.{os.getpid()}.tmp{ext}")
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, tmp, final
        writer.release()
        tmp.unlink(missing_ok=True)
    raise UserError(f"{stem_path}: this OpenCV can write none of the video codecs "
                    f"{', '.join(f'{c} ({e})' for c, e in VIDEO_CODECS)}")


# --- the run -----------------------------------------------------------------

class DemoRun:
    """Detections over many inputs, collected for detections.json."""

    def __init__(self, detector, output, thresh=VIS_THRESH, progress=True, model_name="", log=_log_stdout,
                 log_error=None):
        self.detector = detector
        self.model_name = str(model_name)
        self.output = make_dirs(output)
        self.names = OutputNames(self.output)
        self.thresh = float(thresh)
        self.progress = progress
        self.log = log
        self.log_error = log_error or (lambda line: _log_stderr(f"error: {line}"))
        self.entries = []
        self.errors = []
        self.images = self.videos = 0
        self.seconds = 0.0

    def _error(self, line):
        self.errors.append(line)
        self.log_error(line)

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

    def _detect_and_draw(self, image):
        height, width = image.shape[:2]
        t0 = time.perf_counter()
        scores, classes, boxes = self.detector.detect(image)
        self.seconds += time.perf_counter() - t0
        dets, keep = detections_entry(scores, classes, boxes, self.detector, self.thresh, height, width)
        drawn = draw_detections(image, boxes[keep], scores[keep], classes[keep], self.detector.names,
                                self.detector.colours)
        best = (self.detector.names[int(classes[0])], float(scores[0])) if len(scores) else None
        return dets, drawn, best

    def image(self, path):
        path = Path(path)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            self._error(f"{path}: cannot read or decode the image (corrupt, empty or not an image)")
            return
        out = self._claim_output(path, path.name)
        if out is None:
            return
        t0 = time.perf_counter()
        try:
            dets, drawn, best = self._detect_and_draw(image)
        except cv2.error as e:  # e.g. an image beyond OpenCV's size limits
            self._error(f"{path}: OpenCV cannot process the image ({e.err})")
            return
        try:
            out = write_image(out, drawn)
        except OSError as e:
            self._error(f"{out}: cannot write ({e.strerror})")
            return
        height, width = image.shape[:2]
        self.entries.append({"file": str(path), "output": str(out), "width": width, "height": height,
                             "detections": dets})
        self.images += 1
        self.log(f"{path.name} ({width}x{height}): {summary_text(dets, self.thresh, best)} "
                 f"[{time.perf_counter() - t0:.2f}s]")

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
            self.log(f"{path.name}: no frame rate stated; writing {DEFAULT_FPS:g} fps")
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
            self.log(f"{path.name}: interrupted; the first {frames} frames are in {partial}")
            raise
        finally:
            bar.close()
            cap.release()
            writer.release()
            tmp.unlink(missing_ok=True)
        self.videos += 1
        top = ", ".join(f"{name} {n / frames:.1f}" for name, n in per_class.most_common(4))
        self.log(f"{path.name} ({width}x{height}, {frames} frames, {fps:g} fps): "
                 f"{sum(per_class.values()) / frames:.1f} objects per frame above {self.thresh:g}"
                 + (f" (per frame: {top})" if top else "") + f" -> {final}")

    def document(self):
        return {**detections_header(self.model_name, self.detector.mode, self.thresh), "images": self.entries}

    def write_json(self):
        path = self.output / "detections.json"
        write_detections_json(path, detections_header(self.model_name, self.detector.mode, self.thresh),
                              self.entries)
        return path


def detections_header(model_name, mode, thresh):
    """The keys of detections.json before its per-image entries."""
    return {"model": str(model_name), "mode": mode, "vis_thresh": float(thresh),
            "box": "x1, y1, x2, y2 in image pixels, clipped to the image"}


def _detections_json_chunks(header, entries):
    head = json.dumps({**header, "images": []}, indent=1)
    yield head[:-len("]\n}")].encode("utf-8")  # ... "images": [
    first = True
    for entry in entries:
        # an entry nested two levels deep: every line indented two more spaces
        text = json.dumps(entry, indent=1).replace("\n", "\n  ")
        yield (("\n  " if first else ",\n  ") + text).encode("utf-8")
        first = False
    yield b"]\n}\n" if first else b"\n ]\n}\n"


def write_detections_json(path, header, entries):
    """Write detections.json atomically: the header's keys, then "images":
    the entries (any iterable, streamed, so a million images need not be in
    memory at once). The text is json.dumps(document, indent=1)'s."""
    write_atomic_chunks(path, _detections_json_chunks(header, entries))


def run_demo(inputs, model, output="demo_out", thresh=VIS_THRESH, keep_res=False, input_size=None,
             device="cpu", threads=0, names_file=None, limit=None, progress=True, log=_log_stdout,
             log_error=None, flip=False, backend="onnxruntime", torch_options=None):
    """Detect on every input (image file, folder of images, video file);
    write annotated copies and detections.json into `output`.
    Returns {"images", "videos", "errors": [lines], "json": path, "output"}.
    An unreadable input is named in one error line and skipped."""
    if not 0.0 <= thresh <= 1.0:
        raise UserError(f"--vis-thresh {thresh}: must be between 0 and 1")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: must be at least 1")
    if not inputs:
        raise UserError("no inputs: give image files, folders of images or videos")
    for p in map(Path, inputs):
        if p.is_dir() and Path(output).resolve() == p.resolve():
            raise UserError(f"--output {output} is an input folder: the annotated copies would replace the "
                            "originals; choose another folder")
    names = load_names(names_file) if names_file else None
    log_error = log_error or (lambda line: _log_stderr(f"error: {line}"))
    files, errors = expand_inputs(inputs, limit)
    for line in errors:
        log_error(line)
    detector = open_detector(model, keep_res=keep_res, input_size=input_size, device=device, threads=threads,
                             names=names, cache_fallback=output, log=log, flip=flip, backend=backend,
                             torch_options=torch_options)
    log(f"input: {detector.mode}; showing detections with score >= {thresh:g}")
    run = DemoRun(detector, output, thresh=thresh, progress=progress, model_name=model, log=log,
                  log_error=log_error)
    run.errors = list(errors)
    images = [f for f in files if not is_video(f)]
    videos = [f for f in files if is_video(f)]
    try:
        with tqdm(total=len(images), desc="demo", unit="img", file=sys.stderr,
                  disable=not progress or len(images) < 2) as bar:
            for path in images:
                run.image(path)
                bar.update(1)
        for path in videos:
            run.video(path)
    finally:
        json_path = run.write_json()  # also on Ctrl-C: what is done is listed
    return {"images": run.images, "videos": run.videos, "errors": run.errors, "json": json_path,
            "output": run.output, "seconds": run.seconds, "mode": detector.mode}
