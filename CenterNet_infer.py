#!/usr/bin/env python3
"""Inference with ais_bench's command line, on any backend (run_infer.sh calls this).

    python CenterNet_infer.py --model CenterNet.onnx --input prep_dataset \\
        --output result --output_dirname dumpout_bs1 --batchsize 1
    python CenterNet_infer.py --model CenterNet.onnx --loop 20 --batchsize 4
    python CenterNet_infer.py --model ctdet_coco_dla_2x.pth --backend torch --device cuda \
        --precision fp16 --input prep_dataset --output result --output_dirname dumpout_bs32 --batchsize 32

An .onnx model runs in ONNX Runtime, a .pth checkpoint in PyTorch (--backend
torch, on CPU or CUDA, no export), and both write ais_bench's layout
(OUT/NAME/<stem>_<i>.bin); an .om model is handed to `python -m ais_bench`
with the same arguments. Keep-resolution bins (CenterNet_preprocess.py
--keep-res) come in many sizes: their meta.json gives each bin's size; ONNX
Runtime runs them all in one session, equal sizes batched together, and an
.om model compiled with dynamic image size gears (convert_om.sh --keep-res)
runs once per size, with ais_bench's --dymHW H,W.
"""
import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from centernet.cli.args import (ArgumentParser, add_backend_arguments, add_batchsize_argument, add_device_arguments,
                                add_input_size_argument, add_progress_arguments, check_backend_args, progress_enabled,
                                torch_options_from_args)
from centernet.cli.args import parse_args as parse_cli_args
from centernet.cli.logs import setup_logging
from centernet.constants import RANDOM_WEIGHTS_NOTE
from centernet.runtime.backends import open_session
from centernet.errors import Interrupted, UserError, WriteError, cli
from centernet.pipeline.staged_infer import format_summary, run_folder, run_loop
from centernet.io.binio import check_writable
from centernet.io.meta import META_NAME, input_sizes, load_meta
from centernet.runtime.ort_session import PROVIDERS
from centernet.core.transforms import INPUT_SIZE

AIS_BENCH_HELP = ("ais_bench is not installed: it comes from Ascend's tool repository "
                  "(https://gitee.com/ascend/tools, folder ais-bench_workload/tool/ais_bench), "
                  "not from PyPI; install it with the CANN toolkit's Python")


def build_parser():
    # run_infer.sh names itself in the usage line and the messages
    p = ArgumentParser(prog=os.environ.get("CENTERNET_INFER_PROG") or None, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="CenterNet .onnx (ONNX Runtime), .pth checkpoint (PyTorch) or .om (ais_bench) model "
                        "(required)")
    p.add_argument("--input", help="folder of <stem>.bin inputs; omit with --loop for pure throughput "
                                   "(default: none)")
    p.add_argument("--output", default="result", help="output root folder (default: %(default)s)")
    p.add_argument("--output_dirname", default="dumpout",
                   help="subfolder of --output for the <stem>_<i>.bin outputs (default: %(default)s)")
    add_batchsize_argument(p)
    p.add_argument("--loop", type=int, default=None,
                   help="pure inference mode: time this many batches of random input (default: off)")
    add_device_arguments(p, PROVIDERS, threads_help="CPU intra-op threads, 0 = all physical cores")
    add_input_size_argument(p, None, what="input H W for models with a dynamic input size",
                            default_text=f"the model's; --backend torch: each bin's size from meta.json, "
                                         f"else {INPUT_SIZE} {INPUT_SIZE}")
    p.add_argument("--skip-existing", action="store_true",
                   help="resume: leave out inputs whose outputs are already complete (default: off, redo "
                        "all, as ais_bench does)")
    add_progress_arguments(p)
    add_backend_arguments(p)
    return p


def parse_args(argv=None):
    return parse_cli_args(build_parser(), argv)


def resume_command(argv):
    """The command line that resumes this run: the same arguments plus
    --skip-existing, under the name it was started by (run_infer.sh sets
    CENTERNET_INFER_PROG)."""
    prog = os.environ.get("CENTERNET_INFER_PROG") or f"python {shlex.quote(sys.argv[0])}"
    args = list(argv) + ([] if "--skip-existing" in argv else ["--skip-existing"])
    return f"{prog} {shlex.join(args)}"


def run_ais_bench(argv):
    """Hand an .om model to ais_bench with the caller's own arguments."""
    try:
        import ais_bench  # noqa: F401
    except ImportError:
        raise UserError(AIS_BENCH_HELP) from None
    return subprocess.call([sys.executable, "-m", "ais_bench", *argv])


def sizes_of_bins(input_dir):
    """{(H, W): [bin paths]} from the folder's meta.json; {} without one."""
    meta_path = Path(input_dir) / META_NAME
    if not meta_path.is_file():
        return {}
    groups = {}
    for stem, size in input_sizes(load_meta(meta_path), meta_path).items():
        path = Path(input_dir) / f"{stem}.bin"
        if path.is_file():
            groups.setdefault(size, []).append(path)
    return groups


def _with_input(argv, folder):
    """argv with the value of --input replaced by `folder`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--input":
            out += [a, str(folder)]
            skip = True
        elif a.startswith("--input="):
            out.append(f"--input={folder}")
        else:
            out.append(a)
    return out


def run_ais_bench_by_size(argv, input_dir):
    """Keep-resolution bins of several sizes on an .om with dynamic image
    size gears: one ais_bench run per size, over a folder of links to that
    size's bins, with --dymHW H,W; all write into the same output folder."""
    groups = sizes_of_bins(input_dir)
    if len(groups) <= 1:
        return run_ais_bench(argv)
    with tempfile.TemporaryDirectory(prefix="ais_bench_sizes_") as tmp:
        for (h, w), paths in sorted(groups.items()):
            folder = Path(tmp) / f"{h}x{w}"
            folder.mkdir()
            for p in paths:
                (folder / p.name).symlink_to(p.resolve())
            print(f"ais_bench: {len(paths)} inputs of {h}x{w}", flush=True)
            rc = run_ais_bench(_with_input(argv, folder) + ["--dymHW", f"{h},{w}"])
            if rc:
                return rc
    return 0


@cli(interrupted="outputs written so far are complete and kept",
     resume="the same command with --skip-existing resumes")
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    setup_logging()
    if args.model.endswith(".om"):
        return run_ais_bench_by_size(argv, args.input) if args.input else run_ais_bench(argv)
    if args.input is None and args.loop is None:
        raise UserError("give --input DIR to infer files, or --loop N for pure throughput")
    size = tuple(args.input_size) if args.input_size else None
    check_backend_args(args)
    # The PyTorch network takes any input size (like a --dynamic-size export):
    # the bins' sizes come from their meta.json (keep resolution gives many);
    # bins without one, and --loop, are the recipe's 512x512.
    session_size = size
    if args.backend == "torch" and size is None and not (args.input and (Path(args.input) / META_NAME).is_file()):
        size = (INPUT_SIZE, INPUT_SIZE)
    session = open_session(args.model, args.backend, device=args.device, threads=args.threads,
                           input_size=session_size, torch_options=torch_options_from_args(args))
    if session.describe_line():
        print(session.describe_line())
    if args.input is None:
        summary = run_loop(args.model, loop=args.loop, batchsize=args.batchsize, device=args.device,
                           threads=args.threads, input_size=size, progress=progress_enabled(args), session=session)
    else:
        # Before any inference: a folder that cannot be written is an error with nothing to resume.
        check_writable(Path(args.output) / args.output_dirname)
        try:
            summary = run_folder(args.model, args.input, args.output, args.output_dirname,
                                 batchsize=args.batchsize, device=args.device, threads=args.threads,
                                 input_size=size, skip_existing=args.skip_existing,
                                 progress=progress_enabled(args), session=session)
        except Interrupted as e:
            # A plain re-run redoes every image, as ais_bench does: say the command that resumes.
            raise Interrupted(e.kept, f"to resume, run: {resume_command(argv)}") from None
        except WriteError as e:
            raise WriteError(f"{e}; to resume, run: {resume_command(argv)}") from None
        print(f"outputs in {os.path.join(args.output, args.output_dirname)}")
    print(format_summary(summary))
    if summary.get("random_weights"):
        print(RANDOM_WEIGHTS_NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
