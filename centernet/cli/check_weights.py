"""Check that a file loads as an upstream CenterNet checkpoint (ctdet or
multi_pose) and say which network it holds (run_all.sh does this before its
first stage; with --task it prints only the task, for scripts).

    python -m centernet.cli.check_weights ctdet_coco_dla_2x.pth
"""
import argparse
import sys

from centernet.environment import require

require("torch")  # centernet.cli checked the rest

from centernet.cli.args import ArgumentParser
from centernet.cli.logs import setup_logging
from centernet.errors import cli, quiet_interrupt

with quiet_interrupt():  # torch loads here
    from centernet.model.checkpoint import load_model


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="upstream checkpoint (.pth) of any of its networks")
    p.add_argument("--task", action="store_true",
                   help="print only the task the checkpoint holds: ctdet or multi_pose (default: off)")
    return p


@cli(interrupted="nothing written")
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.task:
        from centernet.model.checkpoint import checkpoint_facts
        print(checkpoint_facts(args.checkpoint).task)
        return 0
    model = load_model(args.checkpoint)
    print(f"{args.checkpoint}: {model.facts.task} {model.facts.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
