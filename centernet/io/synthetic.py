"""A small, deterministic COCO-format dataset for tests and the demo, and the
outputs a perfect model would give on it.

Layout as the recipe expects: ROOT/coco/val2017/<id:012d>.jpg and
ROOT/coco/annotations/instances_val2017.json, with the 80 real COCO 2017
categories (ids 1..90 with gaps). Objects are filled axis-aligned rectangles,
so their boxes are exact.
"""
import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

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


def _place_boxes(rng, width, height, count, min_frac, max_frac):
    """Up to `count` non-overlapping integer boxes (x, y, w, h), 2 px apart."""
    boxes = []
    for _ in range(count * 20):
        if len(boxes) == count:
            break
        w = int(rng.uniform(min_frac, max_frac) * width)
        h = int(rng.uniform(min_frac, max_frac) * height)
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


def make_synthetic_coco(root, num_images=16, seed=0, image_sizes=None, max_objects=6,
                        min_box_frac=0.1, max_box_frac=0.4, jpeg_quality=90, progress=False):
    """Write a COCO-format dataset of `num_images` JPEGs under ROOT/coco.

    Deterministic for a given seed. `image_sizes` is a list of (width, height)
    cycled over the images (default: COCO-like sizes up to 640). Each image
    holds 1..max_objects filled rectangles of random categories, sides between
    min_box_frac and max_box_frac of the image's.

    Returns {"root", "images_dir", "annotation_file", "num_images", "num_annotations"}.
    """
    root = Path(root)
    images_dir = root / "coco" / "val2017"
    ann_dir = root / "coco" / "annotations"
    ann_file = ann_dir / "instances_val2017.json"
    stale = _previous_synthetic_images(ann_file)
    make_dirs(images_dir)
    make_dirs(ann_dir)
    sizes = list(image_sizes or COCO_LIKE_SIZES)
    rng = np.random.default_rng(seed)
    cat_ids = [cid for cid, _, _ in COCO_CATEGORIES]
    # Sparse, COCO-like ids; the file name is the zero-padded id, as in val2017.
    image_ids = np.sort(rng.choice(np.arange(1, 600000), size=num_images, replace=False))

    images, annotations = [], []
    for n in tqdm(range(num_images), desc="synthetic images", unit="img", disable=not progress):
        width, height = sizes[n % len(sizes)]
        image_id = int(image_ids[n])
        file_name = f"{image_id:012d}.jpg"
        img, boxes = synthetic_photo(rng, width, height, max_objects, min_box_frac, max_box_frac)
        for x, y, w, h in boxes:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": int(rng.choice(cat_ids)),
                "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h),
                "iscrowd": 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            })
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        assert ok, "JPEG encoding failed"
        write_atomic(images_dir / file_name, buf.tobytes())
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})

    dataset = {
        "info": {"description": f"{SYNTHETIC_TAG} (seed {seed})", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup in COCO_CATEGORIES],
    }
    write_atomic(ann_file, json.dumps(dataset).encode("utf-8"))
    for name in stale - {img["file_name"] for img in images}:  # left over from a larger earlier set
        (images_dir / name).unlink(missing_ok=True)
    return {"root": root, "images_dir": images_dir, "annotation_file": ann_file,
            "num_images": num_images, "num_annotations": len(annotations)}


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
    out_dir = make_dirs(out_dir)
    for image in dataset["images"]:
        stem = Path(image["file_name"]).stem
        for i, arr in enumerate(perfect_model_outputs(dataset, image, input_size, **kwargs)):
            write_bin(output_bin_path(out_dir, stem, i), arr)
    return out_dir
