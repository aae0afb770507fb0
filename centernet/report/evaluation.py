"""The end of every evaluation, staged (CenterNet_postprocess_s2.py) or
streamed (CenterNet_eval.py): the best and worst classes, metrics.json in
one format, the per-class table, the AP line and the pictures; each says so
when the model has random weights."""
import json
import logging

from centernet.constants import RANDOM_WEIGHTS_FIELD, RANDOM_WEIGHTS_NOTE
from centernet.io.binio import make_dirs, write_atomic
from centernet.io.coco import ap_name, format_best_worst, overlap_measure, write_per_class_table
from centernet.report.plots import write_eval_plots
from centernet.report.summary import percent

logger = logging.getLogger(__name__)


def ap_line(metrics, mode=None):
    """'AP 37.4 (IoU .50:.95), AP50 55.1 (IoU .50)', then the mode: COCO's
    AP and, beside it, the AP at IoU 0.5 that Pascal VOC users quote. For
    keypoint metrics 'keypoint AP 58.9 (OKS .50:.95), keypoint AP50 .. (OKS .50)'."""
    measure = overlap_measure(metrics)
    kind = ap_name(measure)
    return (f"{kind} {percent(metrics['AP'])} ({measure} .50:.95), {kind}50 {percent(metrics.get('AP50'))} "
            f"({measure} .50)" + (f"; {mode}" if mode else ""))


def write_evaluation(metrics, folder, mode=None, random_weights=False):
    """Write metrics.json (COCOeval's numbers, box or keypoint ("iou_type"),
    per-class AP and PR curves,
    the test mode where it is known, and RANDOM_WEIGHTS_FIELD: whether the
    model's weights are random), per_class_ap.txt and the plots into
    `folder`, and say so. Returns the metrics.json path."""
    folder = make_dirs(folder)
    metrics = {**metrics, "mode": mode, RANDOM_WEIGHTS_FIELD: bool(random_weights)}
    logger.info("")
    measure = overlap_measure(metrics)
    logger.info(format_best_worst(metrics["per_class"], measure=measure))
    path = folder / "metrics.json"
    write_atomic(path, (json.dumps(metrics, indent=1) + "\n").encode("utf-8"))
    logger.info(f"every class: {write_per_class_table(metrics['per_class'], folder, measure)}")
    logger.info("")
    logger.info(ap_line(metrics, mode) + f" -> {path}")
    if random_weights:
        logger.info(RANDOM_WEIGHTS_NOTE)
    pictures = write_eval_plots(metrics, folder)
    if pictures:
        logger.info("plots: " + ", ".join(map(str, pictures)))
    return path
