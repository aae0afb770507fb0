"""A model trained on one's own data, end to end: a 3-class ResNet-18 with DCN
checkpoint in upstream's layout, ImageNet's mean/std, 384x384, categories
with non-contiguous ids. Its settings are given once, at export; every later
stage (streaming evaluation, the staged recipe) takes them from the file."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import CLASS_IDS, _run_script, assert_one_line_error, calibrated_network
from centernet.core.decode import decode_ctdet, map_boxes_to_image
from centernet.core.transforms import get_affine_transform
from centernet.model.checkpoint import save_upstream_checkpoint

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = 384
NAMES = ("heron", "buoy", "kayak")  # in class order: ids 3, 7, 12


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("custom")
    model = calibrated_network("resdcn_18", num_classes=3)
    save_upstream_checkpoint(model, folder / "model_last.pth")
    (folder / "classes.txt").write_text("\n".join(NAMES) + "\n")
    r = _run_script("CenterNet_pth2onnx.py", folder / "model_last.pth", folder / "custom.onnx",
                   "--mean", *IMAGENET_MEAN, "--std", *IMAGENET_STD, "--input-size", SIZE, SIZE,
                   "--class-names", folder / "classes.txt", cwd=folder)
    assert r.returncode == 0, r.stderr
    assert "model_last.pth: ResNet-18 with DCN, 3 classes, head width 64" in r.stdout
    return {"model": model, "onnx": folder / "custom.onnx", "folder": folder}


def hand_detections(model, image):
    """The top detection of `image` written out from upstream's rules:
    the fixed-resolution warp to 384x384, (x / 255 - mean) / std per B, G, R
    channel with the float32 numbers as listed, the network in float64."""
    h, w = image.shape[:2]
    center, scale = np.array([w / 2, h / 2], np.float32), float(max(h, w))
    trans = get_affine_transform(center, scale, (SIZE, SIZE))
    warped = cv2.warpAffine(image, trans, (SIZE, SIZE), flags=cv2.INTER_LINEAR).astype(np.float64)
    mean = np.array(IMAGENET_MEAN, np.float32).astype(np.float64)
    std = np.array(IMAGENET_STD, np.float32).astype(np.float64)
    x = ((warped / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    with torch.no_grad():
        hm, wh, reg = (t.numpy() for t in model.double().eval()(torch.from_numpy(x)))
    model.float()
    scores, classes, boxes = decode_ctdet(hm, wh, reg, K=100)
    return scores[0], classes[0], map_boxes_to_image(boxes[0], center, scale, (SIZE // 4, SIZE // 4))


def test_custom_checkpoint_evaluated_with_no_flags_but_at_export(custom_model, three_category_coco, tmp_path,
                                                                 run_script):
    data = three_category_coco
    r = run_script("CenterNet_eval.py", "--model", custom_model["onnx"], "--annotations", data["annotation_file"],
                   "--images", data["images_dir"], "--output", tmp_path / "results.json",
                   "--resultfolder", tmp_path / "ev", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mode: fixed 384" in r.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert {d["category_id"] for d in results} <= set(CLASS_IDS)
    # The first image's best detection is what upstream's rules give with the
    # model's own mean/std and size (float32 ONNX Runtime vs float64 PyTorch).
    first = sorted(data["dataset"]["images"], key=lambda im: Path(im["file_name"]).stem)[0]
    image = cv2.imread(str(Path(data["images_dir"]) / first["file_name"]))
    scores, classes, boxes = hand_detections(custom_model["model"], image)
    best = max((d for d in results if d["image_id"] == first["id"]), key=lambda d: d["score"])
    assert best["category_id"] == CLASS_IDS[classes[0]]
    assert best["score"] == pytest.approx(scores[0], abs=1e-4)
    x1, y1, x2, y2 = boxes[0]
    assert best["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.05)
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"kayak", "heron", "buoy"}  # the annotation file's names


def test_the_staged_recipe_takes_the_settings_from_the_model(custom_model, three_category_coco, tmp_path,
                                                            run_script):
    data, onnx_path = three_category_coco, custom_model["onnx"]
    prep = tmp_path / "prep"
    r = run_script("CenterNet_preprocess.py", data["images_dir"], prep, "--model", onnx_path, "--workers", 1,
                   "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = json.loads((prep / "meta.json").read_text())
    assert meta["mean"] == list(IMAGENET_MEAN) and meta["std"] == list(IMAGENET_STD)
    assert {tuple(e["input_size"]) for e in meta["images"].values()} == {(SIZE, SIZE)}
    r = run_script("CenterNet_infer.py", "--model", onnx_path, "--input", prep, "--output", tmp_path / "out",
                   "--output_dirname", "dump", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_script("CenterNet_postprocess_s1.py", "--bin_data_path", tmp_path / "out" / "dump", "--annotations",
                   data["annotation_file"], "--meta", prep / "meta.json", "--output", tmp_path / "s1.json",
                   "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_script("CenterNet_eval.py", "--model", onnx_path, "--annotations", data["annotation_file"],
                   "--images", data["images_dir"], "--output", tmp_path / "stream.json",
                   "--resultfolder", tmp_path / "ev", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    staged = json.loads((tmp_path / "s1.json").read_text())
    streamed = json.loads((tmp_path / "stream.json").read_text())
    assert len(staged) == len(streamed) > 0
    for a, b in zip(staged, streamed):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)


def test_bins_of_other_settings_are_refused_before_inference(custom_model, three_category_coco, tmp_path,
                                                             run_script):
    prep = tmp_path / "prep_coco"
    r = run_script("CenterNet_preprocess.py", three_category_coco["images_dir"], prep, "--input-size", SIZE, SIZE,
                   "--workers", 1, "--no-progress", cwd=tmp_path)  # COCO's mean/std: not this model's
    assert r.returncode == 0, r.stderr
    r = run_script("CenterNet_infer.py", "--model", custom_model["onnx"], "--input", prep, "--output",
                   tmp_path / "out", "--output_dirname", "dump", cwd=tmp_path)
    assert_one_line_error(r, str(prep / "meta.json"), "other settings", "mean", f"--model {custom_model['onnx']}")
    assert not (tmp_path / "out" / "dump").exists() or not any((tmp_path / "out" / "dump").iterdir())
