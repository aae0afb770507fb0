"""centernet.report.summary and evaluation.ap_line: the metrics table and AP
lines of box and keypoint (multi_pose) metrics."""
from centernet.core.modes import TestMode
from centernet.report.evaluation import ap_line
from centernet.report.summary import format_metrics, format_mode

BOX = {"AP": 0.374, "AP50": 0.551, "AP75": 0.4, "APs": 0.2, "APm": 0.41, "APl": 0.5, "AR1": 0.3, "AR10": 0.5,
       "AR100": 0.52, "ARs": 0.3, "ARm": 0.55, "ARl": 0.7}
KEYPOINTS = {"iou_type": "keypoints", "AP": 0.589, "AP50": 0.823, "AP75": 0.64, "APm": 0.54, "APl": 0.66,
             "AR": 0.64, "AR50": 0.87, "AR75": 0.69, "ARm": 0.58, "ARl": 0.72}


def test_box_metrics_table_is_unchanged():
    lines = format_metrics({**BOX, "iou_type": "bbox"}).splitlines()
    assert format_metrics(BOX) == "\n".join(lines)  # a metrics.json from before "iou_type"
    assert len(lines) == 2 + 12
    assert lines[2] == "| AP | 37.4 | AP @[IoU=0.50:0.95 | area=all | maxDets=100] |"
    assert lines[-1] == "| ARl | 70.0 | AR @[IoU=0.50:0.95 | area=large | maxDets=100] |"


def test_keypoint_metrics_table():
    lines = format_metrics(KEYPOINTS).splitlines()
    assert len(lines) == 2 + 10
    assert [ln.split(" | ")[0][2:] for ln in lines[2:]] == ["AP", "AP50", "AP75", "APm", "APl",
                                                              "AR", "AR50", "AR75", "ARm", "ARl"]
    assert lines[2] == "| AP | 58.9 | keypoint AP @[OKS=0.50:0.95 | area=all | maxDets=20] |"
    assert lines[7] == "| AR | 64.0 | keypoint AR @[OKS=0.50:0.95 | area=all | maxDets=20] |"
    assert "IoU" not in "\n".join(lines)


def test_ap_lines():
    assert ap_line(BOX) == "AP 37.4 (IoU .50:.95), AP50 55.1 (IoU .50)"
    assert ap_line(KEYPOINTS, "keep-res + flip") == \
        "keypoint AP 58.9 (OKS .50:.95), keypoint AP50 82.3 (OKS .50); keep-res + flip"


def test_keypoint_mode_table_compares_with_multi_pose():
    table = format_mode(KEYPOINTS, TestMode(keep_res=True, flip=True)).splitlines()
    assert "keypoint AP here (OKS)" in table[0] and "multi_pose_dla_3x" in table[0]
    assert table[2] == "| keep-res + flip | 58.9 | 82.3 | 58.9 |"
    assert format_mode(KEYPOINTS, TestMode()).splitlines()[2].endswith("| none published for this mode |")
    box = format_mode(BOX, TestMode(keep_res=True, flip=True)).splitlines()
    assert "ctdet_coco_dla_2x" in box[0] and box[2] == "| keep-res + flip | 37.4 | 55.1 | 39.2 |"
