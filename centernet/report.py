"""Print a metrics.json (written by CenterNet_postprocess_s2.py) as a table.

    python -m centernet.report run_eval_result/metrics.json
"""
import json
import sys
from pathlib import Path

from .errors import UserError, cli

STATS = [("AP", "AP @[IoU=0.50:0.95 | area=all | maxDets=100]"),
         ("AP50", "AP @[IoU=0.50 | area=all | maxDets=100]"),
         ("AP75", "AP @[IoU=0.75 | area=all | maxDets=100]"),
         ("APs", "AP @[IoU=0.50:0.95 | area=small | maxDets=100]"),
         ("APm", "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]"),
         ("APl", "AP @[IoU=0.50:0.95 | area=large | maxDets=100]"),
         ("AR1", "AR @[IoU=0.50:0.95 | area=all | maxDets=1]"),
         ("AR10", "AR @[IoU=0.50:0.95 | area=all | maxDets=10]"),
         ("AR100", "AR @[IoU=0.50:0.95 | area=all | maxDets=100]"),
         ("ARs", "AR @[IoU=0.50:0.95 | area=small | maxDets=100]"),
         ("ARm", "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]"),
         ("ARl", "AR @[IoU=0.50:0.95 | area=large | maxDets=100]")]


def format_metrics(metrics):
    """The 12 COCO stats as a markdown table, in percent."""
    lines = ["| metric | value | meaning |", "|---|---:|---|"]
    for key, meaning in STATS:
        v = metrics.get(key)
        lines.append(f"| {key} | {'n/a' if v is None or v < 0 else f'{100 * v:.1f}'} | {meaning} |")
    return "\n".join(lines)


@cli(interrupted="nothing written")
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise UserError("usage: python -m centernet.report METRICS_JSON")
    path = Path(argv[0])
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not JSON ({e})") from None
    print(format_metrics(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
