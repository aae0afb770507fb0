"""Images -> network input bins (upstream: src/lib/detectors/base_detector.py, pre_process).

Every image of a folder becomes `<stem>.bin`: the 1x3xHxW float32 input of the
test transform for one model (its mean/std and padding rule: ModelFacts),
fixed-resolution (every bin 1x3x512x512 by default) or keep-resolution
(each image's own size rounded up to a multiple of 32, 128 for Hourglass). A re-run skips bins that are complete (right
size, with a meta.json entry); every write is temp + rename, so an interrupted
run loses nothing finished. meta.json records each image's size and the
centre/scale of its transform, so decoding needs no image.
"""
import logging
import os
import shutil
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from centernet.io.binio import make_dirs, write_bin
from centernet.io.meta import META_NAME, load_meta, save_meta  # noqa: F401 (re-exported)
from centernet.errors import Interrupted, UserError, WriteError, sigint_blocked
from centernet.core.model_facts import ModelFacts
from centernet.core.transforms import INPUT_SIZE, prepare_input, test_geometry

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
META_SAVE_INTERVAL_S = 10.0  # how often meta.json is refreshed during a run

def list_images(src_dir):
    """Image files of a folder (jpg, jpeg, png, bmp, any case), in name order."""
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise UserError(f"{src_dir}: image folder not found")
    images = sorted(p for p in src_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not images:
        raise UserError(f"{src_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    stems = {}
    for p in images:
        if p.stem in stems:
            raise UserError(f"{src_dir}: {stems[p.stem].name} and {p.name} would both become {p.stem}.bin; "
                            f"rename one")
        stems[p.stem] = p
    return images


def _size_text(nbytes):
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def bin_nbytes(input_size):
    """Bytes of one input bin: 1x3xHxW float32."""
    return 3 * input_size[0] * input_size[1] * 4


# The model settings a folder's bins were made with (a ModelFacts' mean, std
# and keep-resolution padding), as meta.json records them for the folder.
SETTINGS_FIELDS = ("mean", "std", "pad")


def settings_of(facts):
    """meta.json's record of the settings bins for a model of `facts` are made with."""
    return {"mean": list(facts.mean), "std": list(facts.std), "pad": int(facts.pad)}


def meta_entry(height, width, input_size=(INPUT_SIZE, INPUT_SIZE), keep_res=False, pad=ModelFacts.pad):
    """meta.json entry of an image: its size and the centre, scale and input
    size of its test transform (scale is one number in fixed mode, [sx, sy]
    in keep-resolution mode, where inputs are rounded up by `pad`)."""
    center, scale, (in_h, in_w) = test_geometry(height, width, input_size, keep_res, pad=pad)
    scale = [float(v) for v in scale] if keep_res else float(scale)
    return {"width": width, "height": height, "center": [float(center[0]), float(center[1])],
            "scale": scale, "input_size": [in_h, in_w]}


def preprocess_array(image, input_size=(INPUT_SIZE, INPUT_SIZE), out=None, warp_buffer=None, keep_res=False,
                     facts=ModelFacts()):
    """BGR uint8 image -> (1x3xHxW float32 input, meta entry dict) for a
    model of `facts` (its mean, std and padding; COCO DLA-34's by default).
    `out` and `warp_buffer` (in_h x in_w x 3 uint8) may be reused arrays."""
    height, width = image.shape[:2]
    tensor = prepare_input(image, input_size, keep_res, out=out, warp_buffer=warp_buffer, mean=facts.mean,
                           std=facts.std, pad=facts.pad)[0]
    return tensor, meta_entry(height, width, input_size, keep_res, facts.pad)


# Per-process scratch arrays by input size: fresh multi-MB arrays for every
# image cost more in page faults than the arithmetic does.
_scratch = {}
_SCRATCH_SIZES = 8  # keep-resolution inputs come in many sizes: keep a few


def _scratch_for(image, input_size, keep_res, pad):
    height, width = image.shape[:2]
    key = test_geometry(height, width, input_size, keep_res, pad=pad)[2]
    if key not in _scratch:
        if len(_scratch) >= _SCRATCH_SIZES:
            _scratch.pop(next(iter(_scratch)))
        _scratch[key] = (np.empty((1, 3) + key, np.float32), np.empty(key + (3,), np.uint8))
    return _scratch[key]


def preprocess_file(src_path, dst_path, input_size=(INPUT_SIZE, INPUT_SIZE), keep_res=False, facts=ModelFacts()):
    """Convert one image file to its bin. Returns (meta entry, None) or
    (None, error message) for an unreadable image."""
    src_path = Path(src_path)
    image = cv2.imread(str(src_path), cv2.IMREAD_COLOR)
    if image is None:
        return None, f"{src_path}: cannot read or decode the image (corrupt, empty or not an image)"
    out, warp_buffer = _scratch_for(image, input_size, keep_res, facts.pad)
    tensor, meta = preprocess_array(image, input_size, out, warp_buffer, keep_res, facts)
    write_bin(dst_path, tensor)
    return meta, None


def _worker_init():
    # One OpenCV thread per process: the pool supplies the parallelism.
    cv2.setNumThreads(1)
    # Ctrl-C is the parent's to handle: it terminates the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_pool(jobs, workers, handle):
    """Run _worker over jobs in `workers` spawned processes, calling handle()
    on each result as it arrives. spawn, not fork: forking a process that has
    started threads (torch, OpenMP, a BLAS) can deadlock the children.
    If anything stops the run (Ctrl-C, an exception from handle), the
    workers are terminated at once; their pids are in the exception's
    `worker_pids`, so their temp files can be removed."""
    import multiprocessing
    # Jobs go out in chunks: one round trip per image through the parent
    # would leave workers idle whenever the busy cores delay the parent.
    size = max(1, min(16, len(jobs) // (workers * 4)))
    pool = None
    try:
        with sigint_blocked():
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init)
            # The workers start here, in submit() (spawn starts them on demand).
            futures = [pool.submit(_worker_chunk, jobs[i:i + size]) for i in range(0, len(jobs), size)]
        for future in as_completed(futures):
            for result in future.result():
                handle(result)
        pool.shutdown(wait=True)
    except BaseException as e:
        e.worker_pids = _terminate_pool(pool)
        raise


def _terminate_pool(pool):
    """Stop a ProcessPoolExecutor now: drop queued work, terminate its
    workers and wait for them, so that no idle worker is left that the
    interpreter would wait for at exit. Returns the workers' pids."""
    if pool is None:
        return []
    # No public way to reach the workers before Python 3.14's terminate_workers().
    processes = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.terminate()
    for p in processes:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()
    return [p.pid for p in processes]


def _worker(job):
    """(image name, meta entry or None, error or None, whether the error is a
    failed write, which stops the stage)."""
    src, dst, input_size, keep_res, facts = job
    try:
        meta, err = preprocess_file(src, dst, input_size, keep_res, facts)
    except WriteError as e:  # e.g. the disk filled up
        return Path(src).name, None, str(e), True
    except cv2.error as e:  # e.g. an image too large for OpenCV's limits
        meta, err = None, f"{src}: OpenCV cannot process the image ({e.err})"
    return Path(src).name, meta, err, False


def _worker_chunk(jobs):
    results = []
    for job in jobs:
        results.append(_worker(job))
        if results[-1][3]:  # a failed write: the next ones would fail too
            break
    return results


def _is_complete(dst, entry, input_size, keep_res, pad):
    """A bin is done when meta.json has its entry, the entry is what this
    mode gives for the image's recorded size, and the file has that size."""
    if not isinstance(entry, dict):
        return False
    try:
        expected = meta_entry(int(entry["height"]), int(entry["width"]), input_size, keep_res, pad)
        size = dst.stat().st_size
    except (KeyError, TypeError, ValueError, FileNotFoundError):
        return False
    return entry == expected and size == bin_nbytes(expected["input_size"])


# Disk estimate per keep-resolution bin, whose size is known only once the
# image is read: a 640x480 COCO image becomes 1x3x512x672 (4.1 MB).
KEEP_RES_TYPICAL_INPUT = (512, 672)


def preprocess_folder(src_dir, dst_dir, input_size=(INPUT_SIZE, INPUT_SIZE), workers=None, progress=True,
                      limit=None, keep_res=False, flip_test=False, facts=ModelFacts()):
    """Convert every image of src_dir to dst_dir/<stem>.bin, plus dst_dir/meta.json.

    facts: the ModelFacts of the model the bins are for: its mean and std
    (B, G, R) and keep-resolution padding; meta.json records them (and a
    re-run with other settings converts every image again).

    keep_res: keep-resolution inputs (each image's own padded size) instead
    of the fixed input_size.
    flip_test: record in meta.json that the outputs will come from a model
    exported with the flip test in its graph (hm already sigmoid-averaged),
    so that decoding (CenterNet_postprocess_s1.py --meta) does not apply the
    sigmoid again. The bins are the same either way.
    workers: processes (default: all cores; 1 runs in this process).
    limit: only the first `limit` images by file name.
    Warnings and per-image errors are logged (as warnings and errors).
    Returns {"total", "converted", "skipped", "failed": [(file name, message)],
    "meta_path"}. An unreadable image does not stop the others; a failed
    write (disk full, no permission) stops the stage with a WriteError, and
    Ctrl-C with an Interrupted; either way the finished bins and their
    meta.json entries are kept.
    """
    input_size = (int(input_size[0]), int(input_size[1]))
    images = list_images(src_dir)[:limit]
    dst_dir = make_dirs(dst_dir)
    meta_path = dst_dir / META_NAME
    meta = load_meta(meta_path, missing_ok=True)
    settings = settings_of(facts)
    if any(meta.get(k, settings[k]) != settings[k] for k in SETTINGS_FIELDS):
        logger.info(f"{meta_path}: its bins were made with other settings "
                    f"({', '.join(f'{k} {meta.get(k)}' for k in SETTINGS_FIELDS if meta.get(k) != settings[k])}); "
                    "converting every image again")
        meta["images"] = {}
    meta.update(settings)
    entries = meta["images"]
    nbytes = bin_nbytes(KEEP_RES_TYPICAL_INPUT if keep_res else input_size)

    todo = [p for p in images
            if not _is_complete(dst_dir / f"{p.stem}.bin", entries.get(p.name), input_size, keep_res, facts.pad)]
    need = len(todo) * nbytes
    free = shutil.disk_usage(dst_dir).free
    if need > free:
        about = "about " if keep_res else ""
        logger.warning(f"warning: {dst_dir}: {len(todo)} bins need {about}{_size_text(need)} but only {_size_text(free)} "
            f"is free (COCO val2017 needs 15.7 GB at 512x512, about 21 GB with keep resolution)")

    summary = {"total": len(images), "converted": 0, "skipped": len(images) - len(todo), "failed": [],
               "meta_path": meta_path}
    # The mode of the last run: keep resolution has no single input size.
    meta["input_size"] = None if keep_res else list(input_size)
    meta["keep_res"] = bool(keep_res)
    meta["flip_test"] = bool(flip_test)
    jobs = [(str(p), str(dst_dir / f"{p.stem}.bin"), input_size, bool(keep_res), facts) for p in todo]
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(int(workers), len(jobs) or 1))

    bar = tqdm(total=len(images), initial=summary["skipped"], desc="preprocess", unit="img", disable=not progress)
    last_save = time.monotonic()
    done = set()

    def handle(result):
        nonlocal last_save
        name, entry, err, write_failed = result
        done.add(name)
        if write_failed:
            entries.pop(name, None)
            raise WriteError(err)
        if err:
            summary["failed"].append((name, err))
            entries.pop(name, None)
            logger.error(f"error: {err}")
        else:
            entries[name] = entry
            summary["converted"] += 1
        bar.update(1)
        if time.monotonic() - last_save > META_SAVE_INTERVAL_S:
            save_meta(meta_path, meta)
            last_save = time.monotonic()

    def finished():
        n = summary["skipped"] + summary["converted"]
        return f"{n} of {len(images)} bins are finished and kept in {dst_dir}"

    stopped_by = None
    try:
        try:
            if workers > 1 and len(jobs) > 1:
                try:
                    _run_pool(jobs, workers, handle)
                except BrokenProcessPool:
                    # e.g. the calling program cannot be re-imported by spawned
                    # children (an interactive session): finish here instead.
                    logger.warning("warning: worker processes could not run; continuing in this process")
            for job in jobs:
                if Path(job[0]).name not in done:
                    handle(_worker(job))
        except BaseException as e:
            stopped_by = e
            raise
        finally:
            bar.close()
            _remove_temp_files(dst_dir, getattr(stopped_by, "worker_pids", ()))
            # Also on Ctrl-C or a full disk: the bins finished so far keep their entries.
            _save_meta_after(meta_path, meta, failing=stopped_by is not None)
    except WriteError as e:
        raise WriteError(f"{e}; {finished()}, the same command converts the rest") from None
    except KeyboardInterrupt:
        rest = len(images) - summary["skipped"] - summary["converted"] - len(summary["failed"])
        raise Interrupted(finished(), "run the same command again to convert the rest" if rest else None) from None
    return summary


def _remove_temp_files(dst_dir, pids):
    """Temp files of terminated workers (killed mid-write)."""
    for pid in pids:
        for tmp in dst_dir.glob(f".*.{pid}.tmp"):
            tmp.unlink(missing_ok=True)


def _save_meta_after(meta_path, meta, failing):
    try:
        save_meta(meta_path, meta)
    except WriteError:
        # While another error is on its way out (likely the same full disk),
        # report that one: the previous meta.json is still intact.
        if not failing:
            raise
