"""The whole COCO evaluation in one pass, with no intermediate files.

Images are read and preprocessed in worker processes, inferred in batches by
ONNX Runtime, and decoded on a thread while the next batch runs; the stages
overlap, so the pass runs at close to inference speed. The detections are
the ones the staged scripts produce (same tensors, same session, same
decoder), and the results JSON has the same format.
"""
import contextlib
import os
import signal
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .coco import class_category_ids, load_annotations
from .decode import decode_ctdet, detections_to_coco, images_from_annotations, map_boxes_to_image
from .errors import UserError, sigint_blocked
from .infer import latency_stats
from .preprocess import preprocess_array
from .runtime import make_session, run_session
from .transforms import INPUT_SIZE


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


def _load(path, input_size):
    """Worker: image file -> (1x3xHxW float32, None) or (None, error line)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return None, f"{path}: cannot read or decode the image (corrupt, empty or not an image)"
    return preprocess_array(image, input_size)[0], None


def stream_detections(model, images_dir, annotation_file, batchsize=1, device="cpu", threads=0,
                      workers=1, limit=None, K=100, input_size=(INPUT_SIZE, INPUT_SIZE),
                      progress=True, session=None):
    """Detect on every annotated image (the first `limit` by file name).

    Returns (results list, ids of the images attempted, errors list, stats
    dict); an image that cannot be read is in the ids (scored as missed) and
    its error line in the errors."""
    data = load_annotations(annotation_file)
    category_ids = class_category_ids(data, source=str(annotation_file))
    images = sorted(images_from_annotations(data, input_size),
                    key=lambda im: im.stem)[:limit]
    files = {Path(img["file_name"]).stem: Path(images_dir) / img["file_name"] for img in data["images"]}
    if not images:
        raise UserError(f"{annotation_file}: no images to evaluate")
    session = session or make_session(model, device=device, threads=threads)

    results, errors, done_ids, timings = [], [], [], []
    window = max(4, 2 * batchsize)  # preprocessed images held ahead of inference (3 MB each)
    start = time.perf_counter()
    # spawn, not fork: a fork of a process holding ONNX Runtime or torch
    # thread pools can deadlock.
    ctx = get_context("spawn")
    with _worker_pool(ctx, workers) as pool, ThreadPoolExecutor(1) as decoder, \
            tqdm(total=len(images), desc="stream", unit="img", disable=not progress) as bar:
        pending = deque()
        todo = iter(images)

        def refill():
            while len(pending) < window:
                im = next(todo, None)
                if im is None:
                    return
                pending.append((im, pool.apply_async(_load, (files[im.stem], input_size))))

        def decode(batch, outputs):
            scores, classes, boxes = decode_ctdet(*outputs, K=K)
            entries = []
            for i, im in enumerate(batch):
                out_h, out_w = im.out_hw
                img_boxes = map_boxes_to_image(boxes[i], im.center, im.scale, (out_w, out_h))
                entries += detections_to_coco(im.image_id, scores[i], classes[i], img_boxes, category_ids)
            return entries

        decoding = None
        refill()
        while pending:
            batch, tensors = [], []
            while pending and len(batch) < batchsize:
                im, job = pending.popleft()
                tensor, err = job.get()
                refill()
                if err:
                    errors.append(err)
                    bar.update(1)
                    continue
                batch.append(im)
                tensors.append(tensor)
            if not batch:
                continue
            t0 = time.perf_counter()
            outputs = run_session(session, np.concatenate(tensors))
            timings.append(time.perf_counter() - t0)
            if decoding is not None:
                results += decoding.result()
            decoding = decoder.submit(decode, batch, outputs)
            done_ids += [im.image_id for im in batch]
            bar.update(len(batch))
        if decoding is not None:
            results += decoding.result()
    stats = latency_stats(timings, len(done_ids))
    wall = time.perf_counter() - start
    stats.update(wall_seconds=round(wall, 3), end_to_end_fps=round(len(done_ids) / wall, 3),
                 batchsize=batchsize, workers=workers)
    return results, [im.image_id for im in images], errors, stats


def default_workers():
    """Preprocessing processes: about a tenth of the cost of CPU inference per
    image, so one is enough beside a CPU session; more feed a GPU."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))
