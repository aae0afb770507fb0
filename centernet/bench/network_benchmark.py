"""Upstream's ctdet networks side by side in one run (CenterNet_benchmark.py
--networks): a row per network with its parameters, the GFLOP per image the
benchmark's FLOP counter (bench/flops.py) counts, and per backend its fps,
the fraction of the sgemm ceiling it sustains and its speed relative to
DLA-34 (when DLA-34 is in the run).

Each network is measured by benchmark.run_benchmark, one after another, on
the same backends, batch sizes, input, threads and random input; the sgemm
ceiling is measured once, before the first, and every network is set against
that one. Networks get deterministic calibrated random weights (speed barely
depends on the values), except the one a given checkpoint holds, which gets
the checkpoint's.
"""
import gc
import logging
from pathlib import Path

from centernet.errors import UserError
from centernet.core.model_facts import describe_network
from centernet.model.networks import NETWORKS

from centernet.bench.benchmark import BUSY_FLAG, DEFAULT_BACKENDS, network_of, run_benchmark
from centernet.bench.machine import machine_info, sgemm_ceiling, usable_cores

logger = logging.getLogger(__name__)

BASELINE = "dla_34"  # the network the speed ratios are relative to, when in the run
RANDOM_WEIGHTS = "random, calibrated on synthetic photos"


def load_checkpoint_for(checkpoint, networks):
    """The model of an upstream checkpoint, which must hold one of `networks`; None for None."""
    if checkpoint is None:
        return None
    from centernet.model.checkpoint import load_model
    model = load_model(checkpoint)
    if network_of(model) not in networks:
        raise UserError(f"{checkpoint}: holds {network_of(model)} ({model.facts.describe()}), which "
                        f"--networks does not list ({' '.join(networks)})")
    return model


def _models(networks, given, checkpoint, random_options):
    """(network, model, weights description) for each of `networks`, one at a
    time (Hourglass-104 alone holds 190 M parameters): `given` (the model of
    `checkpoint`) for the network it holds, calibrated random weights for the others."""
    from centernet.model.random_weights import random_model
    for network in networks:
        if given is not None and network_of(given) == network:
            model, given = given, None
            yield network, model, str(checkpoint)
        else:
            logger.info(f"{network}: calibrating random weights ...")
            yield network, random_model(network=network, **(random_options or {})), RANDOM_WEIGHTS


def run_network_benchmark(networks, checkpoint=None, backends=DEFAULT_BACKENDS, batchsizes=(1,), loop=8,
                          threads=None, input_size=(512, 512), workdir="work/benchmark", sgemm_n=3072,
                          random_options=None, **benchmark_options):
    """Benchmark each of `networks` (upstream's names, NETWORKS) with
    run_benchmark on the same backends, batch sizes, input and threads,
    against one sgemm ceiling measured first. checkpoint: an upstream
    checkpoint for the network it holds (which must be one of `networks`);
    random_options: keyword arguments for random_weights.random_model;
    benchmark_options: further run_benchmark arguments (warmup,
    eager_max_batch, torch_precisions, torch_options).
    Returns {"machine", "input_size", "threads", "sgemm_gflops",
    "networks": [{"network", "description", "params", "weights", "result"}],
    "baseline"}: "result" is run_benchmark's for that network."""
    networks = list(dict.fromkeys(networks))
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown or not networks:
        raise UserError(f"--networks: unknown network {unknown[0]!r}; choose from {', '.join(NETWORKS)}"
                        if unknown else "--networks needs at least one network")
    threads = int(threads or usable_cores())
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    input_size = tuple(int(v) for v in input_size)
    # Hourglass-104 halves its input seven times; the others five times.
    for network in networks:
        multiple = 128 if network == "hourglass" else 32
        if input_size[0] % multiple or input_size[1] % multiple:
            raise UserError(f"--input-size {input_size[0]} {input_size[1]}: {describe_network(network)} "
                            f"needs multiples of {multiple}")

    # The checkpoint is read (and checked) before anything is measured.
    models = _models(networks, load_checkpoint_for(checkpoint, networks), checkpoint, random_options)

    logger.info(f"sgemm ceiling: {sgemm_n}x{sgemm_n} fp32 matrix product on {threads} threads ...")
    sgemm = sgemm_ceiling(threads, n=sgemm_n)
    entries = []
    for network, model, weights in models:
        logger.info(f"--- {network}: {model.facts.describe()} ({weights})")
        result = run_benchmark(model, weights, backends=backends, batchsizes=batchsizes, loop=loop,
                               threads=threads, input_size=input_size, workdir=Path(workdir) / network,
                               sgemm_n=sgemm_n, sgemm=sgemm, **benchmark_options)
        entries.append({"network": network, "description": model.facts.describe(),
                        "params": sum(p.numel() for p in model.parameters()), "weights": weights,
                        "result": result})
        del model
        gc.collect()  # before the next network is built
    baseline = BASELINE if BASELINE in networks else None
    _add_ratios(entries, baseline)
    return {"machine": machine_info(threads), "input_size": list(input_size), "threads": threads,
            "loop": loop, "sgemm_gflops": sgemm, "baseline": baseline, "networks": entries}


def _add_ratios(entries, baseline):
    """Each row's x_baseline: its fps over the baseline network's at the same backend and batch."""
    base = {}
    for e in entries:
        if e["network"] == baseline:
            base = {(r["backend"], r["batch"]): r["fps"] for r in e["result"]["rows"]}
    for e in entries:
        for r in e["result"]["rows"]:
            b = base.get((r["backend"], r["batch"]))
            r["x_baseline"] = round(r["fps"] / b, 2) if b else None


def network_table_columns(result):
    """The table's columns: the network's, then fps, fraction of the sgemm
    ceiling and (with a baseline) the speed ratio for each backend measured."""
    backends = list(dict.fromkeys(r["backend"] for e in result["networks"] for r in e["result"]["rows"]))
    columns = ["network", "params M", "GFLOP/image", "batch"]
    for b in backends:
        columns += [f"{b} fps", f"{b} of sgemm"] + ([f"{b} x {result['baseline']}"] if result["baseline"] else [])
    return columns, backends


def format_network_table(result):
    """The result as a markdown table, a row per network and batch size, with a short header."""
    m = result["machine"]
    h, w = result["input_size"]
    s = result["sgemm_gflops"]
    first = result["networks"][0]["result"]
    lines = [
        f"machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, {result['threads']} threads per backend",
        f"input {h}x{w}; warm-up {first['warmup']} batch, then ~{result['loop']} images timed per row",
        f"fp32 sgemm ceiling {s['ceiling']} GFLOP/s ({s['n']}x{s['n']}: torch {s['torch']}, "
        f"numpy {s['numpy']}, onnxruntime {s['onnxruntime']}), measured once for every network",
        "GFLOP/image: counted by the benchmark (a multiply-add is 2 FLOPs; convolutions, transposed "
        "convolutions and deformable convolutions; BatchNorm, activations and sampling left out)",
    ]
    weights = {e["weights"] for e in result["networks"]}
    if weights != {RANDOM_WEIGHTS}:
        lines += [f"weights of {e['network']}: {e['weights']}" for e in result["networks"]]
    else:
        lines.append(f"weights: {RANDOM_WEIGHTS}")
    if result["baseline"]:
        lines.append(f"x {result['baseline']}: fps over {result['baseline']}'s on the same backend and batch")
    columns, backends = network_table_columns(result)
    lines += ["", "| " + " | ".join(columns) + " |",
              "|" + "|".join("---" if c == "network" else "---:" for c in columns) + "|"]
    busy = False
    batches = list(dict.fromkeys(r["batch"] for e in result["networks"] for r in e["result"]["rows"]))
    for batch in batches:
        for e in result["networks"]:
            rows = {r["backend"]: r for r in e["result"]["rows"] if r["batch"] == batch}
            if not rows:
                continue
            flag = ""
            if any(r["other_cpu"] is not None and r["other_cpu"] > BUSY_FLAG for r in rows.values()):
                flag, busy = " *", True
            cells = [f"{e['network']} ({e['description']}){flag}", f"{e['params'] / 1e6:.1f}",
                     f"{e['result']['flops_per_image'] / 1e9:.2f}", str(batch)]
            for b in backends:
                r = rows.get(b)
                cells += [f"{r['fps']:.3f}", f"{r['of_sgemm']:.0%}"] if r else ["-", "-"]
                if result["baseline"]:
                    cells.append(f"{r['x_baseline']:.2f}x" if r and r["x_baseline"] is not None else "-")
            lines.append("| " + " | ".join(cells) + " |")
    if busy:
        lines += ["", f"* other processes used more than {BUSY_FLAG:.0%} of the CPUs during a row of this "
                      "network: its numbers are low; rerun on a quiet machine"]
    skipped = {}
    for e in result["networks"]:
        skipped.update(e["result"]["skipped"])
    lines += [f"skipped {name}: {why}" for name, why in skipped.items()]
    return "\n".join(lines)

