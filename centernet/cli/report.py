"""Print a metrics.json (written by CenterNet_postprocess_s2.py or
CenterNet_eval.py) as a table, and the AP beside upstream's published AP for
the test mode (run_all.sh ends with it); a run with random weights (the
demo's) gets a note below them saying that its AP means nothing.

    python -m centernet.cli.report run_eval_result/metrics.json
    python -m centernet.cli.report run_eval_result/metrics.json --keep-res --flip
"""
import argparse
import sys
from pathlib import Path

from centernet.cli.args import ArgumentParser, add_flip_argument, add_keep_res_argument, add_scales_argument
from centernet.cli.logs import setup_logging
from centernet.constants import RANDOM_WEIGHTS_FIELD, RANDOM_WEIGHTS_NOTE
from centernet.core.modes import TestMode, parse_scales
from centernet.errors import cli
from centernet.io.binio import load_json
from centernet.report.summary import format_metrics, format_mode, format_standin


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", help="metrics.json of CenterNet_postprocess_s2.py or CenterNet_eval.py")
    add_keep_res_argument(p, "the run used it")
    add_flip_argument(p, "the run used it")
    add_scales_argument(p, "the run's scales")
    p.add_argument("--standin-record", default=None, metavar="JSON",
                   help="a run of the stand-in detector (the demo's): compare with the AP its record says it "
                        "scored on the held-out images, instead of upstream's published AP (default: none)")
    return p


@cli(interrupted="nothing written")
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    metrics = load_json(Path(args.metrics), "metrics file")
    print(format_metrics(metrics))
    print()
    mode = TestMode(args.keep_res, args.flip, parse_scales(args.scales))
    if args.standin_record:
        print(format_standin(metrics, load_json(Path(args.standin_record), "stand-in record"), mode))
    else:
        print(format_mode(metrics, mode))
    if isinstance(metrics, dict) and metrics.get(RANDOM_WEIGHTS_FIELD):
        print()
        print(RANDOM_WEIGHTS_NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
