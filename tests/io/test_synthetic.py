"""make_synthetic_coco: layout, determinism, and boxes that match the pixels."""
import json

import cv2
import numpy as np
import pytest

from centernet.io.coco import COCO_CATEGORIES, load_annotations
from centernet.errors import UserError
from centernet.io.synthetic import make_synthetic_coco


def test_layout_and_contents(synthetic_coco):
    root = synthetic_coco["root"]
    data = load_annotations(root / "coco" / "annotations" / "instances_val2017.json", require_annotations=True)
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(c[0], c[1]) for c in COCO_CATEGORIES]
    assert len(data["images"]) == 6 and synthetic_coco["num_annotations"] == len(data["annotations"]) >= 6
    sizes = {(img["width"], img["height"]) for img in data["images"]}
    assert len(sizes) == 6 and any(w != h for w, h in sizes)
    for img in data["images"]:
        assert img["file_name"] == f"{img['id']:012d}.jpg"
        pixels = cv2.imread(str(root / "coco" / "val2017" / img["file_name"]))
        assert pixels.shape == (img["height"], img["width"], 3)
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        assert anns
        for a in anns:
            x, y, w, h = map(int, a["bbox"])
            assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"] and w >= 4 and h >= 4
            assert a["area"] == w * h
            # a filled rectangle: flat inside (JPEG noise aside)
            inner = pixels[y + 2:y + h - 2, x + 2:x + w - 2].reshape(-1, 3).astype(int)
            if len(inner):
                assert np.abs(inner - np.median(inner, axis=0)).mean() < 6


def test_deterministic(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", num_images=3, seed=7, image_sizes=[(64, 48), (40, 72)])
    b = make_synthetic_coco(tmp_path / "b", num_images=3, seed=7, image_sizes=[(64, 48), (40, 72)])
    c = make_synthetic_coco(tmp_path / "c", num_images=3, seed=8, image_sizes=[(64, 48), (40, 72)])
    assert a["annotation_file"].read_bytes() == b["annotation_file"].read_bytes()
    assert a["annotation_file"].read_bytes() != c["annotation_file"].read_bytes()
    names = sorted(p.name for p in a["images_dir"].iterdir())
    assert names == sorted(p.name for p in b["images_dir"].iterdir()) and len(names) == 3
    for name in names:
        assert (a["images_dir"] / name).read_bytes() == (b["images_dir"] / name).read_bytes()
    assert json.loads(a["annotation_file"].read_text())["images"][1]["width"] == 40


def test_regenerating_replaces_an_earlier_set_but_never_real_data(tmp_path):
    make_synthetic_coco(tmp_path / "d", num_images=4, image_sizes=[(32, 32)])
    info = make_synthetic_coco(tmp_path / "d", num_images=2, image_sizes=[(32, 32)])
    assert len(list(info["images_dir"].iterdir())) == 2
    info["annotation_file"].write_text(json.dumps({"info": {"description": "COCO 2017 Dataset"}, "images": []}))
    with pytest.raises(UserError, match="not synthetic data; refusing to overwrite"):
        make_synthetic_coco(tmp_path / "d", num_images=2)
