"""COCO 2017 annotations, class mapping, results JSON and evaluation
(upstream: src/lib/datasets/dataset/coco.py).

Class index j of the network's 80 heatmap channels is the j-th smallest
category id of the annotation file (ids 1..90 with gaps). Every problem with a
user's file is a UserError naming the file and what is wrong with it.

Keypoint results (multi_pose, upstream's datasets/dataset/coco_hp.py: each
entry with "keypoints", NUM_JOINTS x [x, y, 1]) are scored with COCOeval's
"keypoints" (OKS) evaluation against a person_keypoints file.
"""
import contextlib
import hashlib
import io
import json
import logging
import math
import zlib
from pathlib import Path

import numpy as np

from centernet.constants import NUM_JOINTS
from centernet.io.binio import load_json, make_dirs, write_atomic
from centernet.errors import UserError

logger = logging.getLogger(__name__)

NUM_CLASSES = 80

# (id, name, supercategory) of the COCO 2017 detection categories, in id order.
COCO_CATEGORIES = [
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
    (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"), (14, "parking meter", "outdoor"), (15, "bench", "outdoor"),
    (16, "bird", "animal"), (17, "cat", "animal"), (18, "dog", "animal"),
    (19, "horse", "animal"), (20, "sheep", "animal"), (21, "cow", "animal"),
    (22, "elephant", "animal"), (23, "bear", "animal"), (24, "zebra", "animal"),
    (25, "giraffe", "animal"), (27, "backpack", "accessory"), (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"), (32, "tie", "accessory"), (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"), (35, "skis", "sports"), (36, "snowboard", "sports"),
    (37, "sports ball", "sports"), (38, "kite", "sports"), (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
    (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"),
    (49, "knife", "kitchen"), (50, "spoon", "kitchen"), (51, "bowl", "kitchen"),
    (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"),
    (55, "orange", "food"), (56, "broccoli", "food"), (57, "carrot", "food"),
    (58, "hot dog", "food"), (59, "pizza", "food"), (60, "donut", "food"),
    (61, "cake", "food"), (62, "chair", "furniture"), (63, "couch", "furniture"),
    (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"), (79, "oven", "appliance"), (80, "toaster", "appliance"),
    (81, "sink", "appliance"), (82, "refrigerator", "appliance"), (84, "book", "indoor"),
    (85, "clock", "indoor"), (86, "vase", "indoor"), (87, "scissors", "indoor"),
    (88, "teddy bear", "indoor"), (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
]

# The 12 numbers of COCOeval.summarize() for boxes (iouType "bbox"), in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# The 10 numbers of COCOeval.summarize() for keypoints (iouType "keypoints",
# OKS in place of IoU, up to 20 detections per image, no "small" range), in its order.
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl",
                       "AR", "AR50", "AR75", "ARm", "ARl")
# Numbers per keypoint result or annotation: NUM_JOINTS x (x, y, visibility).
KEYPOINT_VALUES = 3 * NUM_JOINTS


def stat_names(iou_type):
    """The names of COCOeval's stats for "bbox" or "keypoints", in its order."""
    return KEYPOINT_STAT_NAMES if iou_type == "keypoints" else STAT_NAMES


def is_keypoint_metrics(metrics):
    """Whether an evaluate_coco metrics dict (or a metrics.json) scores keypoints."""
    return isinstance(metrics, dict) and metrics.get("iou_type") == "keypoints"


def overlap_measure(metrics):
    """What the metrics' thresholds measure: "OKS" (object keypoint
    similarity) for keypoints, "IoU" for boxes (and a metrics.json without
    "iou_type", written before keypoints were scored)."""
    return "OKS" if is_keypoint_metrics(metrics) else "IoU"


def ap_name(measure):
    """What the AP over a measure's thresholds is called: "keypoint AP" for OKS, "AP" for IoU."""
    return "keypoint AP" if measure == "OKS" else "AP"


def default_annotation_file(dataset_dir, task="ctdet"):
    """The recipe's layout: DATA/coco/annotations/instances_val2017.json, and
    for a multi_pose model person_keypoints_val2017.json beside it."""
    name = "person_keypoints_val2017.json" if task == "multi_pose" else "instances_val2017.json"
    return Path(dataset_dir) / "coco" / "annotations" / name


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def load_annotations(path, require_annotations=False):
    """Read and check a COCO instances file; returns the parsed dict.

    Checks what decoding needs (images with id, file_name, width, height;
    categories with id and name) and, with `require_annotations`, what
    COCOeval needs of every annotation (image_id, category_id, bbox, area,
    iscrowd).
    """
    data = load_json(path, "annotation file")
    validate_annotations(data, path, require_annotations)
    return data


def validate_annotations(data, source, require_annotations=False):
    """Raise UserError (naming `source`) if `data` is not a usable COCO dict."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: not a COCO annotation file (top level is not an object)")
    for key in ("images", "categories") + (("annotations",) if require_annotations else ()):
        if not isinstance(data.get(key), list):
            raise UserError(f"{source}: not a COCO annotation file (no '{key}' list)")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise UserError(f"{source}: images[{i}] is not an object")
        for key, ok in (("id", _is_int), ("file_name", lambda v: isinstance(v, str) and v),
                        ("width", lambda v: _is_int(v) and v > 0),
                        ("height", lambda v: _is_int(v) and v > 0)):
            if not ok(img.get(key)):
                raise UserError(f"{source}: images[{i}] has a missing or invalid '{key}' ({img.get(key)!r})")
    ids = [img["id"] for img in data["images"]]
    if len(set(ids)) != len(ids):
        raise UserError(f"{source}: duplicate image ids")
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise UserError(f"{source}: categories[{i}] needs an integer 'id' and a 'name'")
    if not data["categories"]:
        raise UserError(f"{source}: no categories")
    if require_annotations:
        image_ids, cat_ids = set(ids), {c["id"] for c in data["categories"]}
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict):
                raise UserError(f"{source}: annotations[{i}] is not an object")
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
                raise UserError(f"{source}: annotations[{i}] has a missing or invalid 'bbox' ({bbox!r})")
            for key in ("id", "image_id", "category_id", "iscrowd"):
                if not _is_int(ann.get(key)):
                    raise UserError(f"{source}: annotations[{i}] has a missing or invalid '{key}' ({ann.get(key)!r})")
            if not _is_number(ann.get("area")):
                raise UserError(f"{source}: annotations[{i}] has a missing or invalid 'area' ({ann.get('area')!r})")
            if ann["image_id"] not in image_ids:
                raise UserError(f"{source}: annotations[{i}] names image id {ann['image_id']}, not in 'images'")
            if ann["category_id"] not in cat_ids:
                raise UserError(f"{source}: annotations[{i}] names category id {ann['category_id']}, "
                                f"not in 'categories'")


def _keypoint_categories(data):
    """Ids of the categories that name keypoints (COCO's person_keypoints files: person)."""
    return [c["id"] for c in data.get("categories") or []
            if isinstance(c, dict) and isinstance(c.get("keypoints"), list) and c["keypoints"]]


def _is_keypoint_list(kps):
    """NUM_JOINTS x (x, y, v) numbers, as a keypoint annotation or result holds them."""
    return isinstance(kps, list) and len(kps) == KEYPOINT_VALUES and all(map(_is_number, kps))


def is_keypoint_dataset(data):
    """Whether a loaded COCO dict is a keypoint file (person_keypoints_val2017.json
    style): a category names its keypoints, or an annotation carries them."""
    if not isinstance(data, dict):
        return False
    anns = data.get("annotations")
    return bool(_keypoint_categories(data)) or (
        isinstance(anns, list) and any(isinstance(a, dict) and "keypoints" in a for a in anns))


def validate_keypoint_annotations(data, source):
    """Raise UserError (naming `source`) unless `data` can score keypoint
    results: a category with NUM_JOINTS named keypoints, and on every
    annotation of such a category NUM_JOINTS x (x, y, v) numbers and an
    integer 'num_keypoints'. Returns the keypoint categories' ids."""
    cats = _keypoint_categories(data)
    if not cats:
        raise UserError(f"{source}: no keypoint annotations (no category lists its 'keypoints'), but the results "
                        f"carry keypoints; score them against a person_keypoints file such as "
                        f"person_keypoints_val2017.json, not instances_val2017.json")
    for c in data["categories"]:
        if c["id"] in cats and len(c["keypoints"]) != NUM_JOINTS:
            raise UserError(f"{source}: category {c['id']} lists {len(c['keypoints'])} keypoints, "
                            f"COCO's keypoint evaluation needs {NUM_JOINTS}")
    for i, ann in enumerate(data["annotations"]):
        if ann["category_id"] not in cats:
            continue
        if not _is_keypoint_list(ann.get("keypoints")):
            raise UserError(f"{source}: annotations[{i}] has a missing or invalid 'keypoints' "
                            f"(want {KEYPOINT_VALUES} numbers, {NUM_JOINTS} x [x, y, v]); is it a keypoint file?")
        if not _is_int(ann.get("num_keypoints")):
            raise UserError(f"{source}: annotations[{i}] has a missing or invalid 'num_keypoints' "
                            f"({ann.get('num_keypoints')!r})")
    return cats


def class_category_ids(data, num_classes=NUM_CLASSES, source="annotations"):
    """Category id of each class index: index j -> the j-th smallest id.
    num_classes: the model's class count, which must be the file's category
    count (None: any count; the caller checks it against the model)."""
    ids = sorted(c["id"] for c in data["categories"])
    if num_classes is not None and len(ids) != num_classes:
        raise UserError(f"{source}: {len(ids)} categories, the model has {num_classes} classes")
    return ids


def class_names(data):
    """Category names in class-index order (sorted by category id)."""
    return [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]


def default_category_ids():
    """The COCO 2017 ids, for decoding without an annotation file."""
    return [cid for cid, _, _ in COCO_CATEGORIES]


def stable_image_id(stem):
    """Image id for a file that no annotation names: int(stem) for COCO-style
    numeric names (000000397133 -> 397133), else a CRC32 of the stem, which is
    the same on every run and machine."""
    return int(stem) if stem.isdigit() else zlib.crc32(stem.encode("utf-8")) & 0x7FFFFFFF


def write_results(path, results, facts=None):
    """Write a COCO results list as JSON, atomically, creating the folder;
    with `facts` (a dict about the model that made it, see
    write_results_facts), the facts file beside it too."""
    path = Path(path)
    make_dirs(path.parent)
    data = json.dumps(results, separators=(",", ":")).encode("utf-8")
    write_atomic(path, data)
    if facts is not None:
        write_results_facts(path, hashlib.sha256(data).hexdigest(), facts)


# A COCO results file must stay a plain list, so what is known about the model
# that made it (whether its weights are random) goes into a small file beside
# it: save/results.json -> save/results.model.json. It names the results
# file's SHA-256, so that it is not believed about another results file put
# in the same place later.
RESULTS_FACTS_SUFFIX = ".model.json"


def results_facts_path(results):
    """The facts file of a results JSON: <stem>.model.json beside it."""
    results = Path(results)
    stem = results.stem if results.suffix.lower() == ".json" else results.name
    return results.with_name(stem + RESULTS_FACTS_SUFFIX)


def write_results_facts(results, digest, facts):
    """Write the facts file of `results` (whose bytes have SHA-256 `digest`):
    `facts` ({"model": name, RANDOM_WEIGHTS_FIELD: bool, ...}) with the
    results file's name and digest. Returns its path."""
    out = results_facts_path(results)
    doc = {"results": Path(results).name, "results_sha256": digest, **facts}
    write_atomic(out, (json.dumps(doc, indent=1) + "\n").encode("utf-8"))
    return out


def read_results_facts(results):
    """The facts written beside a results JSON, or {} where there is no
    facts file, it cannot be read, or it belongs to other contents."""
    path = results_facts_path(results)
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
        h = hashlib.sha256()
        with open(results, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    except (OSError, ValueError):
        return {}
    if not isinstance(facts, dict) or facts.get("results_sha256") != h.hexdigest():
        logger.debug(f"{path}: not about the contents of {results}; ignored")
        return {}
    return facts


def load_results(path):
    """Read a COCO results JSON file (a list of detections)."""
    data = load_json(path, "results file")
    if not isinstance(data, list):
        raise UserError(f"{path}: not a COCO results file (top level is not a list)")
    return data


def results_iou_type(results):
    """"keypoints" where the results carry keypoints (any entry has a
    'keypoints' field), else "bbox"."""
    return "keypoints" if any(isinstance(r, dict) and "keypoints" in r for r in results or ()) else "bbox"


def validate_results(results, source, image_ids, category_ids):
    """Raise UserError (naming `source`) unless every entry is a well-formed
    detection of a known image and category: a bbox detection, or, where any
    entry carries 'keypoints', a keypoint result (every entry then with
    NUM_JOINTS x [x, y, v] finite numbers, and a 'bbox' on every entry
    where the first has one, as pycocotools then uses them; with none on the
    first, COCOeval makes the boxes from the joints).
    Returns results_iou_type(results)."""
    if not results:
        raise UserError(f"{source}: no detections (empty results)")
    image_ids, category_ids = set(image_ids), set(category_ids)
    keypoints = results_iou_type(results) == "keypoints"
    # pycocotools' loadRes takes the boxes as given where the first entry has
    # one (upstream's files: all have), else makes every box from the joints.
    need_bbox = not keypoints or (isinstance(results[0], dict) and "bbox" in results[0])
    unknown_images = set()
    for i, det in enumerate(results):
        if not isinstance(det, dict):
            raise UserError(f"{source}: entry {i} is not an object")
        if not _is_int(det.get("image_id")):
            raise UserError(f"{source}: entry {i} has a missing or invalid 'image_id' ({det.get('image_id')!r})")
        if not _is_int(det.get("category_id")):
            raise UserError(f"{source}: entry {i} has a missing or invalid 'category_id' ({det.get('category_id')!r})")
        if keypoints:
            kps = det.get("keypoints")
            if not _is_keypoint_list(kps):
                got = f"{len(kps)} values" if isinstance(kps, list) else repr(kps)
                raise UserError(f"{source}: entry {i} has a missing or invalid 'keypoints' ({got}; want "
                                f"{KEYPOINT_VALUES} finite numbers, {NUM_JOINTS} x [x, y, v])")
        bbox = det.get("bbox")
        # A negative width or height is legal: upstream does not clamp the
        # size head, and such a box simply overlaps nothing.
        if (bbox is not None or need_bbox) and not (
                isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            raise UserError(f"{source}: entry {i} has a missing or invalid 'bbox' "
                            f"({bbox!r}; want [x, y, width, height] numbers)")
        if not _is_number(det.get("score")):
            raise UserError(f"{source}: entry {i} has a missing or invalid 'score' ({det.get('score')!r})")
        if det["image_id"] not in image_ids:
            unknown_images.add(det["image_id"])
        if det["category_id"] not in category_ids:
            raise UserError(f"{source}: entry {i} has category id {det['category_id']}, "
                            f"which the annotation file does not define")
    if unknown_images:
        first = ", ".join(map(str, sorted(unknown_images)[:5]))
        raise UserError(f"{source}: {len(unknown_images)} image id(s) not in the annotation file "
                        f"(e.g. {first}); results from another dataset or annotation file?")
    return "keypoints" if keypoints else "bbox"


def coco_from_dataset(data):
    """A pycocotools COCO object over an already-loaded dict (no re-read)."""
    from pycocotools.coco import COCO
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def per_class_ap(coco_eval):
    """AP (IoU, or for keypoints OKS, .50:.95, all areas, the most detections:
    100, keypoints 20) of each category id; NaN where the category has no
    ground truth in the evaluated images."""
    precision = coco_eval.eval["precision"]  # [iou, recall, class, area, maxdets]
    out = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[cat_id] = float(p.mean()) if p.size else float("nan")
    return out


def precision_recall_curves(coco_eval):
    """Precision at COCOeval's 101 recall points (all areas, the most
    detections: 100, keypoints 20), averaged over the categories with ground
    truth, at IoU 0.5, at IoU 0.75 and averaged over IoU 0.50:0.95 (for
    keypoints: the same OKS thresholds, under the same keys), from its
    accumulated precision array.
    Their means are AP50, AP75 and AP. Empty lists when no category has
    ground truth."""
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]  # [iou, recall, class]
    valid = (precision > -1).all(axis=(0, 1))  # classes with ground truth
    p = precision[:, :, valid]
    ious = np.asarray(coco_eval.params.iouThrs)

    def curve(rows):
        return [round(float(v), 5) for v in rows.mean(axis=(0, 2))] if p.shape[2] else []

    return {"recall": [round(float(r), 2) for r in coco_eval.params.recThrs],
            "iou50": curve(p[np.isclose(ious, 0.5)]),
            "iou75": curve(p[np.isclose(ious, 0.75)]),
            "iou50_95": curve(p)}


def evaluate_coco(annotations, results, img_ids=None, verbose=True, results_source="results",
                  annotations_source=None):
    """COCOeval of detections against ground truth: "bbox", or "keypoints"
    (OKS) where the results carry keypoints (results_iou_type).

    annotations: path of an instances (or, for keypoint results, a
    person_keypoints) JSON, a loaded dict, or a pycocotools COCO.
    results: path of a results JSON or a list of entries (not modified).
    img_ids: evaluate only these images (default: every annotated image, as
    upstream; images without detections count as missed). verbose logs
    pycocotools' summary, 12 lines for boxes, 10 for keypoints (its progress
    chatter is never shown). annotations_source, results_source: what errors
    call them (default: the path where one is given).

    Returns {"iou_type": "bbox" or "keypoints", the stats of
    stat_names(iou_type): "AP", ... (fractions 0..1; -1, as pycocotools
    reports it, where no ground truth falls in that area range),
    "per_class": {name: AP, or None where the class has no ground truth},
    "pr_curves": precision_recall_curves(...), "num_images": n,
    "max_dets": the detections per image COCOeval counts (100; keypoints 20)}.
    For keypoints the stats are AP, AP50, AP75, APm, APl, AR, AR50, AR75,
    ARm, ARl over OKS thresholds, and only the categories that list
    keypoints (person) are scored; the annotations must then carry keypoints
    (validate_keypoint_annotations), else a UserError naming the file.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if isinstance(annotations, COCO):
        gt = annotations
        annotations_source = annotations_source or "annotations"
        validate_annotations(gt.dataset, annotations_source, require_annotations=True)
    else:
        if isinstance(annotations, dict):
            data = annotations
            annotations_source = annotations_source or "annotations"
            validate_annotations(data, annotations_source, require_annotations=True)
        else:
            annotations_source = annotations_source or str(annotations)
            data = load_annotations(annotations, require_annotations=True)
        gt = coco_from_dataset(data)
    if isinstance(results, (str, Path)):
        results_source = str(results)
        results = load_results(results)
    iou_type = validate_results(results, results_source, gt.getImgIds(), gt.getCatIds())
    cat_ids = None
    if iou_type == "keypoints":
        cat_ids = validate_keypoint_annotations(gt.dataset, annotations_source)

    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds fields to the entries it is given: hand it copies.
        dt = gt.loadRes([dict(r) for r in results])
        coco_eval = COCOeval(gt, dt, iou_type)
        if img_ids is not None:
            coco_eval.params.imgIds = sorted(img_ids)
        if cat_ids is not None:
            coco_eval.params.catIds = sorted(cat_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()
    if verbose:
        logger.info(summary.getvalue().rstrip("\n"))
    metrics = {"iou_type": iou_type}
    metrics.update({name: float(v) for name, v in zip(stat_names(iou_type), coco_eval.stats)})
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    metrics["per_class"] = {names[cid]: (None if np.isnan(ap) else ap)
                            for cid, ap in per_class_ap(coco_eval).items()}
    metrics["pr_curves"] = precision_recall_curves(coco_eval)
    metrics["num_images"] = len(coco_eval.params.imgIds)
    metrics["max_dets"] = int(coco_eval.params.maxDets[-1])
    return metrics


PER_CLASS_TABLE = "per_class_ap.txt"


def write_per_class_table(per_class, folder, measure="IoU"):
    """The whole per-class AP table as FOLDER/per_class_ap.txt; returns its
    path. measure: "IoU", or "OKS" for keypoint AP."""
    path = Path(folder) / PER_CLASS_TABLE
    write_atomic(path, (format_per_class_table(per_class, measure) + "\n").encode("utf-8"))
    return path


def format_best_worst(per_class, n=5, measure="IoU"):
    """The n best and n worst classes by AP (all of them if there are at most
    2n), and how many have no ground truth in the evaluated images. measure:
    "IoU", or "OKS" for keypoint AP."""
    kind = ap_name(measure)
    scored = sorted(((ap, name) for name, ap in per_class.items() if ap is not None), key=lambda t: (-t[0], t[1]))
    if not scored:
        return f"{kind} per class: no class has ground truth in the evaluated images"
    width = max(len(name) for _, name in scored)
    rows = lambda part: [f"  {name:<{width}}  {100 * ap:6.2f}" for ap, name in part]  # noqa: E731
    if len(scored) <= 2 * n:
        lines = [f"{kind} per class ({measure} .50:.95), the {len(scored)} classes with ground truth:"] + rows(scored)
    else:
        lines = ([f"{kind} per class ({measure} .50:.95), best {n} of the {len(scored)} classes with ground truth:"]
                 + rows(scored[:n]) + [f"worst {n}:"] + rows(scored[-n:]))
    missing = len(per_class) - len(scored)
    if missing:
        lines.append(f"{missing} classes have no ground truth in the evaluated images")
    return "\n".join(lines)


def format_per_class_table(per_class, measure="IoU"):
    """Per-class AP table, best first; classes without ground truth listed
    last. measure: "IoU", or "OKS" for keypoint AP."""
    scored = sorted(((ap, name) for name, ap in per_class.items() if ap is not None), key=lambda t: (-t[0], t[1]))
    width = max([len(n) for _, n in scored] + [5])
    kind = ap_name(measure)
    lines = [f"{'class':<{width}}  {kind} ({measure} .50:.95)"]
    lines += [f"{name:<{width}}  {100 * ap:6.2f}" for ap, name in scored]
    missing = sorted(name for name, ap in per_class.items() if ap is None)
    if missing:
        lines.append(f"no ground truth in the evaluated images, skipped ({len(missing)}): " + ", ".join(missing))
    return "\n".join(lines)
