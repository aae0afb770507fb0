"""The demo: a small generated COCO-format dataset and deterministic random
weights in the upstream checkpoint layout, so the whole pipeline runs on a
fresh machine with nothing downloaded. A smoke test: its AP means nothing.

    python -m centernet.cli.make_demo work/demo      # writes work/demo/data and work/demo/ctdet_demo.pth
"""
import argparse
import sys

from centernet.environment import require

require("torch")  # centernet.cli checked the rest

from centernet.cli.args import ArgumentParser, add_progress_arguments, progress_enabled
from centernet.cli.logs import setup_logging
from centernet.errors import cli, quiet_interrupt

with quiet_interrupt():  # torch loads here
    from centernet.model.demo_data import DEMO_IMAGES, make_demo


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="where to write data/ and ctdet_demo.pth")
    p.add_argument("--num-images", "--images", dest="num_images", type=int, default=DEMO_IMAGES,
                   help="number of images to generate; also spelled --images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_progress_arguments(p)
    return p


@cli(interrupted="what is finished is kept", resume="run the same command again: it makes what is still missing")
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    data, weights = make_demo(args.folder, args.num_images, args.seed, progress=progress_enabled(args))
    print(f"demo data: {data}\ndemo weights: {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
