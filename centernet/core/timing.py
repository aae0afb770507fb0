"""Timing figures: throughput and per-batch latency, as every runner and
benchmark reports them."""
import time

import numpy as np
from tqdm import tqdm


def latency_stats(batch_seconds, images):
    """Throughput and per-batch latency figures (milliseconds)."""
    t = np.asarray(batch_seconds, dtype=np.float64)
    total = float(t.sum())
    return {
        "images": int(images),
        "batches": int(len(t)),
        "infer_seconds": round(total, 4),
        "fps": round(images / total, 3) if total > 0 else None,
        "latency_ms_mean": round(float(t.mean()) * 1e3, 3) if len(t) else None,
        "latency_ms_p50": round(float(np.percentile(t, 50)) * 1e3, 3) if len(t) else None,
        "latency_ms_p99": round(float(np.percentile(t, 99)) * 1e3, 3) if len(t) else None,
    }


def time_batches(run, x, loops, warmup=1, progress=False, desc="loop"):
    """Seconds per call of `loops` timed calls run(x) after `warmup` untimed ones."""
    for _ in range(warmup):
        run(x)
    seconds = []
    for _ in tqdm(range(loops), desc=desc, disable=not progress):
        t0 = time.perf_counter()
        run(x)
        seconds.append(time.perf_counter() - t0)
    return seconds


def best_seconds(fn, repeats=3, sync=None):
    """The best of `repeats` timed calls fn() after one untimed warm-up;
    sync() (a device synchronisation, say) runs before each clock read."""
    sync = sync or (lambda: None)
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best
