#!/usr/bin/env python3
"""Export ctdet_coco_dla_2x.pth to ONNX and check the file against PyTorch.

    python CenterNet_pth2onnx.py ctdet_coco_dla_2x.pth CenterNet.onnx
    python CenterNet_pth2onnx.py ctdet_coco_dla_2x.pth CenterNet_ascend.onnx --target ascend
    python CenterNet_pth2onnx.py ctdet_coco_dla_2x.pth CenterNet_keepres.onnx --dynamic-size
    python CenterNet_pth2onnx.py ctdet_coco_dla_2x.pth CenterNet_flip.onnx --flip
"""
import argparse
import sys
import time
from pathlib import Path

from centernet.environment import COMMON, require

require(*COMMON, "torch", "onnx")  # before any third-party import

from centernet.cli.args import ArgumentParser, add_flip_argument, add_input_size_argument
from centernet.cli.logs import setup_logging
from centernet.errors import UserError, cli, quiet_interrupt

with quiet_interrupt():  # torch loads here
    from centernet.io.binio import make_dirs
    from centernet.model.checkpoint import load_model
    from centernet.convert.export import DCN_FORMS, TARGETS, FlipTest, check_export, count_ops, export_onnx, require_passed


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="upstream ctdet DLA-34 checkpoint (.pth)")
    p.add_argument("output", help="ONNX file to write (missing folders are created)")
    p.add_argument("--target", choices=TARGETS, default="onnxruntime",
                   help="onnxruntime: opset 19 with DeformConv; ascend: opset 11 with ATC's "
                        "DeformableConv2D (default: %(default)s)")
    p.add_argument("--dcn", choices=DCN_FORMS, default="deformconv",
                   help="how deformable convolutions appear for --target onnxruntime: one DeformConv "
                        "node, or decomposed into GridSample + MatMul for runtimes without "
                        "DeformConv (default: %(default)s)")
    add_input_size_argument(p, what="fixed input height and width")
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
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


@cli(interrupted="the ONNX file is written whole or not at all, and may not have been checked yet; "
                 "run the same command again")
def main(argv=None):
    args = parse_args(argv)
    setup_logging(info_stream="stdout")
    if Path(args.output).is_dir():
        raise UserError(f"{args.output}: is a folder; give the ONNX file to write, e.g. "
                        f"{Path(args.output) / 'CenterNet.onnx'}")
    model = load_model(args.checkpoint)
    make_dirs(Path(args.output).parent)
    t0 = time.perf_counter()
    proto = export_onnx(model, args.output, target=args.target, dcn=args.dcn,
                        input_size=tuple(args.input_size), dynamic_size=args.dynamic_size, flip=args.flip)
    ops = count_ops(proto)
    dcn_nodes = ops.get("DeformConv", 0) + ops.get("DeformableConv2D", 0)
    print(f"wrote {args.output} ({args.target}, opset {proto.opset_import[0].version}, "
          f"{dcn_nodes} deformable conv nodes, {sum(ops.values())} nodes"
          f"{', flip test in the graph: output1 is the sigmoid-averaged heatmap' if args.flip else ''}) "
          f"in {time.perf_counter() - t0:.1f}s")
    if args.no_check:
        return 0
    print("checking the export against PyTorch (float64) ...", flush=True)
    t0 = time.perf_counter()
    reference = FlipTest(model) if args.flip else model  # the flip graph is checked against the flip test
    checks = check_export(reference, proto, target=args.target, input_size=tuple(args.input_size),
                          threads=args.threads, name=args.output)
    for c in checks:
        print(c.describe())
    require_passed(checks, args.output)
    print(f"check passed in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
