"""A metrics.json (written by CenterNet_postprocess_s2.py) as a table, and
the AP and AP50 beside upstream's published AP for the test mode; run_all.sh prints
them with

    python -m centernet.cli.report run_eval_result/metrics.json
    python -m centernet.cli.report run_eval_result/metrics.json --keep-res --flip

Keypoint metrics (multi_pose: metrics["iou_type"] == "keypoints") get the
10 keypoint stats, scored by OKS, and the keypoint AP beside upstream's.
"""
from centernet.io.coco import is_keypoint_metrics

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


# The 10 keypoint stats of COCOeval (iouType "keypoints"): OKS in place of
# IoU, up to 20 people per image, no "small" range.
KEYPOINT_STATS = [("AP", "keypoint AP @[OKS=0.50:0.95 | area=all | maxDets=20]"),
                  ("AP50", "keypoint AP @[OKS=0.50 | area=all | maxDets=20]"),
                  ("AP75", "keypoint AP @[OKS=0.75 | area=all | maxDets=20]"),
                  ("APm", "keypoint AP @[OKS=0.50:0.95 | area=medium | maxDets=20]"),
                  ("APl", "keypoint AP @[OKS=0.50:0.95 | area=large | maxDets=20]"),
                  ("AR", "keypoint AR @[OKS=0.50:0.95 | area=all | maxDets=20]"),
                  ("AR50", "keypoint AR @[OKS=0.50 | area=all | maxDets=20]"),
                  ("AR75", "keypoint AR @[OKS=0.75 | area=all | maxDets=20]"),
                  ("ARm", "keypoint AR @[OKS=0.50:0.95 | area=medium | maxDets=20]"),
                  ("ARl", "keypoint AR @[OKS=0.50:0.95 | area=large | maxDets=20]")]

# multi_pose_dla_3x's keypoint AP on COCO val2017 as upstream's MODEL_ZOO
# publishes it, by mode (keep_res, flip, multi-scale): flip + keep-res only.
PUBLISHED_KEYPOINT_AP = {(True, True, False): 58.9}


def format_metrics(metrics):
    """The COCO stats as a markdown table, in percent: the 12 box stats, or
    the 10 keypoint stats (OKS) for keypoint metrics."""
    lines = ["| metric | value | meaning |", "|---|---:|---|"]
    for key, meaning in (KEYPOINT_STATS if is_keypoint_metrics(metrics) else STATS):
        v = metrics.get(key)
        lines.append(f"| {key} | {'n/a' if v is None or v < 0 else f'{100 * v:.1f}'} | {meaning} |")
    return "\n".join(lines)


def percent(value):
    """A COCOeval number in percent, 'n/a' where it is missing or -1 (no
    ground truth in that range, as pycocotools reports it)."""
    return "n/a" if value is None or value < 0 else f"{100 * value:.1f}"


def format_mode(metrics, mode):
    """Our AP and AP50 (IoU 0.5, as Pascal VOC users quote it) beside
    upstream's published AP for this test mode; for keypoint metrics the
    keypoint AP (OKS) beside multi_pose_dla_3x's published one."""
    if is_keypoint_metrics(metrics):
        published = None
        if not mode.multi_scale and mode.keep_res:
            published = PUBLISHED_KEYPOINT_AP.get((mode.keep_res, mode.flip, False))
        head = ("| test mode | keypoint AP here (OKS) | keypoint AP50 here | multi_pose_dla_3x's published "
                "keypoint AP (COCO val2017) |")
    else:
        published = mode.published_ap
        head = "| test mode | AP here | AP50 here | ctdet_coco_dla_2x's published AP (COCO val2017) |"
    lines = [head, "|---|---:|---:|---:|",
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
