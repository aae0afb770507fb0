"""A small, deterministic COCO-format dataset for tests and the demo, and the
outputs a perfect model would give on it.

Layout as the recipe expects: ROOT/coco/val2017/<id:012d>.jpg and
ROOT/coco/annotations/instances_val2017.json, with the 80 real COCO 2017
categories (ids 1..90 with gaps). Objects are filled axis-aligned rectangles,
so their boxes are exact.

make_synthetic_person_coco writes a person-keypoints set in the same layout
(ROOT/coco/annotations/person_keypoints_val2017.json): stick-figure people
with COCO's 17 keypoints, for multi_pose; perfect_pose_outputs gives a
perfect multi_pose model's six head outputs on it.
"""
import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from centernet.constants import KEYPOINT_NAMES, NUM_JOINTS, SKELETON
from centernet.io.binio import make_dirs, output_bin_path, write_atomic, write_bin
from centernet.io.coco import COCO_CATEGORIES
from centernet.errors import UserError
from centernet.core.transforms import (DOWN_RATIO, INPUT_SIZE, get_affine_transform, preprocess_image, test_geometry,
                         transform_points)

SYNTHETIC_TAG = "synthetic COCO-format data"

# (width, height) of typical COCO val2017 images, landscape and portrait.
COCO_LIKE_SIZES = [(640, 480), (480, 640), (640, 427), (500, 375), (640, 640),
                   (427, 640), (612, 612), (640, 360)]


def _background(rng, width, height):
    """Smooth colour gradient plus mild noise: JPEG-friendly, not flat."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    for ch in range(3):
        a, b, c = rng.uniform(40, 200), rng.uniform(-60, 60), rng.uniform(-60, 60)
        img[..., ch] = a + b * xx / width + c * yy / height
    img += rng.normal(0, 4, size=(height, width, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _place_boxes(rng, width, height, count, min_frac, max_frac, aspect=None):
    """Up to `count` non-overlapping integer boxes (x, y, w, h), 2 px apart.
    Sides between min_frac and max_frac of the image's; with `aspect` (lo, hi)
    the height so and the width that height times a ratio drawn from lo..hi
    (at most the image's width)."""
    boxes = []
    for _ in range(count * 20):
        if len(boxes) == count:
            break
        if aspect is None:
            w = int(rng.uniform(min_frac, max_frac) * width)
            h = int(rng.uniform(min_frac, max_frac) * height)
        else:
            h = int(rng.uniform(min_frac, max_frac) * height)
            w = min(width, int(h * rng.uniform(*aspect)))
        w, h = max(w, 4), max(h, 4)
        x = int(rng.integers(0, width - w + 1))
        y = int(rng.integers(0, height - h + 1))
        if all(x + w + 2 <= bx or bx + bw + 2 <= x or y + h + 2 <= by or by + bh + 2 <= y
               for bx, by, bw, bh in boxes):
            boxes.append((x, y, w, h))
    return boxes


def synthetic_photo(rng, width, height, max_objects=6, min_box_frac=0.1, max_box_frac=0.4):
    """A smooth BGR uint8 "photo" (colour gradient, mild noise) holding 1..max_objects
    filled rectangles of random colours; returns (image, [(x, y, w, h), ...])."""
    img = _background(rng, width, height)
    count = int(rng.integers(1, max_objects + 1))
    boxes = _place_boxes(rng, width, height, count, min_box_frac, max_box_frac)
    for x, y, w, h in boxes:
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        img[y:y + h, x:x + w] = colour
    return img, boxes


def synthetic_input_batch(num_images, input_size=(INPUT_SIZE, INPUT_SIZE), seed=0, image_sizes=None):
    """float32 (N, 3, H, W) network input: synthetic photos of COCO-like sizes
    through the fixed-resolution test transform, i.e. what the network sees on
    real data (not white noise, on which a network calibrated on images
    behaves nothing like on photos)."""
    rng = np.random.default_rng(seed)
    sizes = list(image_sizes or COCO_LIKE_SIZES)
    batch = np.empty((num_images, 3, *input_size), np.float32)
    for n in range(num_images):
        width, height = sizes[n % len(sizes)]
        img, _ = synthetic_photo(rng, width, height)
        center, scale, _ = test_geometry(height, width, input_size)
        preprocess_image(img, center, scale, input_size, out=batch[n:n + 1])
    return batch


def _previous_synthetic_images(ann_file):
    """File names of an earlier synthetic set at this place; refuses to
    overwrite an annotation file that is not one of ours (real COCO, say)."""
    if not ann_file.exists():
        return set()
    try:
        old = json.loads(ann_file.read_text())
        ours = old["info"]["description"].startswith(SYNTHETIC_TAG)
    except (ValueError, KeyError, TypeError, AttributeError):
        ours = False
    if not ours:
        raise UserError(f"{ann_file}: exists and is not synthetic data; refusing to overwrite it")
    return {img["file_name"] for img in old.get("images", [])}


def _write_synthetic_set(root, ann_name, images_name, num_images, seed, image_sizes, categories, draw,
                         jpeg_quality=90, progress=False):
    """What every synthetic set does: ROOT/coco/<images_name>/<id:012d>.jpg and
    ROOT/coco/annotations/<ann_name>, deterministic for a seed. `draw(rng,
    width, height, image_id, first_ann_id)` returns (BGR image, that image's
    annotation dicts). Returns {"root", "images_dir", "annotation_file",
    "num_images", "num_annotations"}."""
    root = Path(root)
    images_dir = root / "coco" / images_name
    ann_dir = root / "coco" / "annotations"
    ann_file = ann_dir / ann_name
    stale = _previous_synthetic_images(ann_file)
    make_dirs(images_dir)
    make_dirs(ann_dir)
    sizes = list(image_sizes or COCO_LIKE_SIZES)
    rng = np.random.default_rng(seed)
    # Sparse, COCO-like ids; the file name is the zero-padded id, as in val2017.
    image_ids = np.sort(rng.choice(np.arange(1, 600000), size=num_images, replace=False))

    images, annotations = [], []
    for n in tqdm(range(num_images), desc="synthetic images", unit="img", disable=not progress):
        width, height = sizes[n % len(sizes)]
        image_id = int(image_ids[n])
        file_name = f"{image_id:012d}.jpg"
        img, anns = draw(rng, width, height, image_id, len(annotations) + 1)
        annotations.extend(anns)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        assert ok, "JPEG encoding failed"
        write_atomic(images_dir / file_name, buf.tobytes())
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})

    dataset = {
        "info": {"description": f"{SYNTHETIC_TAG} (seed {seed})", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    write_atomic(ann_file, json.dumps(dataset).encode("utf-8"))
    for name in stale - {img["file_name"] for img in images}:  # left over from a larger earlier set
        (images_dir / name).unlink(missing_ok=True)
    return {"root": root, "images_dir": images_dir, "annotation_file": ann_file,
            "num_images": num_images, "num_annotations": len(annotations)}


def make_synthetic_coco(root, num_images=16, seed=0, image_sizes=None, max_objects=6,
                        min_box_frac=0.1, max_box_frac=0.4, jpeg_quality=90, progress=False):
    """Write a COCO-format dataset of `num_images` JPEGs under ROOT/coco.

    Deterministic for a given seed. `image_sizes` is a list of (width, height)
    cycled over the images (default: COCO-like sizes up to 640). Each image
    holds 1..max_objects filled rectangles of random categories, sides between
    min_box_frac and max_box_frac of the image's.

    Returns {"root", "images_dir", "annotation_file", "num_images", "num_annotations"}.
    """
    cat_ids = [cid for cid, _, _ in COCO_CATEGORIES]

    def draw(rng, width, height, image_id, first_id):
        img, boxes = synthetic_photo(rng, width, height, max_objects, min_box_frac, max_box_frac)
        anns = []
        for x, y, w, h in boxes:
            anns.append({
                "id": first_id + len(anns), "image_id": image_id,
                "category_id": int(rng.choice(cat_ids)),
                "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h),
                "iscrowd": 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            })
        return img, anns

    categories = [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup in COCO_CATEGORIES]
    return _write_synthetic_set(root, "instances_val2017.json", "val2017", num_images, seed, image_sizes,
                                categories, draw, jpeg_quality, progress)


# Where each of COCO's 17 joints sits in a person's box, (x, y) as fractions of
# its width and height: a person facing the camera, so the left_* joints are
# on the image's right.
POSE_TEMPLATE = ((0.50, 0.08), (0.55, 0.05), (0.45, 0.05), (0.60, 0.07), (0.40, 0.07),
                 (0.72, 0.22), (0.28, 0.22), (0.82, 0.38), (0.18, 0.38), (0.90, 0.52), (0.10, 0.52),
                 (0.62, 0.55), (0.38, 0.55), (0.65, 0.76), (0.35, 0.76), (0.67, 0.96), (0.33, 0.96))
PERSON_CATEGORY = {"id": 1, "name": "person", "supercategory": "person"}


def person_keypoint_category():
    """COCO's person category of a person_keypoints file: the 17 keypoint
    names and the 19-limb skeleton, 1-based as COCO writes it."""
    return {**PERSON_CATEGORY, "keypoints": list(KEYPOINT_NAMES),
            "skeleton": [[a + 1, b + 1] for a, b in SKELETON]}


def _stick_figure(rng, img, box, hide_frac=0.12):
    """Draw a stick figure in the integer box (x, y, w, h) of `img` and return
    its COCO annotation fields: joints POSE_TEMPLATE jittered a little,
    inside the box with a margin; some joints (about hide_frac) unlabelled
    (0, 0, 0), the others visibility 2; limbs between labelled joints drawn
    as lines, joints as dots. The bbox is the labelled joints' extent plus the
    stroke, so it holds every drawn pixel."""
    x, y, w, h = box
    height, width = img.shape[:2]
    margin = max(4.0, 0.08 * w)
    stroke = max(1, int(round(h / 40)))
    template = np.asarray(POSE_TEMPLATE) + rng.uniform(-0.03, 0.03, size=(NUM_JOINTS, 2))
    template = np.clip(template, 0.0, 1.0)
    joints = np.empty((NUM_JOINTS, 2))
    joints[:, 0] = x + margin + template[:, 0] * max(w - 2 * margin, 1.0)
    joints[:, 1] = y + margin + template[:, 1] * max(h - 2 * margin, 1.0)
    joints = np.round(joints, 2)
    visible = rng.uniform(size=NUM_JOINTS) >= hide_frac
    visible[rng.integers(0, NUM_JOINTS)] = True  # at least one labelled joint
    colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
    shift = 4  # cv2's fixed-point bits: draw at sub-pixel positions
    pts = [(int(round(px * (1 << shift))), int(round(py * (1 << shift)))) for px, py in joints]
    for a, b in SKELETON:
        if visible[a] and visible[b]:
            cv2.line(img, pts[a], pts[b], colour, stroke, cv2.LINE_AA, shift)
    for j in np.flatnonzero(visible):
        cv2.circle(img, pts[j], (stroke + 1) << shift, colour, -1, cv2.LINE_AA, shift)
    seen = joints[visible]
    pad = stroke + 2
    x1, y1 = max(0.0, float(np.floor(seen[:, 0].min())) - pad), max(0.0, float(np.floor(seen[:, 1].min())) - pad)
    x2 = min(float(width), float(np.ceil(seen[:, 0].max())) + pad)
    y2 = min(float(height), float(np.ceil(seen[:, 1].max())) + pad)
    keypoints = []
    for (px, py), v in zip(joints, visible):
        keypoints += [float(px), float(py), 2] if v else [0, 0, 0]
    return {"bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            "keypoints": keypoints, "num_keypoints": int(visible.sum())}


def make_synthetic_person_coco(root, num_images=8, seed=0, image_sizes=None, split="val", max_people=4,
                               jpeg_quality=90, progress=False):
    """Write a COCO person-keypoints dataset of `num_images` JPEGs under ROOT/coco,
    in the recipe's layout: ROOT/coco/<split>2017/<id:012d>.jpg and
    ROOT/coco/annotations/person_keypoints_<split>2017.json.

    Deterministic for a given seed; `image_sizes` as make_synthetic_coco's.
    Each image holds 1..max_people stick-figure people (_stick_figure), apart
    from each other, with COCO keypoint annotations (bbox, area, iscrowd 0,
    17 x [x, y, v] keypoints, num_keypoints) of the one category, person,
    with its keypoint names and 1-based skeleton.

    Returns {"root", "images_dir", "annotation_file", "num_images", "num_annotations"}.
    """
    def draw(rng, width, height, image_id, first_id):
        img = _background(rng, width, height)
        count = int(rng.integers(1, max_people + 1))
        anns = []
        for box in _place_boxes(rng, width, height, count, 0.35, 0.8, aspect=(0.4, 0.6)):
            ann = _stick_figure(rng, img, box)
            anns.append({"id": first_id + len(anns), "image_id": image_id, "category_id": PERSON_CATEGORY["id"],
                         **ann})
        return img, anns

    return _write_synthetic_set(root, f"person_keypoints_{split}2017.json", f"{split}2017", num_images, seed,
                                image_sizes, [person_keypoint_category()], draw, jpeg_quality, progress)


def perfect_model_outputs(dataset, image, input_size=(INPUT_SIZE, INPUT_SIZE),
                          peak_logit=4.0, background_logit=-8.0):
    """Raw (hm, wh, reg) a perfect model would output for one image entry of a
    COCO dict (fixed-resolution mode): one peak per object at its centre on
    the output map, the sub-pixel remainder in reg and the size in wh."""
    in_h, in_w = input_size
    out_h, out_w = in_h // DOWN_RATIO, in_w // DOWN_RATIO
    class_of = {cid: j for j, cid in enumerate(sorted(c["id"] for c in dataset["categories"]))}
    center, scale, _ = test_geometry(image["height"], image["width"], input_size)
    trans = get_affine_transform(center, scale, (out_w, out_h))
    hm = np.full((len(class_of), out_h, out_w), background_logit, np.float32)
    wh = np.zeros((2, out_h, out_w), np.float32)
    reg = np.zeros((2, out_h, out_w), np.float32)
    for ann in dataset["annotations"]:
        if ann["image_id"] != image["id"]:
            continue
        x, y, w, h = ann["bbox"]
        (x1, y1), (x2, y2) = transform_points([[x, y], [x + w, y + h]], trans)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        ix, iy = int(np.floor(cx)), int(np.floor(cy))
        if 0 <= ix < out_w and 0 <= iy < out_h:
            hm[class_of[ann["category_id"]], iy, ix] = peak_logit
            reg[:, iy, ix] = (cx - ix, cy - iy)
            wh[:, iy, ix] = (x2 - x1, y2 - y1)
    return hm, wh, reg


def write_perfect_model_bins(dataset, out_dir, input_size=(INPUT_SIZE, INPUT_SIZE), **kwargs):
    """Write perfect_model_outputs of every image as ais_bench output bins
    (<stem>_0.bin hm, _1 wh, _2 reg) into out_dir."""
    return _write_output_bins(dataset, out_dir, lambda image: perfect_model_outputs(dataset, image, input_size,
                                                                                    **kwargs))


def _write_output_bins(dataset, out_dir, outputs_of):
    """Each image's outputs_of(image), in order, as ais_bench's <stem>_<i>.bin in out_dir."""
    out_dir = make_dirs(out_dir)
    for image in dataset["images"]:
        stem = Path(image["file_name"]).stem
        for i, arr in enumerate(outputs_of(image)):
            write_bin(output_bin_path(out_dir, stem, i), arr)
    return out_dir


def perfect_pose_outputs(dataset, image, input_size=(INPUT_SIZE, INPUT_SIZE),
                         peak_logit=4.0, background_logit=-8.0):
    """Raw (hm, wh, hps, reg, hm_hp, hp_offset), POSE_HEADS' order, a perfect
    multi_pose model would output for one image entry of a person-keypoints
    COCO dict (fixed-resolution mode). hm, wh, reg as perfect_model_outputs;
    at each person's centre cell hps holds every labelled joint's offset from
    that cell's integer coordinates (x, y of joint j in channels 2j, 2j + 1),
    so the regressed joints are exact; and each labelled joint is a peak of
    its hm_hp channel at its integer cell with the sub-pixel remainder in
    hp_offset, so snapping to the nearest peak finds it again. hp_offset has
    one (x, y) per cell for all 17 joints (as upstream's head): where two
    joints fall in one cell with different remainders, only the first gets
    its peak, and the other keeps its regressed position (exact too: the
    people of make_synthetic_person_coco do not overlap, so no other
    person's peak of that joint lies in its box). Unlabelled joints (v = 0)
    leave everything at zero and the background."""
    hm, wh, reg = perfect_model_outputs(dataset, image, input_size, peak_logit, background_logit)
    out_h, out_w = hm.shape[1:]
    center, scale, _ = test_geometry(image["height"], image["width"], input_size)
    trans = get_affine_transform(center, scale, (out_w, out_h))
    hps = np.zeros((2 * NUM_JOINTS, out_h, out_w), np.float32)
    hm_hp = np.full((NUM_JOINTS, out_h, out_w), background_logit, np.float32)
    hp_offset = np.zeros((2, out_h, out_w), np.float32)
    taken = {}  # (x, y) cell -> the joint offset hp_offset holds there
    for ann in dataset["annotations"]:
        if ann["image_id"] != image["id"]:
            continue
        x, y, w, h = ann["bbox"]
        (x1, y1), (x2, y2) = transform_points([[x, y], [x + w, y + h]], trans)
        ix, iy = int(np.floor((x1 + x2) / 2)), int(np.floor((y1 + y2) / 2))
        kps = np.asarray(ann.get("keypoints") or [0] * 3 * NUM_JOINTS, np.float64).reshape(NUM_JOINTS, 3)
        seen = kps[:, 2] > 0
        if not seen.any():
            continue
        joints = transform_points(kps[:, :2], trans)
        if 0 <= ix < out_w and 0 <= iy < out_h:
            for j in np.flatnonzero(seen):
                hps[2 * j:2 * j + 2, iy, ix] = (joints[j, 0] - ix, joints[j, 1] - iy)
        for j in np.flatnonzero(seen):
            jx, jy = int(np.floor(joints[j, 0])), int(np.floor(joints[j, 1]))
            if not (0 <= jx < out_w and 0 <= jy < out_h):
                continue
            offset = (joints[j, 0] - jx, joints[j, 1] - jy)
            if (jx, jy) in taken and taken[jx, jy] != offset:
                continue  # the cell's one offset is another joint's: no peak, the regressed joint stays
            taken[jx, jy] = offset
            hm_hp[j, jy, jx] = peak_logit
            hp_offset[:, jy, jx] = offset
    return hm, wh, hps, reg, hm_hp, hp_offset


def write_perfect_pose_bins(dataset, out_dir, input_size=(INPUT_SIZE, INPUT_SIZE), **kwargs):
    """Write perfect_pose_outputs of every image as ais_bench output bins
    (<stem>_<i>.bin, i = 0..5 in POSE_HEADS' order: hm, wh, hps, reg, hm_hp,
    hp_offset) into out_dir."""
    return _write_output_bins(dataset, out_dir, lambda image: perfect_pose_outputs(dataset, image, input_size,
                                                                                   **kwargs))
