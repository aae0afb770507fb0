"""The whole COCO evaluation in one pass, with no intermediate files, in any
of upstream's test modes (modes.TestMode: fixed 512 or keep resolution,
flip, multi-scale).

Each network input (an image at one test scale) is read and preprocessed in
a worker process, inputs of equal size are inferred together in batches by
one ONNX Runtime session (keep resolution and scales give many sizes: the
inputs are ordered by size so that they batch, and no session is rebuilt),
and decoded on a thread while the next batch runs (the PyTorch backend takes
the warped uint8 images and normalises them on its device, and on CUDA
decodes there as well, a flip test's mirror included). The detections are the
ones the staged scripts produce (same tensors, same session, same decoder),
and the results JSON has the same format.
"""
import contextlib
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from centernet.io.coco import class_category_ids, load_annotations
from centernet.core.decode import decode_to_image, detections_to_coco, detections_to_images
from centernet.errors import UserError, sigint_blocked
from centernet.pipeline.staged_infer import EXPORT_DYNAMIC_HINT, latency_stats, model_input_shape
from centernet.core.modes import TestMode, combine_flip, flip_batch
from centernet.runtime.ort_session import graph_flip_test, make_session, run_session
from centernet.core.soft_nms import detections_by_class, merge_detections
from centernet.core.transforms import DOWN_RATIO, INPUT_SIZE, prepare_input, test_geometry, warp_input


def _init_worker():
    cv2.setNumThreads(1)  # the pool gives the parallelism
    # Ctrl-C is the parent's to handle: leaving the `with` terminates the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _worker_pool(ctx, workers):
    """A Pool of preprocessing processes that Ctrl-C cannot break (see
    sigint_blocked), terminated when the block ends, however it ends."""
    pool = None
    try:
        with sigint_blocked():
            pool = ctx.Pool(workers, initializer=_init_worker)
        yield pool
    finally:
        if pool is not None:
            pool.terminate()


UNREADABLE = "cannot read or decode the image (corrupt, empty or not an image)"


def _load(path, input_size, keep_res, test_scale, warped=False):
    """Worker: image file -> ((1x3xHxW float32, center, scale, out_hw), None)
    or (None, error line). The geometry is the image's own (as read).
    warped: the warped HxWx3 uint8 image instead of the float32 input, for a
    session that normalises on its device (a quarter of the bytes to move)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return None, f"{path}: {UNREADABLE}"
    return load_input(image, path, input_size, keep_res, test_scale, warped)


def load_input(image, source, input_size, keep_res, test_scale, warped=False):
    """One network input of a BGR image at one test scale: ((1x3xHxW float32,
    center, scale, out_hw), None), or (None, error line naming `source`);
    warped: the warped HxWx3 uint8 image instead of the float32 input."""
    try:
        prepare = warp_input if warped else prepare_input
        tensor, center, scale, (in_h, in_w) = prepare(image, input_size, keep_res, test_scale)
    except ValueError as e:
        return None, f"{source}: {e}"
    except cv2.error as e:
        return None, f"{source}: OpenCV cannot process the image ({e.err})"
    return (tensor, center, scale, (in_h // DOWN_RATIO, in_w // DOWN_RATIO)), None


def decode_inputs(outputs, geometries, K=100, numpy_flip=False, hm_is_heat=False, decoded=False):
    """Raw outputs of one inference batch -> per input (scores, classes,
    boxes x1, y1, x2, y2 in its image's pixels), best first.
    geometries[i] = (center, scale, (out_h, out_w)) of input i; numpy_flip:
    the batch ran as flip_batch (the mirror is averaged in here); hm_is_heat:
    a flip test, whose heatmap has had its sigmoid; decoded: the outputs are
    decode_ctdet's already (the session decoded on its device)."""
    if decoded:
        return detections_to_images(*outputs, geometries)
    hm, wh, reg = combine_flip(*outputs) if numpy_flip else outputs
    # a tiny image's output map (keep resolution: 8x8 at least) may hold fewer than K positions
    return decode_to_image(hm, wh, reg, geometries, K=min(K, hm.shape[2] * hm.shape[3]), hm_is_heat=hm_is_heat)


def merge_scales(per_scale, scales, num_classes):
    """One image's decoded detections at each test scale (scale order) ->
    upstream's multi-scale merge: {class index: float32 [x1, y1, x2, y2,
    score] rows}."""
    return merge_detections([detections_by_class(scores, classes, boxes, num_classes, scale=t)
                             for (scores, classes, boxes), t in zip(per_scale, scales)])


def resolve_mode(session, model, mode, input_size=(INPUT_SIZE, INPUT_SIZE), log=print):
    """Check that the model can serve `mode` and settle what runs where.
    Returns (mode, input_size, flip in numpy): a model with the flip test in
    its graph makes every run a flip test (and needs no mirror here); a fixed
    mode runs at the model's own fixed size."""
    _, (_, h, w) = model_input_shape(session, required=False)
    if mode.keep_res and (h is not None or w is not None):
        raise UserError(f"{model}: fixed {h}x{w} input, but keep resolution feeds each image at its own size; "
                        f"export a model with a dynamic height and width: {EXPORT_DYNAMIC_HINT}")
    if not mode.keep_res and h is not None and w is not None:
        input_size = (h, w)
    in_graph = graph_flip_test(session)
    if in_graph and not mode.flip:
        log(f"note: {model} has the flip test in its graph (exported with --flip): this is a flip test")
    mode = TestMode(mode.keep_res, mode.flip or in_graph, tuple(mode.scales), tuple(input_size))
    return mode, mode.input_size, mode.flip and not in_graph


def stream_detections(model, images_dir, annotation_file, batchsize=1, device="cpu", threads=0,
                      workers=1, limit=None, K=100, input_size=(INPUT_SIZE, INPUT_SIZE),
                      progress=True, session=None, mode=TestMode(), upstream_rounding=False, log=None):
    """Detect on every annotated image (the first `limit` by file name) in
    test mode `mode`; `batchsize` inputs of one size per inference batch (the
    flip test doubles it inside).

    Returns (results list, ids of the images attempted, errors list, stats
    dict); an image that cannot be read is in the ids (scored as missed) and
    its error line in the errors."""
    if log is None:
        def log(line):
            tqdm.write(line, file=sys.stderr)
    data = load_annotations(annotation_file)
    category_ids = class_category_ids(data, source=str(annotation_file))
    images = sorted(data["images"], key=lambda img: Path(img["file_name"]).stem)[:limit]
    if not images:
        raise UserError(f"{annotation_file}: no images to evaluate")
    session = session or make_session(model, device=device, threads=threads)
    mode, input_size, numpy_flip = resolve_mode(session, model, mode, input_size, log)
    scales = tuple(mode.scales)
    # The PyTorch backend takes the warped uint8 images and normalises on its device.
    # ... and may decode there too, making and averaging in a flip test's mirror
    # there as well; otherwise the mirror is made and averaged in numpy.
    device_decode = bool(getattr(session, "decodes_on_device", False))
    warped = bool(getattr(session, "accepts_warped", False)) and (device_decode or not numpy_flip)

    # One unit per (image, scale), ordered by input size (from the annotated
    # width and height) so that equal sizes arrive together and batch.
    units = [(n, s) for n in range(len(images)) for s in range(len(scales))]
    size_of = {u: test_geometry(images[u[0]]["height"], images[u[0]]["width"], input_size, mode.keep_res,
                                scales[u[1]])[2] for u in units}
    units.sort(key=lambda u: (size_of[u], u))
    paths = [Path(images_dir) / img["file_name"] for img in images]

    results, errors, timings = [], [], []
    failed, done = set(), set()
    partial = {}  # multi-scale: image index -> {scale index: detections}, decoder thread only
    num_classes = len(category_ids)
    window = max(4, 2 * batchsize)  # preprocessed inputs held ahead of inference
    start = time.perf_counter()

    def decode(batch, outputs):
        decoded = decode_inputs(outputs, [loaded[1:] for _, loaded in batch], K, numpy_flip, mode.flip,
                                decoded=device_decode)
        entries, finished = [], []
        for ((n, s), _), (scores, classes, boxes) in zip(batch, decoded):
            image_id = images[n]["id"]
            if len(scales) == 1:
                entries += detections_to_coco(image_id, scores, classes, boxes, category_ids, upstream_rounding)
                finished.append(n)
                continue
            parts = partial.setdefault(n, {})
            parts[s] = (scores, classes, boxes)
            if len(parts) == len(scales):
                merged = merge_scales([parts[k] for k in range(len(scales))], scales, num_classes)
                del partial[n]
                entries += merged_to_coco(image_id, merged, category_ids, upstream_rounding)
                finished.append(n)
        return entries, finished

    # spawn, not fork: a fork of a process holding ONNX Runtime or torch
    # thread pools can deadlock.
    ctx = get_context("spawn")
    with _worker_pool(ctx, workers) as pool, ThreadPoolExecutor(1) as decoder, \
            tqdm(total=len(units), desc="stream", unit="input" if len(scales) > 1 else "img",
                 disable=not progress) as bar:
        pending = deque()
        todo = iter(units)

        def refill():
            while len(pending) < window:
                u = next(todo, None)
                if u is None:
                    return
                pending.append((u, pool.apply_async(_load, (paths[u[0]], input_size, mode.keep_res,
                                                            scales[u[1]], warped))))

        def collect(job):
            entries, finished = job.result()
            results.extend(entries)
            done.update(finished)

        decoding = None
        refill()
        while pending:
            batch = []
            while pending and len(batch) < batchsize:
                u, job = pending[0]
                loaded, err = job.get()
                if err or u[0] in failed:
                    pending.popleft()
                    refill()
                    if err and u[0] not in failed:
                        failed.add(u[0])
                        errors.append(err)
                    bar.update(1)
                    continue
                if batch and loaded[0].shape != batch[0][1][0].shape:
                    break  # another size: it starts the next batch
                pending.popleft()
                refill()
                batch.append((u, loaded))
            if not batch:
                continue
            if warped:
                x = np.stack([loaded[0] for _, loaded in batch])
            else:
                x = np.concatenate([loaded[0] for _, loaded in batch])
            t0 = time.perf_counter()
            if device_decode:
                out_h, out_w = batch[0][1][3]
                outputs = session.run_decoded(x, min(K, out_h * out_w), warped=warped, flip=numpy_flip)
            elif warped:
                outputs = session.run_warped(x)
            else:
                outputs = run_session(session, flip_batch(x) if numpy_flip else x)
            timings.append(time.perf_counter() - t0)
            if decoding is not None:
                collect(decoding)
            decoding = decoder.submit(decode, batch, outputs)
            bar.update(len(batch))
        if decoding is not None:
            collect(decoding)
    done -= failed  # a multi-scale image with a failed scale never finishes; nothing of it is kept
    stats = latency_stats(timings, len(done))
    wall = time.perf_counter() - start
    stats.update(wall_seconds=round(wall, 3), end_to_end_fps=round(len(done) / wall, 3) if wall > 0 else None,
                 batchsize=batchsize, workers=workers, mode=mode.name, inputs=len(units),
                 input_sizes=len(set(size_of.values())))
    return results, [img["id"] for img in images], errors, stats


def merged_to_coco(image_id, merged, category_ids, upstream_rounding=False):
    """COCO results entries of a multi-scale merge ({class index: float32
    [x1, y1, x2, y2, score] rows}), class by class as upstream writes them."""
    entries = []
    for j in sorted(merged):
        rows = merged[j]
        if len(rows):
            entries += detections_to_coco(image_id, rows[:, 4], np.full(len(rows), j), rows[:, :4],
                                          category_ids, upstream_rounding)
    return entries


def default_workers():
    """Preprocessing processes: about a tenth of the cost of CPU inference per
    image, so one is enough beside a CPU session; more feed a GPU."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))
