"""ONNX Runtime tuning experiments: a per-operator profile, and a sweep of
session options against the default (CenterNet_benchmark.py --ort-profile,
--ort-sweep)."""
import json
import logging
import math
import time
from pathlib import Path

import numpy as np


from centernet.runtime.ort_session import make_session

logger = logging.getLogger(__name__)


def ort_profile(path, threads, x, runs=3, flops_by_type=None):
    """Per-operator-type time of ONNX Runtime CPU on input `x`, from ONNX Runtime's
    own profiler over `runs` runs after one untimed warm-up, with the GFLOP/s of
    the operator types that carry the network's FLOPs. Rows sorted by time."""
    import tempfile

    # Operator type in a DeformConv export -> the counter's module type.
    flop_source = {"Conv": "Conv2d", "DeformConv": "DCN", "ConvTranspose": "ConvTranspose2d"}
    with tempfile.TemporaryDirectory() as tmp:
        session = make_session(path, threads=threads, profile_prefix=str(Path(tmp) / "ort"))
        name = session.get_inputs()[0].name
        for _ in range(runs + 1):
            session.run(None, {name: x})
        trace = json.loads(Path(session.end_profiling()).read_text())
    model_runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("name") == "model_run")
    warm_end = model_runs[0][1]  # the warm-up run's events are left out
    micros = {}
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= warm_end:
            op = event["args"]["op_name"]
            micros[op] = micros.get(op, 0) + event["dur"]
    total = sum(micros.values())
    rows = []
    for op, us in sorted(micros.items(), key=lambda kv: -kv[1]):
        ms = us / 1e3 / runs
        row = {"op": op, "ms": round(ms, 2), "share": round(us / total, 3)}
        flops = (flops_by_type or {}).get(flop_source.get(op))
        if flops:
            row["gflops"] = round(flops * len(x) / (ms / 1e3) / 1e9, 1)
        rows.append(row)
    return rows


# Session option variants tried against make_session's defaults (--ort-sweep).
ORT_VARIANTS = {
    "default (optimization all)": {},
    "optimization extended": {"optimization": "extended"},
    "optimization basic": {"optimization": "basic"},
    "no memory arena": {"options": {"enable_cpu_mem_arena": False}},
    "no memory pattern": {"options": {"enable_mem_pattern": False}},
    "no spinning": {"options": {"session.intra_op.allow_spinning": "0"}},
    "parallel execution": {"options": {"execution_mode": "parallel"}},
    "denormals as zero": {"options": {"session.set_denormal_as_zero": "1"}},
}


def ort_sweep(graphs, threads, x, rounds=3, runs=3, variants=None):
    """Median ms per batch of each ORT_VARIANTS entry on the DeformConv graph, and
    of the default options on the decomposed graph when given. Variants take
    turns for `rounds` rounds of `runs` runs (plus one warm-up each), so slow
    spells of a shared machine hit them all alike; each variant keeps its best
    round. `variants`: names of ORT_VARIANTS to try (default: all; the first is
    the baseline). Returns rows {variant, graph, ms, vs_default}."""
    cases = [(name, "deformconv", ORT_VARIANTS[name]) for name in (variants or ORT_VARIANTS)]
    if "decompose" in graphs:
        cases.append(("default, decomposed DCN graph", "decompose", {}))
    best = {}
    for r in range(rounds):
        for name, form, kw in cases:
            session = make_session(graphs[form], threads=threads, **kw)
            input_name = session.get_inputs()[0].name
            session.run(None, {input_name: x})
            seconds = []
            for _ in range(runs):
                t0 = time.perf_counter()
                session.run(None, {input_name: x})
                seconds.append(time.perf_counter() - t0)
            best[name] = min(best.get(name, math.inf), float(np.median(seconds)))
            del session
        logger.info(f"ort sweep round {r + 1}/{rounds} done")
    base = best[cases[0][0]]
    return [{"variant": name, "graph": form, "ms": round(best[name] * 1e3, 1),
             "vs_default": round(base / best[name], 3)} for name, form, _ in cases]


def format_sweep(rows):
    lines = ["| ONNX Runtime variant | graph | ms per batch | speed vs default |", "|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['graph']} | {r['ms']:.1f} | {r['vs_default']:.2f}x |")
    return "\n".join(lines)


def format_profile(rows, limit=12):
    lines = ["| op type | ms per batch | share | GFLOP/s |", "|---|---:|---:|---:|"]
    for r in rows[:limit]:
        lines.append(f"| {r['op']} | {r['ms']:.1f} | {r['share']:.0%} | {r.get('gflops', '')} |")
    return "\n".join(lines)
