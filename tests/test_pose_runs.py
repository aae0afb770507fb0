"""A multi_pose checkpoint in upstream's layout, end to end in every runner:
export, the staged recipe (preprocess, infer, s1, s2), the streaming
evaluation with and without Ray, the demo. The heads say it is a pose
model; no stage takes a flag for that."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from conftest import ROOT, _run_script, calibrated_pose_network
from centernet.io.synthetic import write_perfect_pose_bins
from centernet.model.checkpoint import save_upstream_checkpoint


@pytest.fixture(scope="module")
def pose_checkpoint(tmp_path_factory):
    """A calibrated multi_pose ResNet-18 + DCN in upstream's layout, exported
    by the recipe's script with a dynamic size and the flip test in the graph."""
    folder = tmp_path_factory.mktemp("pose_ckpt")
    save_upstream_checkpoint(calibrated_pose_network("resdcn_18"), folder / "multi_pose_resdcn18.pth")
    r = _run_script("CenterNet_pth2onnx.py", folder / "multi_pose_resdcn18.pth", folder / "pose_flip.onnx",
                    "--dynamic-size", "--flip", cwd=folder)
    assert r.returncode == 0, r.stderr
    assert "ResNet-18 with DCN, human pose (17 keypoints), head width 64" in r.stdout + r.stderr
    return {"pth": folder / "multi_pose_resdcn18.pth", "flip_onnx": folder / "pose_flip.onnx", "folder": folder}


def _keypoint_results(path):
    results = json.loads(path.read_text())
    assert results and all(len(r["keypoints"]) == 51 and r["category_id"] == 1 for r in results)
    return results


def test_perfect_pose_bins_score_keypoint_ap_one_through_s1_and_s2(synthetic_person_coco, tmp_path, run_script):
    shutil.copytree(synthetic_person_coco["root"], tmp_path / "data")
    write_perfect_pose_bins(synthetic_person_coco["dataset"], tmp_path / "result" / "dumpout_bs1")
    # no --annotations: six bins per image say multi_pose, so the keypoint file is the default
    r = run_script("CenterNet_postprocess_s1.py", "--bin_data_path=./result/dumpout_bs1/", "--dataset=./data",
                   "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "people with keypoints" in r.stdout
    _keypoint_results(tmp_path / "save" / "results.json")
    r = run_script("CenterNet_postprocess_s2.py", "--dataset=./data", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "run_eval_result" / "metrics.json").read_text())
    assert metrics["iou_type"] == "keypoints" and metrics["AP"] == pytest.approx(1.0)


def test_staged_and_streaming_runs_give_the_same_people_keep_res_and_flip(pose_checkpoint, synthetic_person_coco,
                                                                         tmp_path, run_script):
    data, model = synthetic_person_coco, pose_checkpoint["flip_onnx"]
    prep = tmp_path / "prep"
    r = run_script("CenterNet_preprocess.py", data["images_dir"], prep, "--model", model, "--keep-res", "--flip",
                   "--workers", 1, "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_script("CenterNet_infer.py", "--model", model, "--input", prep, "--output", tmp_path / "out",
                   "--output_dirname", "dump", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    stems = {p.stem.rsplit("_", 1)[0] for p in (tmp_path / "out" / "dump").glob("*.bin")}
    assert len(list((tmp_path / "out" / "dump").glob("*.bin"))) == 6 * len(stems) == 6 * 6
    r = run_script("CenterNet_postprocess_s1.py", "--bin_data_path", tmp_path / "out" / "dump", "--annotations",
                   data["annotation_file"], "--meta", prep / "meta.json", "--output", tmp_path / "s1.json",
                   "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_script("CenterNet_postprocess_s2.py", "--annotations", data["annotation_file"], "--results",
                   tmp_path / "s1.json", "--resultfolder", tmp_path / "ev_staged", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "keypoint AP" in r.stdout
    # streaming: the same file, its flip test in the graph; default annotations for a pose model
    shutil.copytree(data["root"], tmp_path / "data")
    r = run_script("CenterNet_eval.py", "--model", model, "--dataset", tmp_path / "data", "--keep-res", "--flip",
                   "--output", tmp_path / "stream.json", "--resultfolder", tmp_path / "ev", "--no-progress",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    staged, streamed = _keypoint_results(tmp_path / "s1.json"), _keypoint_results(tmp_path / "stream.json")
    assert len(staged) == len(streamed) == 100 * 6
    for a, b in zip(staged, streamed):
        assert a["image_id"] == b["image_id"] and a["score"] == pytest.approx(b["score"], abs=1e-6)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)
        assert a["keypoints"] == pytest.approx(b["keypoints"], abs=1e-3)
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    staged_metrics = json.loads((tmp_path / "ev_staged" / "metrics.json").read_text())
    assert metrics["iou_type"] == "keypoints" and metrics["AP"] == pytest.approx(staged_metrics["AP"], abs=1e-9)


def test_the_pytorch_backend_and_ray_give_the_streaming_runs_people(pose_checkpoint, synthetic_person_coco,
                                                                    tmp_path, run_script):
    data = synthetic_person_coco
    common = ["--annotations", data["annotation_file"], "--images", data["images_dir"], "--keep-res",
              "--no-progress"]
    runs = {"onnx": ["--model", pose_checkpoint["pth"]],  # the cached ONNX export of the checkpoint
            "torch": ["--model", pose_checkpoint["pth"], "--backend", "torch"],
            "ray": ["--model", pose_checkpoint["pth"], "--ray", "local", "--actors", 1]}
    found = {}
    for name, args in runs.items():
        r = run_script("CenterNet_eval.py", *args, *common, "--output", tmp_path / f"{name}.json",
                       "--resultfolder", tmp_path / f"ev_{name}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        found[name] = _keypoint_results(tmp_path / f"{name}.json")
    # one predictor, one decoding (ONNX Runtime's rounding varies with its batch and threads)
    assert len(found["ray"]) == len(found["onnx"]) == len(found["torch"]) == 100 * 6
    for a, b in zip(found["onnx"], found["ray"]):
        assert a["image_id"] == b["image_id"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert a["keypoints"] == pytest.approx(b["keypoints"], abs=1e-3)
    for a, b in zip(found["onnx"], found["torch"]):
        assert a["image_id"] == b["image_id"] and a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_the_demo_draws_skeletons(pose_checkpoint, synthetic_person_coco, tmp_path, run_script):
    r = run_script("CenterNet_demo.py", "--model", pose_checkpoint["flip_onnx"], synthetic_person_coco["images_dir"],
                   "--limit", 2, "--keep-res", "--vis-thresh", 0.05, "--output", tmp_path / "out", "--no-progress",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "out" / "detections.json").read_text())
    people = [d for entry in doc["images"] for d in entry["detections"]]
    assert people and all(len(d["keypoints"]) == 17 and d["class"] == "person" for d in people)
    assert len(list((tmp_path / "out").glob("*.jpg"))) == 2
    assert np.isfinite(np.array([d["keypoints"] for d in people])).all()


def test_a_pose_model_on_box_annotations_is_refused_before_inference(pose_checkpoint, synthetic_coco, tmp_path,
                                                                     run_script):
    r = run_script("CenterNet_eval.py", "--model", pose_checkpoint["flip_onnx"], "--annotations",
                   synthetic_coco["annotation_file"], "--images", synthetic_coco["images_dir"], "--keep-res",
                   "--output", tmp_path / "r.json", "--no-progress", cwd=tmp_path)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "a multi_pose (human pose) model, but" in r.stderr and "no keypoint annotations" in r.stderr
    assert not (tmp_path / "r.json").exists()


def test_run_all_scores_a_pose_checkpoint_on_the_keypoint_annotations(pose_checkpoint, synthetic_person_coco,
                                                                      tmp_path):
    shutil.copytree(synthetic_person_coco["root"], tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(["bash", str(ROOT / "run_all.sh"), "--weights", str(pose_checkpoint["pth"]), "--data",
                        str(tmp_path / "data"), "--workdir", str(tmp_path / "work"), "--keep-res", "--flip",
                        "--limit", "2", "--threads", "2"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "DEMO" not in r.stdout  # the keypoint annotation file is the one it looks for
    assert "keypoint AP" in r.stdout
    metrics = json.loads((tmp_path / "work" / "run_eval_result" / "metrics.json").read_text())
    assert metrics["iou_type"] == "keypoints" and metrics["num_images"] == 2
    _keypoint_results(tmp_path / "work" / "save" / "results.json")
    doc = json.loads((tmp_path / "work" / "demo_out" / "detections.json").read_text())
    assert all("keypoints" in d for entry in doc["images"] for d in entry["detections"])
