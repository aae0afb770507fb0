"""A metrics.json (written by CenterNet_postprocess_s2.py) as a table, and
the AP and AP50 beside upstream's published AP for the test mode; run_all.sh prints
them with

    python -m centernet.cli.report run_eval_result/metrics.json
    python -m centernet.cli.report run_eval_result/metrics.json --keep-res --flip
"""

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


def percent(value):
    """A COCOeval number in percent, 'n/a' where it is missing or -1 (no
    ground truth in that range, as pycocotools reports it)."""
    return "n/a" if value is None or value < 0 else f"{100 * value:.1f}"


def format_mode(metrics, mode):
    """Our AP and AP50 (IoU 0.5, as Pascal VOC users quote it) beside
    upstream's published AP for this test mode."""
    published = mode.published_ap
    lines = ["| test mode | AP here | AP50 here | ctdet_coco_dla_2x's published AP (COCO val2017) |", "|---|---:|---:|---:|",
             f"| {mode.name} | {percent(metrics.get('AP'))} | {percent(metrics.get('AP50'))} | "
             f"{'none published for this mode' if published is None else f'{published:.1f}'} |"]
    return "\n".join(lines)


def format_standin(metrics, record, mode):
    """Our AP and AP50 beside what the stand-in detector scored on its
    held-out split when it was trained (its record): equal on that whole
    split in the fixed-size mode, whatever the backend."""
    n = metrics.get("num_images")
    side = record["recipe"]["input_size"]
    lines = ["| run | images | AP | AP50 |", "|---|---:|---:|---:|",
             f"| this run, {mode.name} | {n if n is not None else '?'} | {percent(metrics.get('AP'))} | "
             f"{percent(metrics.get('AP50'))} |",
             f"| the stand-in at training time, fixed {side}x{side} | {record['val_images']} | "
             f"{percent(record['val_AP'])} | {percent(record['val_AP50'])} |",
             "",
             "The stand-in detector is ResNet-18 + DCN trained on generated shapes: it detects shapes, not "
             "COCO objects. Its AP shows that the pipeline works; it says nothing of a COCO checkpoint's."]
    return "\n".join(lines)
