"""The whole evaluation (or annotation) in one pass on one machine, with no
intermediate files, in any of upstream's test modes.

Each network input (an image at one test scale) is read and prepared in a
worker process (InputSpec.prepare), inputs of one shape are batched
(batches_by_shape) and run by the predictor's session in this process, and
decoded on a thread while the next batch runs. Within each block of images
the inputs are ordered by size (from the annotated width and height), so
that keep resolution and multi-scale inputs batch.

Resumable: with a BlockStore, each finished block of images is written to
disk as soon as its last image is decoded, and a re-run skips the blocks
already there (a Ctrl-C after hours keeps what is done).
"""
import contextlib
import logging
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import get_context

import cv2
from tqdm import tqdm

from centernet.constants import K
from centernet.core.modes import TestMode
from centernet.core.timing import latency_stats
from centernet.errors import Interrupted, UserError, sigint_blocked
from centernet.io.blocks import BLOCK_SIZE, BlockStore
from centernet.pipeline.jobs import EvaluationJob, blocks_of, fit_job, mode_text, run_key
from centernet.pipeline.predictor import UNREADABLE, Predictor, batches_by_shape

logger = logging.getLogger(__name__)


def _init_worker():
    cv2.setNumThreads(1)  # the pool gives the parallelism
    # Ctrl-C is the parent's to handle: leaving the `with` terminates the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# How long an interrupted run waits for the pool's own shutdown before killing its workers.
TERMINATE_WAIT_S = 10.0


def _terminate(pool, wait_s=TERMINATE_WAIT_S):
    """pool.terminate(), which after a Ctrl-C can deadlock: its task-handler
    thread waits forever for a queue lock left held when the workers were
    killed, and terminate() joins that thread. So it runs on a daemon thread;
    if it has not finished within wait_s, the workers are killed and the run
    goes on (the pool's own threads are daemons too, and its finaliser has
    already been taken: nothing waits for them at exit)."""
    done = threading.Thread(target=pool.terminate, name="pool-terminate", daemon=True)
    done.start()
    done.join(wait_s)
    if done.is_alive():
        logger.debug("the preprocessing pool did not shut down in %.0fs; killing its workers", wait_s)
        for process in list(getattr(pool, "_pool", [])):
            if process.exitcode is None:
                process.kill()


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
            _terminate(pool)


def _load(spec, location, scale_index):
    """Worker: (Prepared or None, error line or None, image (height, width) or None)."""
    image = cv2.imread(str(location), cv2.IMREAD_COLOR)
    if image is None:
        return None, f"{location}: {UNREADABLE}", None
    prepared, error = spec.prepare(image, location, scale_index)
    return prepared, error, image.shape[:2]


def run_stream(predictor, job, batchsize=1, workers=1, store=None, block_size=BLOCK_SIZE, progress=True):
    """Run every image of `job` through `predictor`; returns (parts, stats):
    parts[b] = {"entries", "errors"} of block b in order (from `store` for
    blocks it already holds), stats the timing figures and random_weights
    (the model's weights are random: its detections mean nothing)."""
    if batchsize < 1 or workers < 1 or block_size < 1:
        raise UserError("--batchsize, --workers and --block-size must be >= 1")
    fit_job(job, predictor, predictor.session.name)
    spec, decoder = predictor.spec, predictor.decoder
    scales = range(len(spec.scales))
    blocks = blocks_of(job.images, block_size)
    todo = [b for b, images in enumerate(blocks) if store is None or not store.is_done(b, images)]
    if len(todo) < len(blocks):
        logger.info(f"resuming: {len(blocks) - len(todo)} of {len(blocks)} block(s) already done in {store.folder}")

    def size_key(im, s):  # the input size where the annotations tell it, without reading the image
        return spec.input_hw(im.height, im.width, s) if im.height else (0, 0)

    # One unit per (block, image, scale): block by block, each ordered by input size.
    units = []
    for b in todo:
        units += sorted(((b, n, s) for n in range(len(blocks[b])) for s in scales),
                        key=lambda u: (size_key(blocks[u[0]][u[1]], u[2]), u[1], u[2]))
    done_parts = {}
    open_blocks = {b: {"left": len(blocks[b]), "entries": {}, "errors": {}} for b in todo}
    partial = {}  # (b, n) -> {scale: Detections}, decoder thread only
    failed = set()
    timings = []
    images_done = [0]
    window = max(4, 2 * batchsize)  # prepared inputs held ahead of inference
    start = time.perf_counter()

    def finish_image(b, n, entries=None, error=None):
        state = open_blocks[b]
        if error is not None:
            state["errors"][n] = error
        else:
            state["entries"][n] = entries
            images_done[0] += 1
        state["left"] -= 1
        if state["left"] == 0:
            part = {"entries": [e for k in sorted(state["entries"]) for e in state["entries"][k]],
                    "errors": [state["errors"][k] for k in sorted(state["errors"])]}
            if store is not None:
                store.write(b, blocks[b], part["entries"], part["errors"])
            done_parts[b] = part
            del open_blocks[b]

    def decode(batch, outputs):
        found = predictor.decode([p for _, p, _ in batch], outputs)
        for ((b, n, s), _, size), dets in zip(batch, found):
            if (b, n) in failed:
                continue
            parts = partial.setdefault((b, n), {})
            parts[s] = dets
            if len(parts) == len(scales):
                del partial[(b, n)]
                merged = decoder.merge([parts[k] for k in scales])
                finish_image(b, n, job.to_entries(blocks[b][n], merged, *size))

    # spawn, not fork: a fork of a process holding ONNX Runtime or torch
    # thread pools can deadlock.
    ctx = get_context("spawn")
    with _worker_pool(ctx, workers) as pool, ThreadPoolExecutor(1) as decoder_thread, \
            tqdm(total=len(units), desc="stream", unit="input" if len(scales) > 1 else "img",
                 disable=not progress) as bar:
        pending = deque()
        todo_units = iter(units)

        def refill():
            while len(pending) < window:
                u = next(todo_units, None)
                if u is None:
                    return
                b, n, s = u
                pending.append((u, pool.apply_async(_load, (spec, blocks[b][n].location, s))))

        def loaded():
            """The prepared inputs in unit order; an image that fails at any
            scale is finished with its error line, its other scales dropped."""
            refill()
            while pending:
                u, job_result = pending.popleft()
                prepared, error, size = job_result.get()
                refill()
                b, n, _ = u
                if (b, n) in failed:
                    bar.update(1)
                    continue
                if error:
                    failed.add((b, n))
                    bar.update(1)
                    decoding_done()  # the image's decoded scales must not finish it later
                    partial.pop((b, n), None)
                    finish_image(b, n, error=error)
                    continue
                yield u, prepared, size

        decoding = [None]

        def decoding_done():
            if decoding[0] is not None:
                decoding[0].result()
                decoding[0] = None

        try:
            for batch in batches_by_shape(loaded(), lambda item: item[1].tensor.shape, batchsize):
                t0 = time.perf_counter()
                outputs = predictor.run([p for _, p, _ in batch])
                timings.append(time.perf_counter() - t0)
                decoding_done()
                decoding[0] = decoder_thread.submit(decode, batch, outputs)
                bar.update(len(batch))
            decoding_done()
        except KeyboardInterrupt:
            if store is None:
                raise
            try:  # the batch being decoded finishes its images (and perhaps a block) first
                decoding_done()
            except Exception:
                pass
            kept = len(blocks) - len(todo) + len(done_parts)
            raise Interrupted(f"{kept} of {len(blocks)} block(s) finished, kept in {store.folder}",
                              "run the same command again to go on from there") from None
    parts = []
    for b, images in enumerate(blocks):
        parts.append(done_parts[b] if b in done_parts else store.read(b))
    stats = latency_stats(timings, images_done[0])
    wall = time.perf_counter() - start
    stats.update(wall_seconds=round(wall, 3),
                 end_to_end_fps=round(images_done[0] / wall, 3) if wall > 0 and images_done[0] else None,
                 batchsize=batchsize, workers=workers, mode=predictor.mode.name, inputs=len(units),
                 input_sizes=len({size_key(blocks[b][n], s) for b, n, s in units}),
                 blocks=len(blocks), blocks_resumed=len(blocks) - len(todo),
                 random_weights=predictor.random_weights)
    return parts, stats


def run_stream_to(job, predictor, output, model, backend, batchsize=1, workers=1, block_size=BLOCK_SIZE,
                  progress=True):
    """run_stream with its finished blocks kept beside `output` (resumable,
    keyed as run_on_ray keys them), then the job's output file written and
    the blocks removed, as run_on_ray does. Returns (parts, stats)."""
    fit_job(job, predictor, model)  # before the key, which holds what the model settles
    store = BlockStore(output, run_key(model, backend, predictor, predictor.decoder.K, job.key))
    parts, stats = run_stream(predictor, job, batchsize=batchsize, workers=workers, store=store,
                              block_size=block_size, progress=progress)
    job.write(output, parts, model, mode_text(predictor.mode), predictor.random_weights)
    store.remove()
    return parts, stats


def stream_detections(model, images_dir, annotation_file, batchsize=1, device="cpu", threads=0,
                      workers=1, limit=None, K=K, input_size=None,
                      progress=True, session=None, mode=TestMode(), upstream_rounding=False):
    """The evaluation in memory: detect on every annotated image (the first
    `limit` by file name) in test mode `mode`. Returns (results list, ids of
    the images attempted, errors list, stats dict); an unreadable image is
    in the ids (scored as missed) and its error line in the errors."""
    from centernet.runtime.backends import as_session, open_session
    job = EvaluationJob(annotation_file, images_dir, limit, upstream_rounding)
    session = as_session(session, model) if session is not None else open_session(model, device=device,
                                                                                  threads=threads)
    predictor = Predictor(session, TestMode(mode.keep_res, mode.flip, tuple(mode.scales), tuple(input_size) if input_size else mode.input_size), K=K)
    parts, stats = run_stream(predictor, job, batchsize=batchsize, workers=workers, progress=progress)
    results = [e for part in parts for e in part["entries"]]
    errors = [e for part in parts for e in part["errors"]]
    return results, [im.image_id for im in job.images], errors, stats


def default_workers():
    """Preprocessing processes: about a tenth of the cost of CPU inference per
    image, so one is enough beside a CPU session; more feed a GPU."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))
