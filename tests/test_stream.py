"""The streaming evaluation gives the staged pipeline's detections exactly."""
import json
import shutil
import time

from centernet.coco import class_category_ids, load_annotations
from centernet.decode import decode_bins_to_coco, images_from_meta
from centernet.infer import run_folder
from centernet.preprocess import load_meta, preprocess_folder
from centernet.stream import stream_detections
from conftest import assert_one_line_error, ctrl_c, start_script, wait_until_loaded


def test_stream_equals_staged(synthetic_coco, ctdet_onnx, tmp_path):
    ann = synthetic_coco["annotation_file"]
    data = load_annotations(ann)
    cats = class_category_ids(data)
    # Staged: bins on disk, ais_bench layout, s1's decoder.
    prep = tmp_path / "prep"
    preprocess_folder(synthetic_coco["images_dir"], prep, workers=1, progress=False)
    run_folder(ctdet_onnx, prep, tmp_path / "result", "dump", batchsize=2, threads=2, progress=False)
    images = images_from_meta(load_meta(prep / "meta.json"), data)
    staged = decode_bins_to_coco(tmp_path / "result" / "dump", images, cats, progress=False)
    # Streaming: same images, same batch size, nothing on disk.
    streamed, ids, errors, stats = stream_detections(ctdet_onnx, synthetic_coco["images_dir"], ann,
                                                     batchsize=2, threads=2, progress=False)
    assert not errors and sorted(ids) == sorted(im["id"] for im in data["images"])
    assert len(streamed) == 100 * len(ids)
    key = lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"])  # noqa: E731
    assert sorted(streamed, key=key) == sorted(staged, key=key)
    assert stats["end_to_end_fps"] > 0 and stats["fps"] > 0


def test_eval_script_limit_and_corrupt_image(synthetic_coco, ctdet_onnx, tmp_path, run_script):
    data_root = tmp_path / "data"
    shutil.copytree(synthetic_coco["root"], data_root)
    first = sorted((data_root / "coco" / "val2017").iterdir())[0]
    first.write_bytes(b"not a jpeg")
    r = run_script("CenterNet_eval.py", "--model", ctdet_onnx, "--dataset", data_root, "--limit", 2,
                   "--threads", 2, "--output", tmp_path / "res.json", "--resultfolder", tmp_path / "ev",
                   "--no-progress", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert f"{first}: cannot read or decode the image" in r.stderr and "Traceback" not in r.stderr
    results = json.loads((tmp_path / "res.json").read_text())
    assert len(results) == 100 and len({d["image_id"] for d in results}) == 1
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["num_images"] == 2  # the unreadable one counts, as missed
    assert (tmp_path / "ev" / "pr_curves.png").is_file() and (tmp_path / "ev" / "per_class_ap.png").is_file()


def test_eval_script_missing_annotations(ctdet_onnx, tmp_path, run_script):
    r = run_script("CenterNet_eval.py", "--model", ctdet_onnx, "--dataset", tmp_path / "nowhere", cwd=tmp_path)
    assert_one_line_error(r, "instances_val2017.json")


def test_eval_ctrl_c_ends_quietly(synthetic_coco, ctdet_onnx, tmp_path):
    """Ctrl-C to the whole process group (the worker pool included) while the
    script loads, while its workers start, and while it infers (pressed twice):
    exit 130 and one line within seconds, no traceback, no results file (or,
    on a machine fast enough to have finished, exit 0 and no message)."""
    args = ["--model", ctdet_onnx, "--dataset", synthetic_coco["root"], "--workers", 2, "--threads", 2,
            "--output", tmp_path / "res.json", "--resultfolder", tmp_path / "ev", "--no-progress"]
    outcomes = []
    for delay, twice in ((0.0, False), (0.8, True), (2.0, False)):
        proc = start_script("CenterNet_eval.py", *args, cwd=tmp_path)
        wait_until_loaded(proc, "/cv2/")  # main() runs (it imports OpenCV)
        time.sleep(delay)
        ctrl_c(proc)
        if twice:
            time.sleep(0.1)
            ctrl_c(proc)
        out, err = proc.communicate(timeout=30)
        outcomes.append(proc.returncode)
        if proc.returncode == 0 and delay > 0:
            assert not err, err
            continue
        assert proc.returncode == 130, (delay, proc.returncode, err)
        assert err.strip().splitlines() == ["interrupted: nothing written (the streaming evaluation keeps no "
                                            "partial results); run the same command again to start over"], err
        assert not (tmp_path / "res.json").exists()
    assert outcomes[0] == 130
