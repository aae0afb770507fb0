#!/usr/bin/env python3
"""Export an upstream ctdet checkpoint to ONNX and check the file against PyTorch.

    python CenterNet_pth2onnx.py ctdet_coco_dla_2x.pth CenterNet.onnx
    python CenterNet_pth2onnx.py ctdet_coco_dla_2x.pth CenterNet_ascend.onnx --target ascend
    python CenterNet_pth2onnx.py ctdet_coco_dla_2x.pth CenterNet_keepres.onnx --dynamic-size
    python CenterNet_pth2onnx.py ctdet_coco_dla_2x.pth CenterNet_flip.onnx --flip
    python CenterNet_pth2onnx.py ctdet_coco_dla_2x.pth CenterNet.onnx --if-changed
    python CenterNet_pth2onnx.py ctdet_coco_resdcn18.pth CenterNet_resdcn18.onnx
    python CenterNet_pth2onnx.py ctdet_pascal_dla_384.pth CenterNet_pascal.onnx --dataset pascal
    python CenterNet_pth2onnx.py model_last.pth mine.onnx --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \
        --input-size 384 384 --class-names classes.txt

Any of upstream's networks (dla_34, dlav0_34, res_18/101, resdcn_18/101,
hourglass, ...) with any number of classes: the checkpoint's keys say which
it is. What the checkpoint does not record, the settings of the data it was
trained on (mean/std, input size, class names), is given here once, as a
--dataset preset or one by one, and stored in the ONNX file: every later
stage reads it from there.

The file appears under its name only once its self-check passed: the export
goes to a temp file beside it first. Its metadata records what it was made
from: the checkpoint's SHA-256, the export options and whether it was checked.
"""
import argparse
import sys
from pathlib import Path

from centernet.environment import COMMON, require

require(*COMMON, "torch", "onnx")  # before any third-party import

from centernet.cli.args import (ArgumentParser, add_dataset_settings_arguments, add_flip_argument,
                                dataset_settings_from_args)
from centernet.cli.logs import setup_logging
from centernet.errors import Interrupted, UserError, cli, quiet_interrupt

with quiet_interrupt():  # onnx loads here; torch only in main(), when there is something to export
    from centernet.constants import DCN_FORMS, TARGETS
    from centernet.convert.provenance import ExportOptions, export_status, file_sha256, short


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="upstream ctdet checkpoint (.pth) of any of its networks")
    p.add_argument("output", help="ONNX file to write (missing folders are created)")
    p.add_argument("--target", choices=TARGETS, default="onnxruntime",
                   help="onnxruntime: opset 19 with DeformConv; ascend: opset 11 with ATC's "
                        "DeformableConv2D (default: %(default)s)")
    p.add_argument("--dcn", choices=DCN_FORMS, default="deformconv",
                   help="how deformable convolutions appear for --target onnxruntime: one DeformConv "
                        "node, or decomposed into GridSample + MatMul for runtimes without "
                        "DeformConv (default: %(default)s)")
    p.add_argument("--dynamic-size", action="store_true",
                   help="make input height and width dynamic too, as upstream's keep resolution (--keep-res "
                        "elsewhere) needs (default: off, only the batch is)")
    add_flip_argument(p, "put it into the graph: each image runs together with its mirror; output1 becomes the "
                         "average of the two heatmaps after the sigmoid (not logits), output2 the average wh, "
                         "output3 the unflipped reg; names and shapes are unchanged and the file's metadata "
                         "says so; works for both targets")
    p.add_argument("--no-check", action="store_true",
                   help="skip the self-check: running the exported file in ONNX Runtime on two synthetic "
                        "photos against the PyTorch model in float64, failing when an output differs by "
                        "more than float32 rounding explains (default: off, the check runs)")
    p.add_argument("--threads", type=int, default=0,
                   help="ONNX Runtime threads for the check, 0 = all cores (default: %(default)s)")
    p.add_argument("--if-changed", action="store_true",
                   help="keep OUTPUT when its metadata says it was exported from a checkpoint with the same "
                        "contents (SHA-256), with the same options and, unless --no-check, checked; export "
                        "otherwise. The file's date is not consulted (default: off, always export)")
    add_dataset_settings_arguments(p)
    return p


def recorded_facts(path):
    """The ModelFacts an existing ONNX file records, or None (no file, not readable, malformed)."""
    from centernet.convert.provenance import read_facts
    try:
        return read_facts(path)
    except UserError:
        return None


def parse_args(argv=None):
    return build_parser().parse_args(argv)


@cli(interrupted="nothing was written", resume="run the same command again")
def main(argv=None):
    args = parse_args(argv)
    setup_logging(info_stream="stdout")
    out = Path(args.output)
    if out.is_dir():
        raise UserError(f"{args.output}: is a folder; give the ONNX file to write, e.g. "
                        f"{out / 'CenterNet.onnx'}")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: {'is a folder, not a checkpoint file' if checkpoint.is_dir() else 'checkpoint not found'}")
    digest = file_sha256(checkpoint)
    from centernet.model.checkpoint import checkpoint_facts
    recorded_settings = checkpoint_facts(checkpoint)  # a checkpoint of ours records its settings; upstream's: COCO's

    def export_options(num_classes):
        return ExportOptions(target=args.target, dcn=args.dcn, dynamic_size=args.dynamic_size, flip=args.flip,
                             **dataset_settings_from_args(args, num_classes, str(checkpoint), recorded_settings))

    if args.if_changed:
        # A file exported from this very checkpoint (same SHA-256) records its class count.
        recorded = recorded_facts(out)
        status = export_status(out, digest, export_options(recorded.num_classes) if recorded else ExportOptions(),
                               need_checked=not args.no_check)
        if status.current:
            print(status.describe(out, checkpoint, digest))
            return 0
        if out.exists():
            print(f"{status.describe(out, checkpoint, digest)}; exporting again", flush=True)

    from centernet.io.binio import make_dirs
    from centernet.model.checkpoint import load_model
    from centernet.convert.export import export_checked
    model = load_model(checkpoint)
    options = export_options(model.facts.num_classes)
    make_dirs(out.parent)
    done = export_checked(model, out, options, digest, checkpoint.name, check=not args.no_check,
                          threads=args.threads)
    try:
        print(f"wrote {out} (exported from {checkpoint}, sha256 {short(digest)}, "
              f"{'checked against PyTorch' if done.checked else 'not checked: --no-check'})")
    except KeyboardInterrupt:
        raise Interrupted(f"{out} was written whole{' and checked' if done.checked else ''}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
