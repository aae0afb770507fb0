"""Train the stand-in detector: upstream's ResNet-18 + DCN ctdet network on
generated shapes (rectangle, ellipse, triangle, cross), on the CPU, with
upstream's focal and L1 losses. It detects shapes, not COCO objects; the
demo, the end-to-end AP test and the precision benchmark use it so that their
AP means something. The toolkit ships the result (models/); this is how it
was made, and how to make it again.

    python -m centernet.cli.train_standin models/ctdet_shapes_resdcn18.pth

An interrupted run resumes from OUTPUT.partial when run again.
"""
import argparse
import shlex
import sys

from centernet.environment import require

require("torch")

from centernet.cli.args import ArgumentParser
from centernet.cli.logs import setup_logging
from centernet.errors import cli, quiet_interrupt

with quiet_interrupt():  # torch loads here
    import torch
    from centernet.train.standin import StandinRecipe, make_standin

DEFAULTS = StandinRecipe()


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output", help="the checkpoint to write (upstream's layout, float16 tensors)")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help="training steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                   help="images per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="Adam's peak learning rate (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="random seed (default: %(default)s)")
    p.add_argument("--val-images", type=int, default=DEFAULTS.val_images,
                   help="held-out images the AP is recorded on (default: %(default)s)")
    p.add_argument("--data", default=None,
                   help="where to write the held-out images (default: standin_data beside OUTPUT)")
    p.add_argument("--threads", type=int, default=0,
                   help="PyTorch threads, 0 = PyTorch's default; the weights depend on it (default: %(default)s)")
    return p


@cli(interrupted="progress up to the last save is kept in OUTPUT.partial", resume="run the same command again")
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = StandinRecipe(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           val_images=args.val_images)
    command = "python -m centernet.cli.train_standin " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    record = make_standin(args.output, recipe, args.data, command=command)
    print(f"wrote {args.output}: held-out AP {record['val_AP']:.4f} (AP50 {record['val_AP50']:.4f}), "
          f"trained in {record['training_seconds'] / 60:.1f} min on {record['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
