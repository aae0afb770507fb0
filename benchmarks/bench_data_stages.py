"""Throughput of the data stages against I/O floors (not a test).

    .venv/bin/python benchmarks/bench_data_stages.py --images 200 --workdir /tmp/bench_data

Preprocessing (images -> 512x512 input bins) is compared with two floors run
the same way (same worker processes, same files): (i) read each image file's
bytes and write one bin's worth of bytes; (ii) cv2.imread each image and
write one bin's worth of bytes. Postprocess stage 1 (bins -> COCO results
JSON) is compared with only reading the same bins. All numbers are with a
warm page cache (every stage is run once before it is timed).
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from centernet.environment import COMMON, require  # noqa: E402

require(*COMMON, "onnxruntime", "pycocotools")  # before any third-party import

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from centernet.io.binio import output_bin_path, write_bin  # noqa: E402
from centernet.io.coco import class_category_ids, write_results  # noqa: E402
from centernet.pipeline.staged_decode import decode_bins_to_coco, images_from_annotations, split_missing  # noqa: E402
from centernet.pipeline.preprocess import list_images, preprocess_folder  # noqa: E402
from centernet.io.synthetic import make_synthetic_coco  # noqa: E402

BIN_BYTES = 3 * 512 * 512 * 4


def _floor_bytes(job):
    src, dst = job
    data = Path(src).read_bytes()
    Path(dst).write_bytes(bytes(BIN_BYTES) if data else b"")


def _floor_imread(job):
    src, dst = job
    img = cv2.imread(src, cv2.IMREAD_COLOR)
    Path(dst).write_bytes(bytes(BIN_BYTES) if img is not None else b"")


def _init():
    cv2.setNumThreads(1)


def run_floor(fn, images, dst, workers):
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    jobs = [(str(p), str(dst / f"{p.stem}.bin")) for p in images]
    t = time.perf_counter()
    if workers == 1:
        _init()
        for job in jobs:
            fn(job)
    else:
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_init) as pool:
            for _ in pool.imap_unordered(fn, jobs, chunksize=4):
                pass
    return time.perf_counter() - t


def pool_startup(workers):
    """Seconds until `workers` spawned preprocessing workers have each run a
    (empty) task: the fixed cost every multi-worker run pays."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from centernet.pipeline.preprocess import _worker_chunk, _worker_init
    t = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init) as pool:
        list(pool.map(_worker_chunk, [[]] * workers))
    return time.perf_counter() - t


def run_preprocess(src, dst, workers):
    shutil.rmtree(dst, ignore_errors=True)
    t = time.perf_counter()
    summary = preprocess_folder(src, dst, workers=workers, progress=False)
    assert summary["converted"] == len(list_images(src)), summary
    return time.perf_counter() - t


def model_like_maps(rng, out=128, classes=80):
    """Raw outputs shaped like a trained model's: smooth low background
    logits with a few bumps, plus wh/reg."""
    noise = rng.standard_normal((classes, out, out), dtype=np.float32)
    hm = np.stack([cv2.GaussianBlur(ch, (0, 0), 2.0) for ch in noise]) * 6 - 7
    for _ in range(8):
        c, y, x = rng.integers(0, classes), rng.integers(2, out - 2), rng.integers(2, out - 2)
        hm[c, y - 2:y + 3, x - 2:x + 3] += 6 - np.add.outer(np.arange(-2, 3) ** 2, np.arange(-2, 3) ** 2)
    wh = rng.uniform(0, 40, (2, out, out)).astype(np.float32)
    reg = rng.uniform(0, 1, (2, out, out)).astype(np.float32)
    return hm, wh, reg


def noise_maps(rng, out=128, classes=80):
    """Independent noise: a peak at about one pixel in nine (a hard case)."""
    return (rng.normal(-6, 2, (classes, out, out)).astype(np.float32),
            rng.uniform(0, 40, (2, out, out)).astype(np.float32), rng.uniform(0, 1, (2, out, out)).astype(np.float32))


def write_output_bins(dataset, bin_dir, kind, rng, unique=20):
    """ais_bench-style outputs for every image (`unique` distinct sets, reused)."""
    shutil.rmtree(bin_dir, ignore_errors=True)
    bin_dir.mkdir(parents=True)
    make = model_like_maps if kind == "model-like" else noise_maps
    sets = [make(rng) for _ in range(unique)]
    for n, img in enumerate(dataset["images"]):
        for i, arr in enumerate(sets[n % unique]):
            write_bin(output_bin_path(bin_dir, Path(img["file_name"]).stem, i), arr)


def run_s1(dataset, bin_dir, out_json):
    t = time.perf_counter()
    images = images_from_annotations(dataset)
    present, missing = split_missing(bin_dir, images)
    assert not missing
    results = decode_bins_to_coco(bin_dir, present, class_category_ids(dataset), progress=False)
    write_results(out_json, results)
    return time.perf_counter() - t


def run_read_bins(bin_dir):
    """The floor: read every bin into one reused buffer, nothing else."""
    buf = bytearray(80 * 128 * 128 * 4)
    view = memoryview(buf)
    t = time.perf_counter()
    for p in sorted(bin_dir.glob("*.bin")):
        with open(p, "rb") as f:
            f.readinto(view)
    return time.perf_counter() - t


def best_of(fn, repeats):
    """Best of `repeats` timed runs after a warm-up run; each run starts with
    no dirty pages (os.sync), so one stage's writeback does not slow the next."""
    fn()  # warm the page cache and imports
    times = []
    for _ in range(repeats):
        os.sync()
        times.append(fn())
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="synthetic images (COCO-like sizes)")
    parser.add_argument("--workdir", default="/tmp/bench_data_stages", help="scratch folder (replaced)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count()],
                        help="worker counts to measure preprocessing with")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement (best is kept)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.1f}: other work on this machine will skew the numbers")

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    info = make_synthetic_coco(work / "data", num_images=args.images, seed=0, progress=True)
    dataset = json.loads(Path(info["annotation_file"]).read_text())
    src, images = info["images_dir"], list_images(info["images_dir"])
    n = len(images)
    print(f"{n} images, mean {np.mean([p.stat().st_size for p in images]) / 1e3:.0f} kB JPEG, "
          f"{os.cpu_count()} cores\n")

    rows = []
    for w in dict.fromkeys(args.workers):
        prep = best_of(lambda: run_preprocess(src, work / "prep", w), args.repeats)
        f_bytes = best_of(lambda: run_floor(_floor_bytes, images, work / "floor", w), args.repeats)
        f_imread = best_of(lambda: run_floor(_floor_imread, images, work / "floor", w), args.repeats)
        rows.append((f"preprocess, {w} worker(s)", n / prep,
                     [("(i) read+write bytes", n / f_bytes), ("(ii) imread+write", n / f_imread)]))

    startup = {w: pool_startup(w) for w in dict.fromkeys(args.workers) if w > 1}

    rng = np.random.default_rng(0)
    for kind in ("model-like", "noise"):
        bin_dir = work / f"bins_{kind}"
        write_output_bins(dataset, bin_dir, kind, rng)
        s1 = best_of(lambda: run_s1(dataset, bin_dir, work / "save" / "results.json"), args.repeats)
        read = best_of(lambda: run_read_bins(bin_dir), args.repeats)
        rows.append((f"postprocess s1, {kind} maps", n / s1, [("read the bins only", n / read)]))

    print(f"{'stage':<32} {'img/s':>8}   {'floor':<22} {'img/s':>8}  {'stage/floor':>11}")
    for name, rate, floors in rows:
        for i, (fname, frate) in enumerate(floors):
            first = f"{name:<32} {rate:8.1f}" if i == 0 else " " * 41
            print(f"{first}   {fname:<22} {frate:8.1f}  {rate / frate:11.2f}")
    for w, secs in startup.items():
        print(f"(start-up of {w} spawned worker processes: {secs:.2f} s per run, included above)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
