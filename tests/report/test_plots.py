"""centernet.report.plots: the evaluation's and the benchmark's pictures exist, have
the size they are drawn at, and come out of the scripts that promise them."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import CenterNet_benchmark
from centernet.io.coco import COCO_CATEGORIES, evaluate_coco, write_results
from centernet.report.plots import BANNER_COLOUR, DPI, plot_benchmark, write_eval_plots
from conftest import ROOT


def png_size(path):
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image.shape[1], image.shape[0]  # width, height


def metrics_for(num_classes, seed=0):
    """evaluate_coco on a small hand-made set with `num_classes` classes with
    ground truth and some imperfect detections."""
    rng = np.random.default_rng(seed)
    cats = [{"id": cid, "name": name} for cid, name, _ in COCO_CATEGORIES]
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": 200, "height": 200} for i in range(4)]
    anns, results = [], []
    for k, (cid, _, _) in enumerate(COCO_CATEGORIES[:num_classes]):
        img = k % 4 + 1
        box = [float(v) for v in rng.uniform(10, 90, 2)] + [40.0, 50.0]
        anns.append({"id": k + 1, "image_id": img, "category_id": cid, "bbox": box, "area": 2000.0, "iscrowd": 0})
        jitter = (k % 5) * 3.0
        results.append({"image_id": img, "category_id": cid, "bbox": [box[0] + jitter, box[1], 40.0, 50.0],
                        "score": float(rng.uniform(0.3, 1))})
        results.append({"image_id": img, "category_id": cid, "bbox": [150.0, 150.0, 30.0, 30.0],
                        "score": float(rng.uniform(0, 1))})
    gt = {"images": images, "annotations": anns, "categories": cats}
    return gt, results, evaluate_coco(gt, results, verbose=False)


@pytest.mark.parametrize("num_classes", [80, 3])
def test_eval_plots_exist_at_their_size(num_classes, tmp_path):
    _, _, metrics = metrics_for(num_classes)
    pr, per_class = write_eval_plots(metrics, tmp_path / "ev")
    assert pr == tmp_path / "ev" / "pr_curves.png" and per_class == tmp_path / "ev" / "per_class_ap.png"
    assert png_size(pr) == (round(7.0 * DPI), round(5.4 * DPI))
    width, height = png_size(per_class)
    assert width == 8 * DPI
    # a bar of 0.2 inch per class with ground truth, so 80 names stay legible
    assert height >= 0.2 * DPI * num_classes
    if num_classes == 80:
        assert height >= 1900
    assert not list((tmp_path / "ev").glob(".*tmp"))


def banner_pixels(path):
    """How many pixels of a picture have the random-weights banner's red."""
    image = cv2.imread(str(path)).astype(int)  # BGR
    r, g, b = (int(BANNER_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    return int((np.abs(image - (b, g, r)).max(-1) <= 10).sum())


def test_pictures_of_random_weights_say_so(tmp_path):
    _, _, metrics = metrics_for(5)
    plain = write_eval_plots({**metrics, "random_weights": False}, tmp_path / "plain")
    marked = write_eval_plots({**metrics, "random_weights": True}, tmp_path / "marked")
    for a, b in zip(plain, marked):
        assert a.name == b.name
        assert banner_pixels(a) == 0
        # a bar of at least 2 x 0.15 inch across the top of the picture
        assert banner_pixels(b) > 2 * (0.15 * DPI) ** 2 * 4
        image = cv2.imread(str(b)).astype(int)
        rows = np.flatnonzero((np.abs(image - image[:1, :1]).max(-1) > 0).any(1) &
                              ((np.abs(image - (0, 0, 0xdc)).max(-1) <= 10).sum(1) > 0))
        assert rows.max() < image.shape[0] * 0.25  # at the top
    assert banner_pixels(write_eval_plots(metrics, tmp_path / "old")[0]) == 0  # a metrics.json without the field


def test_pr_plot_with_no_ground_truth_still_draws(tmp_path):
    metrics = {"AP": -1, "AP50": -1, "AP75": -1, "per_class": {"cat": None}, "num_images": 1,
               "pr_curves": {"recall": [], "iou50": [], "iou75": [], "iou50_95": []}}
    for path in write_eval_plots(metrics, tmp_path):
        assert png_size(path)[0] > 0


def fake_benchmark():
    rows = []
    for batch, ort, eager in ((1, 2.1, 1.1), (4, 2.3, 0.9), (8, 2.25, None)):
        rows.append({"backend": "onnxruntime-cpu", "batch": batch, "fps": ort})
        if eager:
            rows.append({"backend": "pytorch-eager", "batch": batch, "fps": eager})
    return {"rows": rows, "sgemm_gflops": {"ceiling": 190.0}, "flops_per_image": 66.2e9,
            "input_size": [512, 512], "threads": 2, "machine": {"cpu": "test CPU"}}


def test_benchmark_plot(tmp_path):
    path = plot_benchmark(fake_benchmark(), tmp_path / "b" / "benchmark.png")
    assert png_size(path) == (round(7.5 * DPI), round(5.0 * DPI))


def test_benchmark_plot_option():
    args = CenterNet_benchmark.parse_args(["--workdir", "w", "--plot"])
    assert args.plot == "w/benchmark.png"
    assert CenterNet_benchmark.parse_args(["--plot", "x.png"]).plot == "x.png"
    assert CenterNet_benchmark.parse_args([]).plot is None


def test_redraw_from_saved_json(tmp_path):
    _, _, metrics = metrics_for(5)
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "benchmark.json").write_text(json.dumps(fake_benchmark()))
    for name, pictures in (("metrics.json", ["pr_curves.png", "per_class_ap.png"]),
                           ("bench/benchmark.json", ["bench/benchmark.png"])):
        r = subprocess.run([sys.executable, "-m", "centernet.cli.plots", str(tmp_path / name)], cwd=ROOT,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        for p in pictures:
            assert (tmp_path / p).is_file() and str(tmp_path / p) in r.stdout


def test_s2_writes_the_plots_and_says_where(synthetic_coco, tmp_path, run_script):
    shutil.copytree(synthetic_coco["root"], tmp_path / "data")
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5}
               for a in synthetic_coco["dataset"]["annotations"]]
    write_results(tmp_path / "save" / "results.json", results)
    r = run_script("CenterNet_postprocess_s2.py", "--dataset=./data", "--resultfolder=ev", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("pr_curves.png", "per_class_ap.png"):
        assert (tmp_path / "ev" / name).is_file() and f"ev/{name}" in r.stdout
    assert png_size(tmp_path / "ev" / "pr_curves.png") == (round(7.0 * DPI), round(5.4 * DPI))


def test_scripts_that_do_not_plot_do_not_import_matplotlib():
    code = ("import sys, CenterNet_postprocess_s2, CenterNet_eval, CenterNet_demo, CenterNet_benchmark; "
            "print('matplotlib' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def keypoint_metrics():
    """evaluate_coco of keypoint results: 4 people, one found exactly, one a
    little off, one far off, one missed, and a false positive."""
    from centernet.io.synthetic import person_keypoint_category
    rng = np.random.default_rng(2)
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": 200, "height": 200} for i in range(2)]
    anns, results = [], []
    for k, shift in enumerate((0.0, 2.0, 25.0, None)):
        x, y = 20.0 + 90 * (k % 2), 30.0
        kps = np.column_stack([x + rng.uniform(0, 60, 17), y + rng.uniform(0, 140, 17), np.full(17, 2.0)])
        anns.append({"id": k + 1, "image_id": k // 2 + 1, "category_id": 1, "bbox": [x, y, 60.0, 140.0],
                     "area": 8400.0, "iscrowd": 0, "keypoints": kps.ravel().tolist(), "num_keypoints": 17})
        if shift is not None:
            found = kps.copy()
            found[:, :2] += shift
            found[:, 2] = 1
            results.append({"image_id": k // 2 + 1, "category_id": 1, "bbox": [x, y, 60.0, 140.0],
                            "score": 0.9 - 0.1 * k, "keypoints": found.ravel().tolist()})
    results.append({"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 0.3,
                    "keypoints": [5.0, 5.0, 1] * 17})
    gt = {"images": images, "annotations": anns, "categories": [person_keypoint_category()]}
    return evaluate_coco(gt, results, verbose=False)


def figure_texts(monkeypatch):
    """Collect every text of the figures plots draws (titles, labels, legends)."""
    from centernet.report import plots
    texts = {}
    real_save = plots._save

    def save(fig, path):
        found = []
        for artist in fig.findobj():
            if hasattr(artist, "get_text") and artist.get_text():
                found.append(artist.get_text())
        texts[Path(path).name] = "\n".join(found)
        return real_save(fig, path)
    monkeypatch.setattr(plots, "_save", save)
    return texts


def test_keypoint_plots_say_keypoint_ap_and_oks(tmp_path, monkeypatch):
    metrics = keypoint_metrics()
    assert metrics["iou_type"] == "keypoints" and 0 < metrics["AP"] < 1
    texts = figure_texts(monkeypatch)
    pr, per_class = write_eval_plots(metrics, tmp_path / "kp")
    assert png_size(pr) == (round(7.0 * DPI), round(5.4 * DPI)) and png_size(per_class)[0] == 8 * DPI
    assert f"OKS 0.50: keypoint AP50 {100 * metrics['AP50']:.1f}" in texts["pr_curves.png"]
    assert f"OKS 0.50:0.95 (mean): keypoint AP {100 * metrics['AP']:.1f}" in texts["pr_curves.png"]
    assert "up to 20 detections per image" in texts["pr_curves.png"] and "IoU" not in texts["pr_curves.png"]
    assert "keypoint AP (OKS 0.50:0.95), %" in texts["per_class_ap.png"]
    assert "keypoint AP per class, 1 classes" in texts["per_class_ap.png"]
    assert "person" in texts["per_class_ap.png"] and "IoU" not in texts["per_class_ap.png"]
    # and boxes still say IoU
    write_eval_plots(metrics_for(3)[2], tmp_path / "box")
    assert "IoU 0.50: AP50" in texts["pr_curves.png"] and "up to 100 detections" in texts["pr_curves.png"]
    assert "AP (IoU 0.50:0.95), %" in texts["per_class_ap.png"] and "keypoint" not in texts["per_class_ap.png"]


def test_write_evaluation_of_keypoint_metrics(tmp_path, caplog):
    import logging
    from centernet.report.evaluation import write_evaluation
    metrics = keypoint_metrics()
    with caplog.at_level(logging.INFO, logger="centernet.report.evaluation"):
        path = write_evaluation(metrics, tmp_path / "ev", mode="fixed 512")
    saved = json.loads(path.read_text())
    assert saved["iou_type"] == "keypoints" and saved["AP"] == pytest.approx(metrics["AP"])
    assert saved["mode"] == "fixed 512" and saved["random_weights"] is False
    assert len(saved["pr_curves"]["iou50_95"]) == 101
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "keypoint AP per class (OKS .50:.95), the 1 classes with ground truth:" in log
    assert (f"keypoint AP {100 * metrics['AP']:.1f} (OKS .50:.95), keypoint AP50 {100 * metrics['AP50']:.1f} "
            f"(OKS .50); fixed 512 -> {path}") in log
    assert (tmp_path / "ev" / "pr_curves.png").is_file() and (tmp_path / "ev" / "per_class_ap.png").is_file()
    assert "keypoint AP (OKS .50:.95)" in (tmp_path / "ev" / "per_class_ap.txt").read_text()
