"""A generated detection dataset whose classes can be learnt: filled shapes
(rectangles, ellipses, triangles, crosses) of random colours, sizes,
rotations and overlaps on textured backgrounds, in COCO format.

It is what the stand-in detector (train/standin.py) is trained and scored
on: a detector that really detects, for the demo, the end-to-end AP test and
the precision benchmark, on machines with no COCO and no real checkpoint.
It detects shapes, not COCO objects.

Every image is a pure function of (seed, split, index), so the train split
can be made on the fly while training, the held-out split written to disk
by anyone, and both come out the same everywhere (numpy's PCG64 and OpenCV's
integer polygon filling). Layout as the recipe expects:
ROOT/coco/<split>2017/<index:06d>.jpg and
ROOT/coco/annotations/instances_<split>2017.json.
"""
import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from centernet.errors import UserError
from centernet.io.binio import make_dirs, write_atomic

SHAPES_TAG = "generated shapes (CenterNet stand-in data)"
SHAPE_CLASSES = ("rectangle", "ellipse", "triangle", "cross")
SPLITS = {"train": 1, "val": 2}   # split name -> its stream in the seed
# (width, height) of the images: small, landscape and portrait.
SHAPE_IMAGE_SIZES = ((320, 240), (240, 320), (288, 288), (352, 256), (256, 352))
MAX_OBJECTS = 8
SIDE_FRACTION = (0.1, 0.45)   # a shape's size, as a fraction of the image's shorter side
MAX_COVERED = 0.4             # at most this much of a shape's box lies under later shapes
JPEG_QUALITY = 90


def _background(rng, width, height):
    """Colour gradient + low-frequency colour blobs + stripes + grain."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    for ch in range(3):
        img[..., ch] = rng.uniform(50, 200) + rng.uniform(-50, 50) * xx / width + rng.uniform(-50, 50) * yy / height
    blobs = rng.normal(0, 28, size=(int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3)).astype(np.float32)
    img += cv2.resize(blobs, (width, height), interpolation=cv2.INTER_CUBIC)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
    img += (rng.uniform(0, 14) * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period))[..., None]
    img += rng.normal(0, 5, size=(height, width, 1)).astype(np.float32)
    return img


def _polygon(rng, kind, cx, cy, size):
    """Vertices (float, N x 2) of one shape of about `size` pixels across."""
    angle = rng.uniform(0, 2 * np.pi) if kind != "rectangle" else rng.uniform(-0.4, 0.4)
    aspect = rng.uniform(0.5, 1.0)
    if kind == "rectangle":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * [0.5, 0.5 * aspect]
    elif kind == "ellipse":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([0.5 * np.cos(t), 0.5 * aspect * np.sin(t)], 1)
    elif kind == "triangle":
        t = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
        pts = np.stack([0.55 * np.cos(t), 0.55 * np.sin(t)], 1)
    else:  # cross: a plus sign whose arms are a third of its width
        a, b = 0.5, 0.5 / 3
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b],
                        [-a, b], [-a, -b], [-b, -b]], np.float64)
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]]) * size + [cx, cy]


def _covered_fraction(box, later):
    """Fraction of `box` (x0, y0, x1, y1) under the union of `later` boxes (on a pixel grid)."""
    x0, y0, x1, y1 = box
    grid = np.zeros((y1 - y0 + 1, x1 - x0 + 1), bool)
    for a0, b0, a1, b1 in later:
        grid[max(b0, y0) - y0:min(b1, y1) + 1 - y0, max(a0, x0) - x0:min(a1, x1) + 1 - x0] = True
    return grid.mean()


def shapes_image(seed, split, index, width=None, height=None):
    """Image `index` of `split` ("train" or "val") for `seed`: (BGR uint8
    image as decoded from its JPEG, [(x, y, w, h, class index), ...], the
    JPEG's bytes). Boxes
    are the shapes' whole extents, in pixels; later shapes may partly hide
    earlier ones (at most MAX_COVERED of a box)."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    if width is None:
        width, height = SHAPE_IMAGE_SIZES[int(rng.integers(len(SHAPE_IMAGE_SIZES)))]
    img = _background(rng, width, height)
    short = min(width, height)
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    placed = []  # (polygon in integer pixels, box x0 y0 x1 y1, class, colour)
    for _ in range(count * 4):
        if len(placed) == count:
            break
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        size = rng.uniform(*SIDE_FRACTION) * short
        poly = np.round(_polygon(rng, SHAPE_CLASSES[cls], rng.uniform(0, width), rng.uniform(0, height), size))
        poly = poly.astype(np.int32)
        x0, y0 = poly.min(0)
        x1, y1 = poly.max(0)
        if x0 < 0 or y0 < 0 or x1 >= width or y1 >= height or min(x1 - x0, y1 - y0) < 6:
            continue
        box = (int(x0), int(y0), int(x1), int(y1))
        if any(_covered_fraction(p[1], [q[1] for q in placed[i + 1:]] + [box]) > MAX_COVERED
               for i, p in enumerate(placed)):
            continue
        colour = rng.uniform(0, 255, 3)
        placed.append((poly, box, cls, colour))
    for poly, _, _, colour in placed:
        cv2.fillPoly(img, [poly], tuple(float(v) for v in colour), lineType=cv2.LINE_8)
    img += rng.normal(0, 4, size=(height, width, 1)).astype(np.float32)  # grain on the shapes too
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    # As read back from its JPEG: training sees what evaluation will.
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, "JPEG encoding failed"
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    objects = [(b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1, cls) for _, b, cls, _ in placed]
    return decoded, objects, buf


def shapes_categories():
    return [{"id": j + 1, "name": name, "supercategory": "shape"} for j, name in enumerate(SHAPE_CLASSES)]


def _check_ours(ann_file):
    if not ann_file.exists():
        return
    try:
        ours = json.loads(ann_file.read_text())["info"]["description"].startswith(SHAPES_TAG)
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        ours = False
    if not ours:
        raise UserError(f"{ann_file}: exists and is not generated shapes data; refusing to overwrite it")


def shapes_paths(root, split):
    """(images folder, annotation file) of `split` under ROOT."""
    root = Path(root) / "coco"
    return root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"


def make_shapes_coco(root, split="val", num_images=200, seed=0, progress=False):
    """Write images 0..num_images-1 of `split` as JPEGs with their COCO
    annotation file (written last, so its presence means the set is whole).
    Reuses a complete set made with the same seed and count. Returns
    (images folder, annotation file)."""
    images_dir, ann_file = shapes_paths(root, split)
    description = f"{SHAPES_TAG}: {split} split, seed {seed}, {num_images} images"
    if ann_file.is_file():
        _check_ours(ann_file)
        if json.loads(ann_file.read_text())["info"]["description"] == description:
            return images_dir, ann_file
    make_dirs(images_dir)
    make_dirs(ann_file.parent)
    images, annotations = [], []
    for index in tqdm(range(num_images), desc=f"shapes {split}", unit="img", disable=not progress):
        img, objects, jpeg = shapes_image(seed, split, index)
        image_id = index + 1
        file_name = f"{index:06d}.jpg"
        write_atomic(images_dir / file_name, jpeg.tobytes())
        images.append({"id": image_id, "file_name": file_name, "width": img.shape[1], "height": img.shape[0]})
        for x, y, w, h, cls in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h),
                                "iscrowd": 0})
    dataset = {"info": {"description": description, "version": "1.0"}, "licenses": [], "images": images,
               "annotations": annotations, "categories": shapes_categories()}
    write_atomic(ann_file, json.dumps(dataset).encode("utf-8"))
    kept = {img["file_name"] for img in images}
    for stale in images_dir.glob("*.jpg"):  # left over from a larger earlier set
        if stale.name not in kept:
            stale.unlink(missing_ok=True)
    return images_dir, ann_file
