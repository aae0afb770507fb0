#!/usr/bin/env python3
"""See what the detector sees: boxes drawn on photos, folders of photos and videos.

    python CenterNet_demo.py --model ctdet_coco_dla_2x.pth my_photo.jpg
    python CenterNet_demo.py --model CenterNet.onnx photos/ clip.mp4 --output demo_out
    python CenterNet_demo.py --model ctdet_coco_dla_2x.pth --backend torch --device cuda photos/

Each PATH is an image, a folder of images (jpg, jpeg, png, bmp, webp, tif) or a
video (mp4, avi, mov, mkv, webm, ...). Annotated copies go to --output under the
same names (videos as .mp4), with detections.json: per image or video frame its
file name, size and detections (box x1, y1, x2, y2 in pixels, class name, COCO
category id, score). A model with random weights (the demo's) puts a red banner
on every picture saying that its boxes mean nothing. A .pth checkpoint is
exported to ONNX once, next to it (<name>.cache-512x512.onnx, or
.cache-dynamic.onnx for --keep-res), checked against PyTorch, and reused while
the checkpoint is unchanged (--backend torch runs it in PyTorch instead, on CPU
or CUDA, no export). An unreadable input is named in one line and skipped; the
exit status is then 1.
"""
import argparse
import sys
from pathlib import Path

from centernet.cli.args import (ArgumentParser, add_backend_arguments, add_batchsize_argument, add_device_arguments,
                                add_flip_argument, add_input_size_argument, add_keep_res_argument,
                                add_limit_argument, add_progress_arguments, add_scales_argument,
                                check_backend_args, progress_enabled, torch_options_from_args)
from centernet.cli.args import parse_args as parse_cli_args
from centernet.cli.logs import setup_logging
from centernet.constants import RANDOM_WEIGHTS_NOTE
from centernet.core.modes import parse_scales
from centernet.pipeline.demo import VIS_THRESH, run_demo
from centernet.errors import UserError, cli
from centernet.runtime.ort_session import PROVIDERS

DEFAULT_MODELS = ("CenterNet.onnx", "ctdet_coco_dla_2x.pth")


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders of images, video files")
    p.add_argument("--model", default=None,
                   help="ONNX model or upstream .pth checkpoint (default: ./CenterNet.onnx if present, "
                        "else ./ctdet_coco_dla_2x.pth, else the stand-in detector that ships with the toolkit, "
                        "models/ctdet_shapes_resdcn18.pth, which detects shapes, not COCO objects)")
    p.add_argument("--output", default="demo_out",
                   help="folder for the annotated copies and detections.json (default: %(default)s)")
    p.add_argument("--vis-thresh", type=float, default=VIS_THRESH,
                   help="draw and list detections with at least this score (default: %(default)s)")
    add_keep_res_argument(p, "run at each image's own resolution (rounded up to a multiple of 32); needs a "
                             ".pth or an ONNX model exported with --dynamic-size")
    add_flip_argument(p, "run it here (twice the work)")
    add_input_size_argument(p, None, what="fixed-mode input height and width, multiples of 32",
                            default_text="the model's own: recorded in the ONNX file or the checkpoint, 512 512 "
                                         "for upstream's checkpoints")
    add_device_arguments(p, PROVIDERS)
    add_scales_argument(p, "each image resized by each, detections merged with soft-NMS")
    add_batchsize_argument(p, what="images of one input size per inference batch")
    p.add_argument("--names", default=None, metavar="FILE",
                   help="class names, one per line in the model's class order (default: the names the model "
                        "records, else the 80 COCO names for an 80-class model)")
    add_limit_argument(p, "only the first N images (by file name) of each folder")
    add_progress_arguments(p)
    add_backend_arguments(p, default="onnxruntime")
    return p


def parse_args(argv=None):
    return parse_cli_args(build_parser(), argv)


# What a user who followed the quick start has, and where the real checkpoint comes from.
MODEL_HINT = ("the demo's model is work/demo/CenterNet.onnx (made by bash run_all.sh: the stand-in detector, which "
              "detects shapes, not COCO objects); upstream's ctdet_coco_dla_2x.pth is in its model zoo, "
              "https://github.com/xingyizhou/CenterNet/blob/master/readme/MODEL_ZOO.md")


def default_model():
    for name in DEFAULT_MODELS:
        if Path(name).is_file():
            return name
    from centernet.model.demo_data import STANDIN_LABEL, standin_checkpoint
    try:
        standin = standin_checkpoint()
    except UserError:
        raise UserError(f"no model given and neither {' nor '.join(DEFAULT_MODELS)} is here; pass --model "
                        f"(an .onnx file or a .pth checkpoint): {MODEL_HINT}") from None
    print(f"no model given and neither {' nor '.join(DEFAULT_MODELS)} is here: running {STANDIN_LABEL}, "
          f"{standin}")
    return str(standin)


@cli(interrupted="the annotated copies finished so far are kept, and detections.json lists them",
     resume="a re-run starts over")
def main(argv=None):
    args = parse_args(argv)
    setup_logging(info_stream="stdout")
    if args.threads < 0:
        raise UserError(f"--threads {args.threads}: must be 0 (all cores) or more")
    args.model = args.model or default_model()
    check_backend_args(args)
    if not Path(args.model).exists():
        raise UserError(f"{args.model}: model not found; {MODEL_HINT}")
    summary = run_demo(args.paths, args.model, output=args.output, thresh=args.vis_thresh,
                       keep_res=args.keep_res, input_size=args.input_size, device=args.device,
                       threads=args.threads, names_file=args.names, limit=args.limit,
                       progress=progress_enabled(args), flip=args.flip, backend=args.backend,
                       torch_options=torch_options_from_args(args), scales=parse_scales(args.scales),
                       batchsize=args.batchsize)
    counts = [f"{n} {what}{'s' if n != 1 else ''}" for n, what in ((summary["images"], "image"),
                                                                  (summary["videos"], "video")) if n]
    if summary["json"] is None:
        print(f"annotated nothing; {summary['output']}/ is left as it was")
    else:
        print(f"annotated {' and '.join(counts)} -> {summary['output']}/; detections in {summary['json']}")
    if summary["random_weights"]:
        print(RANDOM_WEIGHTS_NOTE)
    if summary["errors"]:
        print(f"error: {len(summary['errors'])} input(s) skipped (named above); the others are done",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
