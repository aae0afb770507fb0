"""The demo's data and weights: the held-out images of the generated shapes
dataset and a copy of the stand-in detector (ResNet-18 + DCN trained on those
shapes; it detects shapes, not COCO objects), so the whole pipeline runs on a
fresh machine with nothing downloaded and scores a real AP.

    python -m centernet.cli.make_demo work/demo   # writes work/demo/data and work/demo/ctdet_shapes_resdcn18.pth
"""
import argparse
import sys

from centernet.environment import require

require("torch")  # centernet.cli checked the rest

from centernet.cli.args import ArgumentParser, add_progress_arguments, progress_enabled
from centernet.cli.logs import setup_logging
from centernet.errors import UserError, cli, quiet_interrupt

with quiet_interrupt():  # torch loads here
    from centernet.model.demo_data import make_demo


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="where to write data/ and the stand-in's checkpoint")
    p.add_argument("--num-images", "--images", dest="num_images", type=int, default=None,
                   help="the first N held-out images; also spelled --images (default: the whole held-out "
                        "split, on which the stand-in's AP was recorded)")
    add_progress_arguments(p)
    return p


@cli(interrupted="what is finished is kept", resume="run the same command again: it makes what is still missing")
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.num_images is not None and args.num_images < 1:
        raise UserError(f"--num-images {args.num_images}: must be at least 1")
    data, weights = make_demo(args.folder, args.num_images, progress=progress_enabled(args))
    print(f"demo data: {data}\ndemo weights: {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
