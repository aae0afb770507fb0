"""centernet.io.shapes: the generated shapes dataset the stand-in detector is trained and scored on."""
import json

import cv2
import numpy as np
import pytest

from centernet.errors import UserError
from centernet.io.shapes import SHAPE_CLASSES, SHAPE_IMAGE_SIZES, make_shapes_coco, shapes_image


def test_an_image_is_a_function_of_seed_split_and_index():
    a, objects_a, jpeg_a = shapes_image(0, "val", 5)
    b, objects_b, jpeg_b = shapes_image(0, "val", 5)
    assert np.array_equal(a, b) and objects_a == objects_b and bytes(jpeg_a) == bytes(jpeg_b)
    assert bytes(shapes_image(0, "train", 5)[2]) != bytes(jpeg_a)  # the splits differ
    assert bytes(shapes_image(1, "val", 5)[2]) != bytes(jpeg_a)    # and the seeds


def test_the_image_is_what_its_jpeg_decodes_to():
    img, _, jpeg = shapes_image(0, "train", 0)
    assert np.array_equal(img, cv2.imdecode(np.frombuffer(bytes(jpeg), np.uint8), cv2.IMREAD_COLOR))


def test_boxes_lie_inside_the_image_and_cover_their_shapes():
    counts = np.zeros(len(SHAPE_CLASSES), int)
    for index in range(40):
        img, objects, _ = shapes_image(0, "train", index)
        h, w = img.shape[:2]
        assert (w, h) in SHAPE_IMAGE_SIZES
        for x, y, bw, bh, cls in objects:
            assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h and min(bw, bh) >= 6
            counts[cls] += 1
    assert (counts > 10).all(), counts  # every class is common


def test_the_coco_split_is_written_once_and_reused(tmp_path):
    images_dir, ann_file = make_shapes_coco(tmp_path, "val", num_images=3, seed=0)
    data = json.loads(ann_file.read_text())
    assert [c["name"] for c in data["categories"]] == list(SHAPE_CLASSES)
    assert sorted(p.name for p in images_dir.iterdir()) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    for image in data["images"]:
        objects = shapes_image(0, "val", image["id"] - 1)[1]
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        assert [a["bbox"] for a in anns] == [[float(v) for v in o[:4]] for o in objects]
        assert [a["category_id"] for a in anns] == [o[4] + 1 for o in objects]
    stamp = ann_file.stat().st_mtime_ns
    make_shapes_coco(tmp_path, "val", num_images=3, seed=0)
    assert ann_file.stat().st_mtime_ns == stamp
    make_shapes_coco(tmp_path, "val", num_images=2, seed=0)  # fewer: the rest go
    assert sorted(p.name for p in images_dir.iterdir()) == ["000000.jpg", "000001.jpg"]


def test_refuses_to_overwrite_other_annotations(tmp_path):
    _, ann_file = make_shapes_coco(tmp_path, "val", num_images=1, seed=0)
    ann_file.write_text(json.dumps({"info": {"description": "COCO 2017"}, "images": []}))
    with pytest.raises(UserError, match="not generated shapes data"):
        make_shapes_coco(tmp_path, "val", num_images=1, seed=1)
