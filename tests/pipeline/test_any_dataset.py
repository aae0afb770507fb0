"""Evaluation on any COCO-format dataset and the demo on any model: a
3-class model on an annotation file of 3 categories with non-contiguous ids
(class j is the j-th smallest id), its category names in the per-class
output, AP50 beside AP, a class-count mismatch as one line before any
inference (streaming, Ray, the staged decoding), and the demo and annotation
mode naming classes with the names the model records."""
import json
from pathlib import Path

import numpy as np
import pytest

import CenterNet_eval
from conftest import CLASS_IDS, MODEL_NAMES, SMALL_MODEL_INPUT as SMALL, assert_one_line_error


def eval_main(*args):
    return CenterNet_eval.main([str(a) for a in args])


def final_line(out):
    return [ln for ln in out.splitlines() if ln.startswith("AP ")][-1]


def test_eval_on_three_non_contiguous_categories(three_class_models, three_category_coco, tmp_path, capsys):
    rc = eval_main("--model", three_class_models["plain"], "--annotations", three_category_coco["annotation_file"],
                   "--images", three_category_coco["images_dir"], "--output", tmp_path / "results.json",
                   "--resultfolder", tmp_path / "ev", "--threads", 2, "--workers", 1, "--no-progress")
    out = capsys.readouterr().out
    assert rc == 0
    results = json.loads((tmp_path / "results.json").read_text())
    # 100 detections of random weights per image reach every class: each maps to the file's ids
    assert {r["category_id"] for r in results} == set(CLASS_IDS)
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"kayak", "heron", "buoy"}
    table = (tmp_path / "ev" / "per_class_ap.txt").read_text()
    assert all(name in table for name in ("kayak", "heron", "buoy"))
    assert "person" not in table and "person" not in out
    # AP50 (IoU 0.5) beside AP in the final line
    assert final_line(out).startswith(f"AP {100 * metrics['AP']:.1f} (IoU .50:.95), "
                                      f"AP50 {100 * metrics['AP50']:.1f} (IoU .50)")


def test_model_and_file_class_counts_differ_is_one_line_before_inference(three_class_models, synthetic_coco,
                                                                         tmp_path, run_script):
    """3-class model, COCO's 80-category file: named with both counts, and
    nothing run or written (streaming and Ray alike)."""
    ann = synthetic_coco["annotation_file"]
    for extra in ([], ["--ray"]):
        out = tmp_path / f"results{len(extra)}.json"
        r = run_script("CenterNet_eval.py", "--model", three_class_models["plain"], "--annotations", ann,
                       "--images", synthetic_coco["images_dir"], "--output", out, "--resultfolder", tmp_path / "ev",
                       "--no-progress", *extra, cwd=tmp_path)
        assert_one_line_error(r, str(three_class_models["plain"]), "3 classes", str(ann), "80 categories")
        assert not out.exists() and not out.with_name(out.name + ".parts").exists()
        assert "wrote detections" not in r.stdout


def write_bins(folder, dataset, channels, seed=0):
    """Output bins of a `channels`-class model for every image at 128x128
    (hm logits, wh, reg), as ais_bench writes them."""
    from centernet.io.binio import output_bin_path, write_bin
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    h, w = SMALL[0] // 4, SMALL[1] // 4
    for img in dataset["images"]:
        stem = Path(img["file_name"]).stem
        write_bin(output_bin_path(folder, stem, 0), rng.uniform(-9, 1, (channels, h, w)))
        write_bin(output_bin_path(folder, stem, 1), rng.uniform(2, 20, (2, h, w)))
        write_bin(output_bin_path(folder, stem, 2), rng.uniform(0, 1, (2, h, w)))
    return folder


def test_staged_decode_and_evaluation_on_three_categories(three_category_coco, tmp_path, run_script):
    bins = write_bins(tmp_path / "dump", three_category_coco["dataset"], 3)
    ann = three_category_coco["annotation_file"]
    r = run_script("CenterNet_postprocess_s1.py", "--bin_data_path", bins, "--annotations", ann,
                   "--input-size", *SMALL, "--output", tmp_path / "results.json", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert {e["category_id"] for e in results} == set(CLASS_IDS)
    r = run_script("CenterNet_postprocess_s2.py", "--annotations", ann, "--results", tmp_path / "results.json",
                   "--resultfolder", tmp_path / "ev", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"kayak", "heron", "buoy"}
    assert final_line(r.stdout).startswith(f"AP {100 * metrics['AP']:.1f} (IoU .50:.95), "
                                           f"AP50 {100 * metrics['AP50']:.1f} (IoU .50) -> ")


def test_staged_decode_of_other_class_count_is_one_line(synthetic_coco, tmp_path, run_script):
    """Bins of a 3-class model against an 80-category file: the count the
    bins show, named before any decoding."""
    bins = write_bins(tmp_path / "dump", synthetic_coco["dataset"], 3)
    (tmp_path / "dump_summary.json").write_text(json.dumps({"model": "three.onnx"}))  # CenterNet_infer.py's
    ann = synthetic_coco["annotation_file"]
    r = run_script("CenterNet_postprocess_s1.py", "--bin_data_path", bins, "--annotations", ann,
                   "--input-size", *SMALL, "--output", tmp_path / "results.json", "--no-progress", cwd=tmp_path)
    assert_one_line_error(r, "three.onnx", "3 classes", str(ann), "80 categories")
    assert not (tmp_path / "results.json").exists()


def classes_in(doc):
    return {(d["class"], d["category_id"]) for e in doc["images"] for d in e["detections"]}


def test_demo_and_annotation_name_classes_as_the_model_does(three_class_models, three_category_coco, tmp_path,
                                                            capsys):
    from centernet.pipeline.demo import run_demo
    images = str(three_category_coco["images_dir"])
    by_model = set(zip(MODEL_NAMES, [1, 2, 3]))
    demo = run_demo([images], three_class_models["named"], output=tmp_path / "demo", thresh=0.0, threads=2,
                    progress=False)
    assert classes_in(json.loads(demo["json"].read_text())) == by_model
    # --names still overrides the model's own
    names = tmp_path / "names.txt"
    names.write_text("x\ny\nz\n")
    demo = run_demo([images], three_class_models["named"], output=tmp_path / "demo2", thresh=0.0, threads=2,
                    progress=False, names_file=str(names))
    assert classes_in(json.loads(demo["json"].read_text())) == set(zip("xyz", [1, 2, 3]))
    # annotation mode (--images, no annotation file): the same names
    out = tmp_path / "ann.json"
    rc = eval_main("--model", three_class_models["named"], "--dataset", tmp_path / "none", "--images", images,
                   "--vis-thresh", 0, "--output", out, "--threads", 2, "--workers", 1, "--no-progress")
    assert rc == 0
    assert classes_in(json.loads(out.read_text())) == by_model
    rc = eval_main("--model", three_class_models["named"], "--dataset", tmp_path / "none", "--images", images,
                   "--vis-thresh", 0, "--output", tmp_path / "ann2.json", "--names", names, "--threads", 2,
                   "--workers", 1, "--no-progress")
    assert rc == 0
    assert classes_in(json.loads((tmp_path / "ann2.json").read_text())) == set(zip("xyz", [1, 2, 3]))
    capsys.readouterr()
    # neither names nor --names, and not 80 classes: one line
    with pytest.raises(SystemExit) as e:
        eval_main("--model", three_class_models["plain"], "--dataset", tmp_path / "none", "--images", images,
                  "--output", tmp_path / "ann3.json", "--threads", 2, "--no-progress")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 classes, not COCO's 80" in err[0] and "--names FILE" in err[0]
    assert not (tmp_path / "ann3.json").exists()
