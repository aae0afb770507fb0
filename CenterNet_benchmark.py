#!/usr/bin/env python3
"""Pure-inference throughput of a CenterNet network (ctdet DLA-34 by default) on every backend present, in one run.

    python CenterNet_benchmark.py                      # batch 1 4 8 16 32, all backends present
    python CenterNet_benchmark.py --quick              # batch 1 4, fewer loops
    python CenterNet_benchmark.py --quick --plot       # and draw images/s against batch size
    python CenterNet_benchmark.py --batchsize 1 --profile --ort-sweep  # why ONNX Runtime is as fast as it is
    python CenterNet_benchmark.py --weights ctdet_coco_dla_2x.pth --batchsize 1 --loop 20
    python CenterNet_benchmark.py --modes              # upstream's test modes side by side, with FLOP ratios
    python CenterNet_benchmark.py --networks dla_34 resdcn_18 res_18 --backends onnxruntime-cpu --batchsize 1 --quick
    python CenterNet_benchmark.py --backends torch-cuda --precision fp32 fp16 bf16 --batchsize 1 8 32 128
    python CenterNet_benchmark.py --precisions         # fp32 / fp16 / int8 / bf16: speed and AP of the stand-in

Backends: ONNX Runtime CPU (CUDA and TensorRT when onnxruntime-gpu is
installed), our PyTorch model in eager mode, the PyTorch backend
(torch-cpu, and torch-cuda where PyTorch sees a GPU; a row per --precision),
OpenVINO when installed (on the decomposed-DCN export). All use the same thread count and the same input;
warm-up batches are not timed. Prints a markdown table (fps, ms per image,
p50/p99 latency per batch, GFLOP/s and its fraction of the machine's sgemm
ceiling measured in the same run, speed-up over eager PyTorch) and writes it
as JSON with the machine's description.

With --networks, each listed network of upstream's ctdet zoo is measured
the same way in the same run (same backends, batch sizes, input, threads,
and one sgemm ceiling) and the table has a row per network: its parameters,
the GFLOP per image the benchmark counts, and per backend its fps, fraction
of the sgemm ceiling and speed relative to dla_34 when dla_34 is listed.

With --precisions, one run makes the fp16 and int8 (static QDQ, calibrated
on the train split) ONNX models of a checkpoint trained on the generated
shapes (the stand-in by default) and prints, per precision, images/s and the
AP on the held-out split side by side; bf16 runs by PyTorch autocast where the
CPU has AVX512_BF16 or AMX-BF16.

Every row needs at least a warm-up and a timed batch, so the default run
(five batch sizes up to 32) takes many times longer than --quick;
docs/benchmarks.md gives measured run times with the CPU they were measured on.
"""
import argparse
import sys
import time
from pathlib import Path

from centernet.environment import COMMON, require

require(*COMMON, "torch", "onnx")  # before any third-party import

from centernet.errors import UserError, cli, quiet_interrupt

with quiet_interrupt():  # torch loads here
    from centernet.cli.args import (ArgumentParser, add_batchsize_argument, add_input_size_argument,
                                    add_torch_arguments, torch_options_from_args)
    from centernet.cli.logs import setup_logging
    from centernet.bench.benchmark import BACKENDS, DEFAULT_BACKENDS, format_table, run_benchmark, write_json
    from centernet.bench.machine import usable_cores
    from centernet.bench.network_benchmark import format_network_table, run_network_benchmark
    from centernet.model.networks import NETWORKS
    from centernet.bench.mode_benchmark import DEFAULT_MODES, MODES, format_mode_table, run_mode_benchmark, write_mode_json
    from centernet.bench.precision_benchmark import (DEFAULT_INT8_FLOAT, INT8_GROUPS, PRECISIONS,
                                                     format_precision_table, run_precision_benchmark,
                                                     write_precision_json)
    from centernet.constants import STANDIN_CHECKPOINT

DEFAULT_WEIGHTS = "ctdet_coco_dla_2x.pth"
QUICK = {"batchsizes": [1, 4], "loop": 4}
FULL = {"batchsizes": [1, 4, 8, 16, 32], "loop": 8}
PRECISION_LOOP = 20


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None,
                   help=f"upstream checkpoint; without it {DEFAULT_WEIGHTS} is used if present, else "
                        "deterministic random weights (speed barely depends on the values) "
                        f"(default: {DEFAULT_WEIGHTS} or random; with --precisions: the stand-in detector "
                        f"{STANDIN_CHECKPOINT}, trained on generated shapes)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(DEFAULT_BACKENDS),
                   help="backends to measure; those not installed are skipped; onnxruntime-cpu-decompose "
                        "(ONNX Runtime on the decomposed-DCN graph) only runs when named "
                        f"(default: {' '.join(DEFAULT_BACKENDS)})")
    add_batchsize_argument(p, None, what="batch sizes, the recipe's table", aliases=("--batchsizes",),
                           dest="batchsizes", several=True,
                           default_text=f"{' '.join(map(str, FULL['batchsizes']))}; "
                                        f"--quick: {' '.join(map(str, QUICK['batchsizes']))}")
    p.add_argument("--loop", type=int, default=None,
                   help="timed batches at batch 1; batch B times ceil(LOOP/B) batches, at least one "
                        f"(default: {FULL['loop']}; --quick: {QUICK['loop']})")
    p.add_argument("--eager-max-batch", type=int, default=4,
                   help="largest batch for the pytorch-eager and torch-cpu rows, 0 = every batch size; "
                        "PyTorch on the CPU is slow at large batches (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed batches before each row's timed ones (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help=f"threads for every backend and the sgemm ceiling (default: all usable cores, "
                        f"here {usable_cores()})")
    add_input_size_argument(p, what="input height and width")
    p.add_argument("--quick", action="store_true",
                   help="smaller default batch sizes and loop, for a first look (default: off)")
    p.add_argument("--workdir", default="work/benchmark",
                   help="folder for the exported models and the JSON (default: %(default)s)")
    p.add_argument("--onnx", default=None,
                   help="DeformConv ONNX file for the onnxruntime rows instead of exporting one; it must "
                        "hold the same weights and input size (default: export to --workdir)")
    p.add_argument("--onnx-decompose", default=None,
                   help="decomposed-DCN ONNX file for the openvino row instead of exporting one "
                        "(default: export to --workdir)")
    p.add_argument("--sgemm-size", type=int, default=3072,
                   help="side of the square fp32 matrices of the sgemm ceiling (default: %(default)s)")
    p.add_argument("--profile", action="store_true",
                   help="also print ONNX Runtime CPU's time per operator type at the first batch size, "
                        "with the GFLOP/s of Conv / DeformConv / ConvTranspose (default: off)")
    p.add_argument("--ort-sweep", action="store_true",
                   help="also time ONNX Runtime CPU with each session-option variant and on the "
                        "decomposed-DCN graph at the first batch size (default: off)")
    p.add_argument("--networks", nargs="+", choices=NETWORKS, default=None, metavar="NET",
                   help="instead of the backend table: a row per network, each measured on the same backends, "
                        "batch sizes, input and threads against one sgemm ceiling; calibrated random weights, "
                        "except that the network a --weights checkpoint holds gets its weights (it must be "
                        f"listed); hourglass needs input sizes in multiples of 128. Choices: {' '.join(NETWORKS)} "
                        "(default: off: the one network of --weights, or dla_34)")
    p.add_argument("--modes", nargs="*", choices=list(MODES), default=None,
                   help="instead of the backend table: images/s of upstream's test modes on the same images "
                        "(the streaming evaluation, ONNX Runtime CPU, batch = first --batchsize value or 1), "
                        "each beside the FLOP ratio it should cost; no names = "
                        f"{' '.join(DEFAULT_MODES)} (default: off)")
    p.add_argument("--mode-images", type=int, default=8,
                   help="images for --modes (default: %(default)s)")
    p.add_argument("--mode-dataset", default=None,
                   help="dataset root with coco/val2017 and coco/annotations for --modes, its first "
                        "--mode-images images (default: generated images of COCO-like sizes)")
    p.add_argument("--precisions", nargs="*", choices=PRECISIONS, default=None,
                   help="instead of the backend table: images/s and held-out AP per precision of a checkpoint "
                        "trained on the generated shapes (--weights, default the stand-in): ONNX Runtime fp32, "
                        "fp16 and int8 (static QDQ), and bf16 by PyTorch autocast where the CPU has "
                        f"AVX512_BF16 / AMX-BF16; batch = first --batchsize value or 1, --loop timed batches "
                        f"(default {PRECISION_LOOP}); no names = {' '.join(PRECISIONS)} (default: off)")
    p.add_argument("--precision-images", type=int, default=200,
                   help="held-out images of the generated shapes the AP of --precisions is measured on "
                        "(default: %(default)s)")
    p.add_argument("--calibration-images", type=int, default=64,
                   help="train images the int8 model of --precisions is calibrated on (default: %(default)s)")
    p.add_argument("--int8-float", nargs="*", choices=list(INT8_GROUPS), default=list(DEFAULT_INT8_FLOAT),
                   help="layer groups the int8 model of --precisions keeps in float, besides DeformConv and "
                        "BatchNormalization (no int8 kernels): "
                        + "; ".join(f"{k}: {v}" for k, v in INT8_GROUPS.items())
                        + " (default: %(default)s)")
    p.add_argument("--json", default=None,
                   help="where to write the results as JSON (default: WORKDIR/benchmark.json, "
                        "WORKDIR/benchmark_modes.json with --modes, WORKDIR/benchmark_networks.json "
                        "with --networks, WORKDIR/benchmark_precisions.json with --precisions)")
    p.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                   help="also draw images/s against batch size, a line per backend, with this run's sgemm "
                        "ceiling dashed, to PNG (default: off; without PNG: WORKDIR/benchmark.png)")
    add_torch_arguments(p, several_precisions=True, title="PyTorch backend rows (torch-cpu, torch-cuda)")
    return p


def _refuse_beside(given, benchmark, why):
    """One line for the first (option, given) pair given with `benchmark`."""
    for option, value in given:
        if value:
            raise UserError(f"{option} does not go with {benchmark} ({why})")


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    args.mode_batch = args.batchsizes[0] if args.batchsizes else 1
    preset = QUICK if args.quick else FULL
    args.loop_given = args.loop
    args.batchsizes = args.batchsizes or preset["batchsizes"]
    args.loop = args.loop or preset["loop"]
    # Options of the backend table, which the other benchmarks do not take.
    given = [("--networks", args.networks is not None), ("--modes", args.modes is not None),
             ("--onnx", args.onnx), ("--onnx-decompose", args.onnx_decompose), ("--profile", args.profile),
             ("--ort-sweep", args.ort_sweep), ("--plot", args.plot is not None)]
    if args.precisions is not None:
        _refuse_beside(given, "--precisions", "it is a benchmark of its own")
        args.precisions = args.precisions or list(PRECISIONS)
    if args.networks is not None:
        _refuse_beside(given[1:], "--networks", "it is about one network's export")
    name = ("benchmark_precisions.json" if args.precisions is not None
            else "benchmark_modes.json" if args.modes is not None
            else "benchmark_networks.json" if args.networks is not None else "benchmark.json")
    args.json = args.json or str(Path(args.workdir) / name)
    if args.plot == "":
        args.plot = str(Path(args.workdir) / "benchmark.png")
    if args.plot:
        try:  # before the run, not after minutes of it
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError("--plot needs matplotlib: pip install -r requirements.txt") from None
    return args


def load_weights(path):
    """(model, description) for --weights, the default checkpoint if present, or random weights."""
    from centernet.model.checkpoint import load_model
    from centernet.model.random_weights import random_model
    if path is None and Path(DEFAULT_WEIGHTS).is_file():
        path = DEFAULT_WEIGHTS
    if path is None:
        return random_model(seed=0), "random, calibrated on synthetic photos (no checkpoint given or found)"
    return load_model(path), str(path)


@cli(interrupted="no table or JSON written", resume="run the same command again")
def main(argv=None):
    args = parse_args(argv)
    setup_logging(info_stream="stdout")
    start = time.perf_counter()
    if args.precisions is not None:
        weights = args.weights or STANDIN_CHECKPOINT
        result = run_precision_benchmark(weights, workdir=Path(args.workdir) / "precisions",
                                         val_images=args.precision_images,
                                         calibration_images=args.calibration_images, threads=args.threads,
                                         batchsize=args.mode_batch, loop=args.loop_given or PRECISION_LOOP,
                                         precisions=args.precisions, int8_float=args.int8_float)
        print()
        print(format_precision_table(result))
        write_precision_json(result, args.json)
        print(f"\nwrote {args.json} ({time.perf_counter() - start:.0f}s in all)")
        return 0
    if args.networks is not None:
        checkpoint = args.weights
        if checkpoint is None and "dla_34" in args.networks and Path(DEFAULT_WEIGHTS).is_file():
            checkpoint = DEFAULT_WEIGHTS
        result = run_network_benchmark(args.networks, checkpoint=checkpoint, backends=args.backends,
                                       batchsizes=args.batchsizes, loop=args.loop, threads=args.threads,
                                       input_size=tuple(args.input_size), workdir=args.workdir,
                                       sgemm_n=args.sgemm_size, warmup=args.warmup,
                                       eager_max_batch=args.eager_max_batch, torch_precisions=args.precision,
                                       torch_options=torch_options_from_args(args, precision="fp32"))
        print()
        print(format_network_table(result))
        write_json(result, args.json)
        print(f"\nwrote {args.json} ({time.perf_counter() - start:.0f}s in all)")
        return 0
    model, weights = load_weights(args.weights)
    print(f"weights: {weights}")
    if args.modes is not None:
        result = run_mode_benchmark(model, weights, modes=args.modes or DEFAULT_MODES, num_images=args.mode_images,
                                    dataset=args.mode_dataset, threads=args.threads, batchsize=args.mode_batch,
                                    warmup=args.warmup, workdir=args.workdir)
        print()
        print(format_mode_table(result))
        write_mode_json(result, args.json)
        print(f"\nwrote {args.json} ({time.perf_counter() - start:.0f}s in all)")
        return 0
    result = run_benchmark(model, weights, backends=args.backends, batchsizes=args.batchsizes,
                           loop=args.loop, threads=args.threads, input_size=tuple(args.input_size),
                           workdir=args.workdir, onnx=args.onnx, onnx_decompose=args.onnx_decompose,
                           warmup=args.warmup, sgemm_n=args.sgemm_size, profile=args.profile,
                           sweep=args.ort_sweep, eager_max_batch=args.eager_max_batch,
                           torch_precisions=args.precision,
                           torch_options=torch_options_from_args(args, precision="fp32"))
    print()
    print(format_table(result))
    write_json(result, args.json)
    print(f"\nwrote {args.json} ({time.perf_counter() - start:.0f}s in all)")
    if args.plot:
        from centernet.report.plots import plot_benchmark
        print(f"plot: {plot_benchmark(result, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
