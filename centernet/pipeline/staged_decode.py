"""The staged recipe's decoding (CenterNet_postprocess_s1.py): ais_bench's
output bins of every image -> COCO results entries, through the predictor's
Decoder, the one the streaming and Ray paths use. A multi_pose model's six
outputs (<stem>_0 .. _5.bin) give COCO keypoint results.
"""
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from centernet.constants import DOWN_RATIO, HEADS, INPUT_SIZE, K, POSE_CHANNELS, POSE_HEADS
from centernet.core.transforms import test_geometry
from centernet.errors import UserError
from centernet.io.binio import output_bin_path, read_bin
from centernet.io.coco import stable_image_id
from centernet.io.meta import meta_entries
from centernet.pipeline.predictor import Decoder, batches_by_shape

NUM_OUTPUTS = len(HEADS)  # hm, wh, reg


@dataclass
class ImageToDecode:
    """What decoding needs of one image: its bin stem, COCO id and geometry."""
    stem: str
    image_id: int
    center: tuple
    scale: object  # a number (fixed mode) or (sx, sy) (keep-resolution mode)
    out_hw: tuple  # output map (height, width)


def images_from_annotations(data, input_size=(INPUT_SIZE, INPUT_SIZE)):
    """One ImageToDecode per image of a COCO dict, geometry from its width and
    height (fixed-resolution mode; no image is read)."""
    out = []
    for img in data["images"]:
        center, scale, (in_h, in_w) = test_geometry(img["height"], img["width"], input_size)
        out.append(ImageToDecode(Path(img["file_name"]).stem, img["id"], tuple(map(float, center)),
                                 scale, (in_h // DOWN_RATIO, in_w // DOWN_RATIO)))
    return out


def images_from_meta(meta, annotations=None, source="meta.json"):
    """One ImageToDecode per image of a preprocessing meta.json dict. Image ids
    come from the annotations' file names where given, else stable_image_id."""
    ids = {}
    if annotations is not None:
        ids = {Path(img["file_name"]).stem: img["id"] for img in annotations["images"]}
    out = []
    for name, entry in meta_entries(meta, source).items():
        stem = Path(name).stem
        in_h, in_w = entry.input_size
        out.append(ImageToDecode(stem, ids.get(stem, stable_image_id(stem)), entry.center, entry.scale,
                                 (in_h // DOWN_RATIO, in_w // DOWN_RATIO)))
    if not out:
        raise UserError(f"{source}: no images listed")
    return out


def bins_task(bin_dir):
    """"multi_pose" where the folder holds a model's sixth output
    (<stem>_5.bin: hp_offset), else "ctdet" (three outputs)."""
    return "multi_pose" if next(Path(bin_dir).glob(f"*_{len(POSE_HEADS) - 1}.bin"), None) else "ctdet"


def num_outputs(task):
    return len(POSE_HEADS) if task == "multi_pose" else NUM_OUTPUTS


def split_missing(bin_dir, images, task="ctdet"):
    """(images whose output bins all exist, images missing any)."""
    present, missing = [], []
    for im in images:
        ok = all(output_bin_path(bin_dir, im.stem, i).is_file() for i in range(num_outputs(task)))
        (present if ok else missing).append(im)
    return present, missing


def hm_channels(bin_dir, image):
    """The model's class count as `image`'s output bins show it: the
    channels of <stem>_0.bin (hm), where <stem>_1.bin (wh) confirms the
    output map's size; None where the sizes do not tell."""
    h, w = image.out_hw
    plane = 4 * h * w  # float32 bytes of one channel
    try:
        hm_bytes = output_bin_path(bin_dir, image.stem, 0).stat().st_size
        wh_bytes = output_bin_path(bin_dir, image.stem, 1).stat().st_size
    except OSError:
        return None
    if wh_bytes != 2 * plane or not hm_bytes or hm_bytes % plane:
        return None
    return hm_bytes // plane


def _read_into(path, out):
    """Fill `out` from a raw float32 file of exactly out.nbytes bytes (read
    straight into the array: no fresh multi-MB allocation per file)."""
    try:
        with open(path, "rb") as f:
            got = f.readinto(memoryview(out).cast("B"))
            extra = f.read(1)
    except FileNotFoundError:
        got, extra = -1, b""
    if got != out.nbytes or extra:
        read_bin(path, out.shape)  # raises binio's one-line error naming the file and sizes
        raise UserError(f"{path}: changed while being read")


def _read_batch(bin_dir, batch, buffers):
    """Read the outputs (hm, wh, reg; multi_pose's six) of each image of
    `batch` into the first len(batch) rows of `buffers` ((B,C,H,W) each);
    returns those rows."""
    views = [buf[:len(batch)] for buf in buffers]
    for j, im in enumerate(batch):
        for i, view in enumerate(views):
            _read_into(output_bin_path(bin_dir, im.stem, i), view[j])
    return views


def check_hm_kind(hm, hm_is_heat, source):
    """One-line error when the hm read does not fit what decoding was told:
    a heatmap must lie in [0, 1]; raw logits of a trained network never do
    (the background is strongly negative)."""
    lo, hi = float(hm.min()), float(hm.max())
    if hm_is_heat and not (lo >= 0 and hi <= 1):
        raise UserError(f"{source}: hm runs from {lo:.3g} to {hi:.3g}, so it holds raw logits, but it was to be "
                        f"decoded as the flip test's averaged heatmap (meta.json written with --flip, or --flip "
                        f"given); was the model exported without --flip?")
    if not hm_is_heat and lo >= 0 and hi <= 1:
        raise UserError(f"{source}: every hm value lies in [0, 1], so it holds the averaged heatmap of a model "
                        f"exported with --flip, not raw logits; decode with --flip (or preprocess with --flip "
                        f"so that meta.json says so)")


def decode_bins_to_coco(bin_dir, images, category_ids, K=K, batch_size=8, progress=True,
                        hm_is_heat=False, upstream_rounding=False, task="ctdet"):
    """Decode `<stem>_0/1/2.bin` of every ImageToDecode in bin_dir into COCO
    results entries (K per image, full-precision scores unless
    upstream_rounding); task "multi_pose": `<stem>_0 .. _5.bin` into COCO
    keypoint results (category_ids: the person category's id). hm_is_heat:
    the bins come from a model exported with the flip test (hm, and hm_hp,
    already averaged after the sigmoid). Images of equal output size are
    decoded together; the next batch is read in a background thread while
    this one decodes."""
    num_classes = len(category_ids)
    pose = task == "multi_pose"
    channels = [POSE_CHANNELS[h] for h in POSE_HEADS] if pose else [num_classes, 2, 2]
    # Images of one size decode together; the results keep the given order.
    order = sorted(range(len(images)), key=lambda n: images[n].out_hw)
    batches = list(batches_by_shape([images[n] for n in order], lambda im: im.out_hw, batch_size))
    decoder = Decoder(num_classes, K, numpy_flip=False, hm_is_heat=hm_is_heat, task=task)
    # Two sets of batch buffers: the reader thread fills one while the
    # other is decoded. Reused, because fresh arrays of this size cost more
    # in page faults than reading the files does.
    buffer_sets = [{}, {}]

    def read(b):
        batch, slot = batches[b], buffer_sets[b % 2]
        h, w = batch[0].out_hw
        if (h, w) not in slot:
            slot.clear()
            slot[(h, w)] = [np.empty((batch_size, ch, h, w), np.float32) for ch in channels]
        return _read_batch(bin_dir, batch, slot[(h, w)])

    per_image = []  # in `order`
    with ThreadPoolExecutor(1) as reader, \
            tqdm(total=len(images), desc="decode", unit="img", disable=not progress, file=sys.stderr) as bar:
        pending = reader.submit(read, 0) if batches else None
        for b, batch in enumerate(batches):
            outputs = pending.result()
            if b + 1 < len(batches):  # into the other buffer set, whose batch b - 1 is done
                pending = reader.submit(read, b + 1)
            for i, im in enumerate(batch):
                check_hm_kind(outputs[0][i], hm_is_heat, output_bin_path(bin_dir, im.stem, 0))
            found = decoder.decode(outputs, [(im.center, im.scale, im.out_hw) for im in batch])
            per_image += [dets.to_coco(im.image_id, category_ids, upstream_rounding) for im, dets in zip(batch, found)]
            bar.update(len(batch))
    results = [None] * len(images)
    for k, n in enumerate(order):
        results[n] = per_image[k]
    return [entry for entries in results for entry in entries]
