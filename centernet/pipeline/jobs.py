"""What a run over many images is for, independent of how it is distributed:
the images to run (from a COCO annotation file, or every image of a folder),
what each image's detections become (COCO results entries, or the demo's
detections.json entries), and how the finished blocks are put together into
the output file. The streaming evaluation and the Ray path take the same
Job; only the loop that feeds the predictor differs.
"""
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from centernet.constants import RANDOM_WEIGHTS_FIELD, VIS_THRESH
from centernet.core.transforms import clip_box
from centernet.errors import UserError
from centernet.io.binio import make_dirs, write_atomic_chunks
from centernet.io.coco import (COCO_CATEGORIES, class_category_ids, is_keypoint_dataset, load_annotations,
                               stable_image_id, write_results_facts)
from centernet.io.media import detections_header, join_location, list_image_files, write_detections_json


@dataclass(frozen=True)
class PlannedImage:
    """One image of a run: its file name, where to read it, its COCO id and,
    where the annotations give it, its size (for ordering by input size)."""
    name: str
    location: str
    image_id: int
    height: int = None
    width: int = None


@dataclass
class Labels:
    """The model's classes: a name and a COCO category id per channel of hm."""
    names: list
    category_ids: list

    @classmethod
    def for_model(cls, num_classes, names=None, model_names=None):
        """Channel j's name: `names` (--names FILE) where given, else the
        names the model records (ModelFacts.class_names), else COCO's for an
        80-class model. Category ids are COCO's for 80 classes (channel j is
        the j-th smallest), else 1..C."""
        coco = len(COCO_CATEGORIES)
        if names is None and model_names is not None:
            names = model_names
        if names is None:
            if num_classes != coco:
                raise UserError(f"the model has {num_classes} classes, not COCO's {coco}, and records no class "
                                "names; give --names FILE")
            names = [name for _, name, _ in COCO_CATEGORIES]
        elif len(names) != num_classes:
            raise UserError(f"names: {len(names)} names, the model has {num_classes} classes "
                            "(one name per line, in the model's class order)")
        ids = [cid for cid, _, _ in COCO_CATEGORIES] if num_classes == coco else list(range(1, num_classes + 1))
        return cls(list(names), ids)


def detections_entry(detections, labels, thresh, height, width):
    """The detections at or above `thresh` as JSON-ready dicts, in the given
    order; boxes x1, y1, x2, y2 in pixels, clipped to the image; a
    multi_pose model's 17 keypoints [x, y] each (as decoded, not clipped).
    Also returns the indices kept."""
    keep = np.flatnonzero(detections.scores >= thresh)
    out = []
    for i in keep:
        c = int(detections.classes[i])
        entry = {"box": [round(v, 2) for v in clip_box(detections.boxes[i], height, width)],
                 "class": labels.names[c], "category_id": labels.category_ids[c],
                 "score": round(float(detections.scores[i]), 4)}
        if detections.joints is not None:
            entry["keypoints"] = [[round(float(x), 2), round(float(y), 2)] for x, y in detections.joints[i]]
        out.append(entry)
    return out, keep


@dataclass
class EvaluationJob:
    """Detect on every annotated image (the first `limit` by file name) and
    write the COCO results JSON."""
    annotation_file: str
    images_dir: str
    limit: int = None
    upstream_rounding: bool = False
    images: list = field(init=False)
    category_ids: list = field(init=False)
    keypoints: bool = field(init=False)  # the annotations carry keypoints (a multi_pose model's ground truth)

    def __post_init__(self):
        data = load_annotations(self.annotation_file)
        # Class j is the j-th smallest category id of the file, whatever the
        # ids and however many; fit_model checks the count against the model.
        self.category_ids = class_category_ids(data, num_classes=None, source=str(self.annotation_file))
        self.keypoints = is_keypoint_dataset(data)
        chosen = sorted(data["images"], key=lambda img: Path(img["file_name"]).stem)[:self.limit]
        if not chosen:
            raise UserError(f"{self.annotation_file}: no images to evaluate")
        self.images = [PlannedImage(img["file_name"], join_location(self.images_dir, img["file_name"]), img["id"],
                                    img["height"], img["width"]) for img in chosen]

    @property
    def num_classes(self):
        return len(self.category_ids)

    def fit_model(self, model_name, num_classes, model_names=None, task="ctdet"):
        """Before any inference: one line naming the model and the file when
        the model's classes are not the file's categories, one for one, or
        a multi_pose model's file has no keypoints to score."""
        if task == "multi_pose" and not self.keypoints:
            raise UserError(f"{model_name}: a multi_pose (human pose) model, but {self.annotation_file} has no "
                            "keypoint annotations; evaluate it on person_keypoints_val2017.json")
        if num_classes != self.num_classes:
            raise UserError(f"{model_name}: the model has {num_classes} classes, but {self.annotation_file} has "
                            f"{self.num_classes} categories; evaluate it on an annotation file of its own classes")

    @property
    def key(self):
        """What finished blocks depend on, besides the model and the mode."""
        return {"task": "evaluate", "category_ids": self.category_ids,
                "upstream_rounding": bool(self.upstream_rounding)}

    def to_entries(self, image, detections, height, width):
        return detections.to_coco(image.image_id, self.category_ids, self.upstream_rounding)

    def write(self, output, parts, model_name, mode_name, random_weights=False):
        """The results file from the blocks' entries, in order: a JSON list;
        and beside it its facts file (io.coco.write_results_facts: the model,
        whether its weights are random)."""
        digest = hashlib.sha256()

        def chunks():
            for chunk in _results_chunks(parts):
                digest.update(chunk)
                yield chunk
        make_dirs(Path(output).parent)
        write_atomic_chunks(output, chunks())
        write_results_facts(output, digest.hexdigest(), {"model": str(model_name),
                                                         RANDOM_WEIGHTS_FIELD: bool(random_weights)})


def _results_chunks(parts):
    yield b"["
    first = True
    for part in parts:
        if part["entries"]:
            text = json.dumps(part["entries"], separators=(",", ":"))[1:-1]
            yield (text if first else "," + text).encode("utf-8")
            first = False
    yield b"]"


@dataclass
class AnnotationJob:
    """Detect on every image of a folder (or URI prefix) with no ground
    truth and write detections.json, CenterNet_demo.py's format: per image
    its file, width, height and detections at or above `vis_thresh`, best
    first, in file name order."""
    images_dir: str
    num_classes: int = None  # None: the model's (fit_model)
    vis_thresh: float = VIS_THRESH
    limit: int = None
    names: list = None
    images: list = field(init=False)
    labels: Labels = field(init=False)

    def __post_init__(self):
        if not 0.0 <= self.vis_thresh <= 1.0:
            raise UserError(f"--vis-thresh {self.vis_thresh}: must be between 0 and 1")
        self.labels = None if self.num_classes is None else Labels.for_model(self.num_classes, self.names)
        self.images = [PlannedImage(name, location, stable_image_id(Path(name).stem))
                       for name, location in list_image_files(self.images_dir, self.limit)]

    def fit_model(self, model_name, num_classes, model_names=None, task="ctdet"):
        """Before any inference: the labels of the model's classes, named by
        --names, else by the model itself, else COCO's (Labels.for_model)."""
        if self.num_classes is not None and num_classes != self.num_classes:
            raise UserError(f"{model_name}: the model has {num_classes} classes, but {self.num_classes} are expected")
        self.num_classes = num_classes
        self.labels = Labels.for_model(num_classes, self.names, model_names)

    @property
    def category_ids(self):
        return self.labels.category_ids

    @property
    def key(self):
        return {"task": "annotate", "vis_thresh": float(self.vis_thresh),
                "names": None if self.labels is None else self.labels.names}

    def to_entries(self, image, detections, height, width):
        found, _ = detections_entry(detections.best_first(), self.labels, float(self.vis_thresh), height, width)
        return [{"file": image.location, "width": width, "height": height, "detections": found}]

    def write(self, output, parts, model_name, mode_name, random_weights=False):
        def entries():
            for part in parts:
                yield from part["entries"]
        make_dirs(Path(output).parent)
        write_detections_json(output, detections_header(model_name, mode_name, float(self.vis_thresh), random_weights),
                              entries())


def fit_job(job, predictor, model_name):
    """Fit a job to the predictor's model before any inference: its class
    count checked (an evaluation) or its labels settled (an annotation)."""
    job.fit_model(model_name, predictor.num_classes, predictor.facts.class_names, predictor.decoder.task)


def mode_text(mode):
    """A test mode as detections.json names it: CenterNet_demo.py's words
    ("fixed 512x512", "keep resolution"), then the flip test and scales."""
    parts = ["keep resolution" if mode.keep_res else "fixed {}x{}".format(*mode.input_size)]
    if mode.flip:
        parts.append("flip")
    if tuple(mode.scales) != (1.0,):
        parts.append("scales " + ",".join(f"{t:g}" for t in mode.scales))
    return " + ".join(parts)


def blocks_of(images, block_size):
    return [images[i:i + block_size] for i in range(0, len(images), block_size)]


def run_key(model, backend, predictor, k, job_key, digest=None):
    """What a run's finished blocks depend on: the model's contents, the
    backend, the settled mode and K, and the job's own settings. The same
    for Ray and the one-machine path, so either resumes the other's blocks."""
    if digest is None:
        h = hashlib.sha256()
        with open(model, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        digest = h.hexdigest()
    return {"model_sha256": digest, "backend": backend, "mode": predictor.mode.name,
            "flip_in_graph": predictor.mode.flip and not predictor.numpy_flip, "k": k, **job_key}
