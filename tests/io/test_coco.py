"""centernet.io.coco and CenterNet_postprocess_s2.py: class mapping, results
files, COCOeval wrapper against hand-worked cases, and one-line errors."""
import json
import logging
import shutil

import numpy as np
import pytest

from centernet.constants import NUM_JOINTS
from centernet.io.coco import (COCO_CATEGORIES, KEYPOINT_STAT_NAMES, PER_CLASS_TABLE, STAT_NAMES, class_category_ids,
                               class_names, evaluate_coco, format_best_worst, is_keypoint_dataset, load_annotations,
                               stable_image_id, write_results)
from centernet.errors import UserError
from conftest import assert_one_line_error


def test_coco_categories_are_the_80_ids_with_gaps():
    ids = [c[0] for c in COCO_CATEGORIES]
    assert len(ids) == 80 and len({c[1] for c in COCO_CATEGORIES}) == 80
    assert sorted(set(range(1, 91)) - set(ids)) == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    assert COCO_CATEGORIES[0][1] == "person" and COCO_CATEGORIES[-1][1] == "toothbrush"


def test_class_index_is_jth_smallest_category_id():
    cats = [{"id": cid, "name": name} for cid, name, _ in COCO_CATEGORIES]
    data = {"images": [], "categories": cats[::-1]}  # order in the file must not matter
    ids = class_category_ids(data)
    assert ids[0] == 1 and ids[11] == 13 and ids[79] == 90 and ids == sorted(ids)
    assert class_names(data)[11] == "stop sign"
    with pytest.raises(UserError, match="79 categories"):
        class_category_ids({"images": [], "categories": cats[1:]})


def test_stable_image_id():
    assert stable_image_id("000000397133") == 397133
    assert stable_image_id("holiday") == stable_image_id("holiday") != stable_image_id("holiday2")
    assert 0 <= stable_image_id("holiday") < 2 ** 31


def tiny_gt():
    """Two images; image 1 has a person and a car, image 2 one person."""
    cats = [{"id": cid, "name": name} for cid, name, _ in COCO_CATEGORIES]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 80], "area": 3200.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [60, 20, 50, 30], "area": 1500.0, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400.0, "iscrowd": 0},
    ]
    images = [{"id": 1, "file_name": "a.jpg", "width": 128, "height": 128},
              {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48}]
    return {"images": images, "annotations": anns, "categories": cats}


def det(image_id, cat, bbox, score):
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def test_ground_truth_as_detections_scores_one():
    gt = tiny_gt()
    results = [det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in gt["annotations"]]
    m = evaluate_coco(gt, results, verbose=False)
    assert set(STAT_NAMES) <= set(m)
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0) and m["AR100"] == pytest.approx(1.0)
    assert m["per_class"]["person"] == pytest.approx(1.0) and m["per_class"]["car"] == pytest.approx(1.0)
    assert m["per_class"]["dog"] is None  # no ground truth
    assert results[0] == det(1, 1, [10, 10, 40, 80], 0.9)  # the caller's list is not modified


def test_negative_size_boxes_are_legal_and_match_nothing():
    # An untrained (or unlucky) size head gives negative widths; upstream
    # passes them to COCOeval unchanged, where they overlap no ground truth.
    gt = tiny_gt()
    results = [det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in gt["annotations"]]
    results.append(det(1, 1, [30.0, 30.0, -2.5, -0.5], 0.1))  # lowest score: precision stays 1
    m = evaluate_coco(gt, results, verbose=False)
    assert m["AP"] == pytest.approx(1.0)


def test_hand_worked_precision_recall():
    """Persons: a false positive outscores both true positives, so precision
    is 1/2 at recall 1/2 and 2/3 at recall 1; COCO's interpolated precision
    is then 2/3 at every recall level, so person AP = 2/3 at every IoU. Cars:
    one box with IoU 19/30 = 0.633 counts at IoU thresholds .50, .55, .60
    only: AP 3/10."""
    gt = tiny_gt()
    results = [
        det(1, 1, [80, 80, 20, 20], 0.95),    # false positive
        det(1, 1, [10, 10, 40, 80], 0.9),     # exact
        det(2, 1, [5, 5, 20, 20], 0.8),       # exact
        det(1, 3, [60, 20, 50, 19], 0.7),     # IoU 950/1500
    ]
    m = evaluate_coco(gt, results, verbose=False)
    assert m["per_class"]["person"] == pytest.approx(2 / 3, abs=1e-9)
    assert m["per_class"]["car"] == pytest.approx(3 / 10, abs=1e-9)
    assert m["AP"] == pytest.approx((2 / 3 + 3 / 10) / 2, abs=1e-9)
    assert m["AP50"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-9)
    assert m["AP75"] == pytest.approx((2 / 3 + 0) / 2, abs=1e-9)


def test_write_results_is_atomic_and_makes_the_folder(tmp_path):
    path = tmp_path / "save" / "results.json"
    write_results(path, [det(1, 1, [1.0, 2.0, 3.0, 4.0], 0.123456789012345)])
    assert json.loads(path.read_text())[0]["score"] == 0.123456789012345  # full precision
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_annotation_file_errors(tmp_path):
    with pytest.raises(UserError, match="missing.json: annotation file not found"):
        load_annotations(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(UserError, match=r"bad.json: not valid JSON \(.* line 1"):
        load_annotations(bad)
    bad.write_text('{"images": [{"id": 1, "file_name": "a.jpg", "width": 0, "height": 5}], "categories": []}')
    with pytest.raises(UserError, match=r"images\[0\] has a missing or invalid 'width'"):
        load_annotations(bad)
    gt = tiny_gt()
    del gt["annotations"][1]["area"]
    bad.write_text(json.dumps(gt))
    load_annotations(bad)  # decoding does not need annotations
    with pytest.raises(UserError, match=r"annotations\[1\] has a missing or invalid 'area'"):
        load_annotations(bad, require_annotations=True)


@pytest.fixture
def eval_dir(tmp_path, synthetic_coco):
    """data/ from the synthetic set and save/results.json = its ground truth."""
    shutil.copytree(synthetic_coco["root"], tmp_path / "data")
    results = [det(a["image_id"], a["category_id"], a["bbox"], 0.5) for a in synthetic_coco["dataset"]["annotations"]]
    write_results(tmp_path / "save" / "results.json", results)
    return tmp_path


def test_s2_writes_metrics_and_prints_summary(eval_dir, run_script, synthetic_coco):
    proc = run_script("CenterNet_postprocess_s2.py", "--dataset=./data", cwd=eval_dir)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # COCOeval's 12-line summary first, none of pycocotools' progress chatter
    assert [ln.split("(")[0].strip() for ln in lines[:12]] == ["Average Precision"] * 6 + ["Average Recall"] * 6
    assert not {"DONE", "index", "Loading", "Accumulating", "Running"} & set(proc.stdout.split())
    # then the best and worst 5 classes, and where the whole table is
    with_gt = {c["name"] for c in synthetic_coco["dataset"]["categories"]
               if any(a["category_id"] == c["id"] for a in synthetic_coco["dataset"]["annotations"])}
    assert len(with_gt) > 10
    assert lines[12:] == ["", f"AP per class (IoU .50:.95), best 5 of the {len(with_gt)} classes with ground truth:",
                          *lines[14:19], "worst 5:", *lines[20:25],
                          f"{80 - len(with_gt)} classes have no ground truth in the evaluated images",
                          f"every class: run_eval_result/{PER_CLASS_TABLE}", "",
                          "AP 100.0 (IoU .50:.95), AP50 100.0 (IoU .50) -> run_eval_result/metrics.json",
                          *lines[29:]]  # the plots, if matplotlib is there
    assert len(lines) <= 30
    assert {ln[:-8].strip() for ln in lines[14:19] + lines[20:25]} <= with_gt
    table = (eval_dir / "run_eval_result" / PER_CLASS_TABLE).read_text()
    assert all(name in table for name in with_gt) and "no ground truth in the evaluated images" in table
    metrics = json.loads((eval_dir / "run_eval_result" / "metrics.json").read_text())
    for key in STAT_NAMES:
        assert 0 <= metrics[key] <= 1 or metrics[key] == -1
    assert metrics["AP"] == pytest.approx(1.0)
    assert len(metrics["per_class"]) == 80
    proc = run_script("CenterNet_postprocess_s2.py", "--dataset=./data", "--results=save/results.json",
                      "--resultfolder=other", cwd=eval_dir)
    assert proc.returncode == 0 and (eval_dir / "other" / "metrics.json").is_file()


@pytest.mark.parametrize("content,fragments", [
    ("[]", ["no detections"]),
    ("{\"a\": 1}", ["top level is not a list"]),
    ("[{\"image_id\": 1", ["not valid JSON"]),
    ("[{\"image_id\": 5, \"category_id\": 1, \"bbox\": [1, 2, 3], \"score\": 0.5}]", ["entry 0", "'bbox'"]),
    ("[{\"image_id\": 5, \"category_id\": 1, \"bbox\": [1, 2, 3, 4]}]", ["entry 0", "'score'"]),
    ("[{\"image_id\": 424242424, \"category_id\": 1, \"bbox\": [1, 2, 3, 4], \"score\": 0.5}]",
     ["1 image id(s) not in the annotation file", "424242424"]),
    ("[{\"image_id\": IMG, \"category_id\": 12, \"bbox\": [1, 2, 3, 4], \"score\": 0.5}]", ["category id 12"]),
])
def test_s2_bad_results_are_one_line_errors(eval_dir, run_script, synthetic_coco, content, fragments):
    content = content.replace("IMG", str(synthetic_coco["dataset"]["images"][0]["id"]))
    (eval_dir / "save" / "results.json").write_text(content)
    proc = run_script("CenterNet_postprocess_s2.py", "--dataset=./data", cwd=eval_dir)
    assert_one_line_error(proc, "save/results.json", *fragments)
    assert not (eval_dir / "run_eval_result" / "metrics.json").exists()


def test_s2_missing_files_are_one_line_errors(eval_dir, run_script):
    assert_one_line_error(run_script("CenterNet_postprocess_s2.py", "--dataset=./nodata", cwd=eval_dir),
                          "nodata/coco/annotations/instances_val2017.json", "not found")
    assert_one_line_error(run_script("CenterNet_postprocess_s2.py", "--dataset=./data", "--results=none.json",
                                     cwd=eval_dir), "none.json", "not found")


def test_best_and_worst_five_classes():
    names = [name for _, name, _ in COCO_CATEGORIES]
    per_class = {name: (None if i % 2 else i / 100) for i, name in enumerate(names)}  # 40 with ground truth
    lines = format_best_worst(per_class).splitlines()
    rows = lambda part: [(ln[:-8].strip(), ln[-6:]) for ln in part]  # noqa: E731
    assert lines[0] == "AP per class (IoU .50:.95), best 5 of the 40 classes with ground truth:"
    assert rows(lines[1:6]) == [(names[i], f"{i:.2f}".rjust(6)) for i in (78, 76, 74, 72, 70)]
    assert lines[6] == "worst 5:"
    assert rows(lines[7:12]) == [(names[i], f"{i:.2f}".rjust(6)) for i in (8, 6, 4, 2, 0)]
    assert lines[12:] == ["40 classes have no ground truth in the evaluated images"]
    assert format_best_worst({"cat": None}) == "AP per class: no class has ground truth in the evaluated images"


def test_precision_recall_curves_average_to_the_summary_aps():
    # The hand-worked case above: the curves' means are AP50, AP75 and AP,
    # and person's interpolated precision is 2/3 at every recall level.
    gt = tiny_gt()
    results = [det(1, 1, [80, 80, 20, 20], 0.95), det(1, 1, [10, 10, 40, 80], 0.9),
               det(2, 1, [5, 5, 20, 20], 0.8), det(1, 3, [60, 20, 50, 19], 0.7)]
    m = evaluate_coco(gt, results, verbose=False)
    pr = m["pr_curves"]
    assert len(pr["recall"]) == 101 and pr["recall"][0] == 0 and pr["recall"][-1] == 1
    for key, stat in (("iou50", "AP50"), ("iou75", "AP75"), ("iou50_95", "AP")):
        assert len(pr[key]) == 101
        assert sum(pr[key]) / 101 == pytest.approx(m[stat], abs=1e-5)
    # IoU .75: person 2/3 everywhere, car 0 everywhere (two classes with ground truth)
    assert pr["iou75"] == pytest.approx([1 / 3] * 101, abs=1e-5)


# --- keypoint results (multi_pose) -------------------------------------------

def tiny_kp_gt():
    """Two images of COCO's person_keypoints kind: image 1 two people, image 2
    one, with a few joints unlabelled (0, 0, 0)."""
    from centernet.io.synthetic import person_keypoint_category
    rng = np.random.default_rng(3)
    anns = []
    for k, (img, x, y) in enumerate(((1, 10, 10), (1, 70, 12), (2, 8, 6))):
        kps = []
        for j in range(NUM_JOINTS):
            if j in (3, 4, 15) and k != 1:
                kps += [0, 0, 0]
            else:
                kps += [float(x + rng.uniform(0, 40)), float(y + rng.uniform(0, 90)), 2]
        anns.append({"id": k + 1, "image_id": img, "category_id": 1, "bbox": [x, y, 40, 90], "area": 3600.0,
                     "iscrowd": 0, "keypoints": kps, "num_keypoints": sum(v > 0 for v in kps[2::3])})
    images = [{"id": 1, "file_name": "a.jpg", "width": 128, "height": 128},
              {"id": 2, "file_name": "b.jpg", "width": 64, "height": 112}]
    return {"images": images, "annotations": anns, "categories": [person_keypoint_category()]}


def as_kp_results(gt, score=0.9):
    """The ground truth as upstream writes keypoint results: [x, y, 1] per joint."""
    out = []
    for a in gt["annotations"]:
        kps = list(a["keypoints"])
        kps[2::3] = [1] * NUM_JOINTS
        out.append({"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": score, "keypoints": kps})
    return out


def test_is_keypoint_dataset():
    assert is_keypoint_dataset(tiny_kp_gt())
    assert not is_keypoint_dataset(tiny_gt())
    assert not is_keypoint_dataset([])


def test_keypoint_ap_of_the_ground_truth_is_one():
    gt = tiny_kp_gt()
    results = as_kp_results(gt)
    m = evaluate_coco(gt, results, verbose=False)
    assert m["iou_type"] == "keypoints" and m["max_dets"] == 20 and m["num_images"] == 2
    assert KEYPOINT_STAT_NAMES == ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
    for key in ("AP", "AP50", "AP75", "AR", "AR50", "AR75"):
        assert m[key] == pytest.approx(1.0), key
    assert not {"APs", "AR1", "AR10", "AR100", "ARs"} & set(m)  # the box-only stats
    assert m["per_class"] == {"person": pytest.approx(1.0)}
    pr = m["pr_curves"]
    for key, stat in (("iou50", "AP50"), ("iou75", "AP75"), ("iou50_95", "AP")):
        assert len(pr[key]) == 101 and sum(pr[key]) / 101 == pytest.approx(m[stat], abs=1e-5)
    assert results == as_kp_results(gt)  # the caller's list is not modified
    assert evaluate_coco(tiny_gt(), [det(1, 1, [10, 10, 40, 80], 0.9)], verbose=False)["iou_type"] == "bbox"


def test_keypoint_ap_drops_when_joints_move():
    """A person whose joints are all 30 px off scores nothing at OKS .5 and
    above, whatever its box: the keypoints, not the box, are scored."""
    gt = tiny_kp_gt()
    results = as_kp_results(gt)
    results[0]["keypoints"] = [v + 30 if k % 3 != 2 else v for k, v in enumerate(results[0]["keypoints"])]
    m = evaluate_coco(gt, results, verbose=False)
    assert m["AR"] == pytest.approx(2 / 3)


def test_keypoint_summary_is_logged(caplog):
    gt = tiny_kp_gt()
    with caplog.at_level(logging.INFO, logger="centernet.io.coco"):
        evaluate_coco(gt, as_kp_results(gt))
    lines = "\n".join(r.getMessage() for r in caplog.records).splitlines()
    assert [ln.split("(")[0].strip() for ln in lines] == ["Average Precision"] * 5 + ["Average Recall"] * 5
    assert all("maxDets= 20" in ln for ln in lines)


def test_keypoint_results_against_a_detection_file_are_a_user_error(tmp_path):
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(tiny_gt()))
    with pytest.raises(UserError, match=r"instances_val2017.json: no keypoint annotations .*person_keypoints"):
        evaluate_coco(path, as_kp_results(tiny_kp_gt()), verbose=False)
    bad = tiny_kp_gt()
    bad["annotations"][1]["keypoints"] = bad["annotations"][1]["keypoints"][:-3]
    with pytest.raises(UserError, match=r"annotations: annotations\[1\] has a missing or invalid 'keypoints'"):
        evaluate_coco(bad, as_kp_results(tiny_kp_gt()), verbose=False)


KP_ANNOTATIONS = "data/coco/annotations/person_keypoints_val2017.json"


@pytest.fixture
def kp_eval_dir(tmp_path, synthetic_person_coco):
    """data/ from the synthetic person set and save/results.json = its ground truth."""
    shutil.copytree(synthetic_person_coco["root"], tmp_path / "data")
    write_results(tmp_path / "save" / "results.json", as_kp_results(synthetic_person_coco["dataset"], 0.5))
    return tmp_path


def test_s2_scores_keypoints(kp_eval_dir, run_script):
    proc = run_script("CenterNet_postprocess_s2.py", f"--annotations={KP_ANNOTATIONS}", cwd=kp_eval_dir)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split("(")[0].strip() for ln in lines[:10]] == ["Average Precision"] * 5 + ["Average Recall"] * 5
    assert lines[10:16] == ["", "keypoint AP per class (OKS .50:.95), the 1 classes with ground truth:",
                            "  person  100.00", f"every class: run_eval_result/{PER_CLASS_TABLE}", "",
                            "keypoint AP 100.0 (OKS .50:.95), keypoint AP50 100.0 (OKS .50) -> "
                            "run_eval_result/metrics.json"]
    metrics = json.loads((kp_eval_dir / "run_eval_result" / "metrics.json").read_text())
    assert metrics["iou_type"] == "keypoints" and metrics["AP"] == pytest.approx(1.0)
    assert set(KEYPOINT_STAT_NAMES) <= set(metrics) and metrics["per_class"] == {"person": pytest.approx(1.0)}
    assert "keypoint AP (OKS .50:.95)" in (kp_eval_dir / "run_eval_result" / PER_CLASS_TABLE).read_text()


def test_s2_keypoint_results_against_instances_file_is_one_line_error(kp_eval_dir, run_script, synthetic_coco):
    # the detection set's annotation file, whose images the results name
    shutil.copytree(synthetic_coco["root"], kp_eval_dir / "det")
    dataset = synthetic_coco["dataset"]
    results = as_kp_results({"annotations": [{**a, "keypoints": [5.0, 6.0, 2] * NUM_JOINTS}
                                              for a in dataset["annotations"]]})
    write_results(kp_eval_dir / "save" / "results.json", results)
    proc = run_script("CenterNet_postprocess_s2.py", "--dataset=./det", "--annotations",
                      "det/coco/annotations/instances_val2017.json", cwd=kp_eval_dir)
    assert_one_line_error(proc, "det/coco/annotations/instances_val2017.json", "no keypoint annotations",
                          "person_keypoints_val2017.json")
    assert not (kp_eval_dir / "run_eval_result" / "metrics.json").exists()
    # without --annotations, keypoint results look for the keypoint file of the dataset
    proc = run_script("CenterNet_postprocess_s2.py", "--dataset=./det", cwd=kp_eval_dir)
    assert_one_line_error(proc, "det/coco/annotations/person_keypoints_val2017.json", "not found")
    assert not (kp_eval_dir / "run_eval_result" / "metrics.json").exists()


KP = "[" + ", ".join(["1.5, 2.5, 1"] * NUM_JOINTS) + "]"


@pytest.mark.parametrize("keypoints,fragments", [
    ("[1, 2, 1]", ["entry 0", "'keypoints'", "(3 values", "51 finite numbers"]),
    (KP.replace("2.5", "NaN", 1), ["entry 0", "'keypoints'", "51 finite numbers"]),
    (KP.replace("2.5", "\"x\"", 1), ["entry 0", "'keypoints'"]),
    ("null", ["entry 0", "'keypoints' (None"]),
], ids=["3-values", "nan", "string", "null"])
def test_s2_malformed_keypoints_are_one_line_errors(kp_eval_dir, run_script, synthetic_person_coco, keypoints,
                                                   fragments):
    img = synthetic_person_coco["dataset"]["images"][0]["id"]
    (kp_eval_dir / "save" / "results.json").write_text(
        f'[{{"image_id": {img}, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5, "keypoints": {keypoints}}}]')
    proc = run_script("CenterNet_postprocess_s2.py", f"--annotations={KP_ANNOTATIONS}", cwd=kp_eval_dir)
    assert_one_line_error(proc, "save/results.json", *fragments)


def test_keypoint_results_must_all_carry_keypoints():
    gt = tiny_kp_gt()
    results = as_kp_results(gt)
    del results[2]["keypoints"]
    with pytest.raises(UserError, match=r"kp.json: entry 2 has a missing or invalid 'keypoints' \(None"):
        evaluate_coco(gt, results, verbose=False, results_source="kp.json")
    results = as_kp_results(gt)
    del results[1]["bbox"]  # pycocotools uses the boxes as given where the first entry has one: all must
    with pytest.raises(UserError, match=r"entry 1 has a missing or invalid 'bbox'"):
        evaluate_coco(gt, results, verbose=False)
    for r in results:  # none: COCOeval makes them from the joints
        r.pop("bbox", None)
    assert evaluate_coco(gt, results, verbose=False)["AP"] == pytest.approx(1.0)
    results[2]["bbox"] = [1, 2]  # a box, where given, is still checked
    with pytest.raises(UserError, match=r"entry 2 has a missing or invalid 'bbox'"):
        evaluate_coco(gt, results, verbose=False)
