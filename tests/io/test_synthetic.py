"""make_synthetic_coco: layout, determinism, and boxes that match the pixels;
make_synthetic_person_coco and the perfect multi_pose outputs on it."""
import json

import cv2
import numpy as np
import pytest

from centernet.constants import KEYPOINT_NAMES, NUM_JOINTS, POSE_HEADS, SKELETON
from centernet.core.decode import map_boxes_to_image
from centernet.core.transforms import test_geometry
from centernet.io.binio import output_bin_path
from centernet.io.coco import COCO_CATEGORIES, is_keypoint_dataset, load_annotations, validate_keypoint_annotations
from centernet.errors import UserError
from centernet.io.synthetic import (make_synthetic_coco, make_synthetic_person_coco, perfect_pose_outputs,
                                    write_perfect_pose_bins)


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


# --- the person-keypoints set (multi_pose) -----------------------------------

def test_person_set_layout_and_contents(synthetic_person_coco):
    root = synthetic_person_coco["root"]
    path = root / "coco" / "annotations" / "person_keypoints_val2017.json"
    assert synthetic_person_coco["annotation_file"] == path
    data = load_annotations(path, require_annotations=True)
    assert is_keypoint_dataset(data) and validate_keypoint_annotations(data, path) == [1]
    (cat,) = data["categories"]
    assert (cat["id"], cat["name"], cat["keypoints"]) == (1, "person", list(KEYPOINT_NAMES))
    assert cat["skeleton"] == [[a + 1, b + 1] for a, b in SKELETON] and min(map(min, cat["skeleton"])) == 1
    hidden = 0
    for img in data["images"]:
        pixels = cv2.imread(str(root / "coco" / "val2017" / img["file_name"]))
        assert pixels.shape == (img["height"], img["width"], 3)
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        assert 1 <= len(anns) <= 4
        for a in anns:
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
            assert a["area"] == pytest.approx(w * h) and a["iscrowd"] == 0 and a["category_id"] == 1
            kps = np.asarray(a["keypoints"], float).reshape(NUM_JOINTS, 3)
            seen = kps[:, 2] > 0
            assert set(kps[:, 2]) <= {0, 2} and a["num_keypoints"] == seen.sum() >= 1
            assert (kps[~seen] == 0).all()
            hidden += int((~seen).sum())
            # every labelled joint inside the box, and drawn: not the smooth background
            assert ((kps[seen, 0] > x) & (kps[seen, 0] < x + w) & (kps[seen, 1] > y) & (kps[seen, 1] < y + h)).all()
        # people apart: no two boxes overlap
        for i, a in enumerate(anns):
            for b in anns[i + 1:]:
                (ax, ay, aw, ah), (bx, by, bw, bh) = a["bbox"], b["bbox"]
                assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay
    assert hidden > 0  # some joints unlabelled, v = 0


def test_person_set_stick_figures_are_drawn(tmp_path):
    # each limb between two labelled joints is drawn in its person's colour:
    # the pixels around its midpoint have the colour of the joint's dot
    info = make_synthetic_person_coco(tmp_path / "p", num_images=2, seed=4, image_sizes=[(320, 240)])
    data = json.loads(info["annotation_file"].read_text())
    limbs = 0
    for a in data["annotations"]:
        img = next(i for i in data["images"] if i["id"] == a["image_id"])
        pixels = cv2.imread(str(info["images_dir"] / img["file_name"])).astype(int)
        kps = np.asarray(a["keypoints"], float).reshape(NUM_JOINTS, 3)
        for j, k in SKELETON:
            if kps[j, 2] and kps[k, 2]:
                dot = pixels[int(round(kps[j, 1])), int(round(kps[j, 0]))]
                mx, my = np.round((kps[j, :2] + kps[k, :2]) / 2).astype(int)
                around = pixels[my - 1:my + 2, mx - 1:mx + 2].reshape(-1, 3)
                assert np.abs(around - dot).max(axis=1).min() < 30
                limbs += 1
    assert limbs >= 10


def test_person_set_deterministic_and_loads_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    a = make_synthetic_person_coco(tmp_path / "a", num_images=3, seed=5, image_sizes=[(96, 128)])
    b = make_synthetic_person_coco(tmp_path / "b", num_images=3, seed=5, image_sizes=[(96, 128)])
    c = make_synthetic_person_coco(tmp_path / "c", num_images=3, seed=6, image_sizes=[(96, 128)])
    assert a["annotation_file"].read_bytes() == b["annotation_file"].read_bytes() != c["annotation_file"].read_bytes()
    for name in sorted(p.name for p in a["images_dir"].iterdir()):
        assert (a["images_dir"] / name).read_bytes() == (b["images_dir"] / name).read_bytes()
    coco = COCO(str(a["annotation_file"]))
    assert coco.getCatIds() == [1] and len(coco.getImgIds()) == 3
    assert coco.loadCats(1)[0]["keypoints"] == list(KEYPOINT_NAMES)
    assert len(coco.getAnnIds()) == a["num_annotations"] >= 3
    other = make_synthetic_person_coco(tmp_path / "t", num_images=1, split="train")
    assert other["annotation_file"].name == "person_keypoints_train2017.json"
    assert other["images_dir"].name == "train2017"


# A small brute-force multi_pose decoder written from upstream's rules
# (multi_pose_decode): centre peaks by 3x3 max-pool, regressed joints
# hps + the centre's integer coordinates, then each joint snapped to the
# nearest hm_hp peak (+ hp_offset) unless that peak is outside the box,
# scores < 0.1, or lies farther than 0.3 x the box's longer side.

def _sigmoid(x):
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def _peaks(heat):
    """(score, y, x) of every 3x3 local maximum of one map (ties kept), best first."""
    h, w = heat.shape
    padded = np.pad(heat, 1, constant_values=-np.inf)
    window = np.max([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
    ys, xs = np.nonzero(heat >= window)
    return sorted(((heat[y, x], y, x) for y, x in zip(ys, xs)), key=lambda t: -t[0])


def brute_force_pose_decode(hm, wh, hps, reg, hm_hp, hp_offset, K=100):
    heat, hp_heat = _sigmoid(hm), _sigmoid(hm_hp)
    cells = _peaks(heat[0])[:K]
    peaks = []  # per joint: [(px, py, score)] top K
    for j in range(NUM_JOINTS):
        found = _peaks(hp_heat[j])[:K]
        peaks.append(np.array([(x + hp_offset[0, y, x], y + hp_offset[1, y, x], s) if s > 0.1
                               else (-10000, -10000, -1) for s, y, x in found], np.float64).reshape(-1, 3))
    out = []
    for score, y, x in cells:
        cx, cy = x + reg[0, y, x], y + reg[1, y, x]
        bw, bh = wh[0, y, x], wh[1, y, x]
        box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], np.float64)
        joints = hps[:, y, x].astype(np.float64).reshape(NUM_JOINTS, 2) + (x, y)
        for j in range(NUM_JOINTS):
            if not len(peaks[j]):
                continue
            d = np.hypot(peaks[j][:, 0] - joints[j, 0], peaks[j][:, 1] - joints[j, 1])
            k = int(np.argmin(d))  # the first on ties
            px, py, s = peaks[j][k]
            if (px < box[0] or px > box[2] or py < box[1] or py > box[3] or s < 0.1
                    or d[k] > 0.3 * max(box[3] - box[1], box[2] - box[0])):
                continue
            joints[j] = (px, py)
        out.append((score, box, joints))
    return out


@pytest.mark.parametrize("input_size", [(128, 128), (96, 160)])
def test_perfect_pose_outputs_decode_to_the_ground_truth(synthetic_person_coco, input_size):
    data = synthetic_person_coco["dataset"]
    in_h, in_w = input_size
    snapped = total = 0
    for img in data["images"]:
        outputs = perfect_pose_outputs(data, img, input_size)
        assert [o.shape[0] for o in outputs] == [1, 2, 2 * NUM_JOINTS, 2, NUM_JOINTS, 2]
        assert all(o.shape[1:] == (in_h // 4, in_w // 4) and o.dtype == np.float32 for o in outputs)
        center, scale, _ = test_geometry(img["height"], img["width"], input_size)
        out_size = (in_w // 4, in_h // 4)
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
        found = [d for d in brute_force_pose_decode(*outputs) if d[0] > 0.5]
        assert len(found) == len(anns)
        # with the regressed joints a little off, snapping alone must find them
        hps = outputs[2] + np.float32(0.3)
        nudged = [d for d in brute_force_pose_decode(outputs[0], outputs[1], hps, *outputs[3:]) if d[0] > 0.5]
        for (_, box, joints), (_, _, nudged_joints) in zip(found, nudged):
            box_img = map_boxes_to_image(box, center, scale, out_size)
            joints_img = map_boxes_to_image(joints, center, scale, out_size)  # (17, 2): x, y pairs
            nudged_img = map_boxes_to_image(nudged_joints, center, scale, out_size)
            gt = min(anns, key=lambda a: abs(a["bbox"][0] - box_img[0]) + abs(a["bbox"][1] - box_img[1]))
            x, y, w, h = gt["bbox"]
            np.testing.assert_allclose(box_img, [x, y, x + w, y + h], atol=1e-3)
            kps = np.asarray(gt["keypoints"], float).reshape(NUM_JOINTS, 3)
            seen = kps[:, 2] > 0
            np.testing.assert_allclose(joints_img[seen], kps[seen, :2], atol=1e-3)
            exact = np.abs(nudged_img[seen] - kps[seen, :2]).max(axis=1) <= 1e-3
            snapped += int(exact.sum())
            total += int(seen.sum())
    assert snapped >= 0.8 * total  # most joints have their own hm_hp peak


def test_write_perfect_pose_bins(synthetic_person_coco, tmp_path):
    data = synthetic_person_coco["dataset"]
    out = write_perfect_pose_bins(data, tmp_path / "bins", (128, 128))
    img = data["images"][0]
    stem = img["file_name"][:-4]
    assert len(list(out.iterdir())) == 6 * len(data["images"])
    for i, (name, arr) in enumerate(zip(POSE_HEADS, perfect_pose_outputs(data, img, (128, 128)))):
        raw = np.fromfile(output_bin_path(out, stem, i), np.float32)
        assert raw.size == arr.size and np.array_equal(raw, arr.ravel()), name
