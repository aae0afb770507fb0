"""Redraw the pictures of a saved run: pr_curves.png and per_class_ap.png
from a metrics.json, benchmark.png from a benchmark.json.

    python -m centernet.cli.plots run_eval_result/metrics.json      # or work/benchmark/benchmark.json
"""
import argparse
import sys
from pathlib import Path

from centernet.cli.args import ArgumentParser
from centernet.cli.logs import setup_logging
from centernet.errors import UserError, cli
from centernet.io.binio import load_json
from centernet.report.plots import BENCHMARK, plot_benchmark, write_eval_plots


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", help="metrics.json (CenterNet_postprocess_s2.py, CenterNet_eval.py) or "
                                "benchmark.json (CenterNet_benchmark.py)")
    p.add_argument("--output", "--out", dest="output", default=None,
                   help="folder for the pictures; also spelled --out (default: the JSON file's folder)")
    return p


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    path = Path(args.json)
    data = load_json(path, "metrics or benchmark file")
    out = Path(args.output) if args.output else path.parent
    if isinstance(data, dict) and "rows" in data:
        written = [plot_benchmark(data, out / BENCHMARK)]
    elif isinstance(data, dict) and "per_class" in data:
        written = write_eval_plots(data, out)
    else:
        raise UserError(f"{path}: neither a metrics.json nor a benchmark.json")
    print("plots: " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
