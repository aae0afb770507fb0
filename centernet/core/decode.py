"""Raw network outputs -> detections on the image (upstream: src/lib/models/decode.py
ctdet_decode, src/lib/utils/post_process.py ctdet_post_process).

decode_ctdet restates upstream's ctdet_decode in numpy over a batch: sigmoid,
3x3 peak suppression, top K, sub-pixel offsets and sizes, boxes on the output
map. map_boxes_to_image undoes the test transform. decode_bins_to_coco runs
both over a folder of ais_bench output bins and yields COCO results entries.
"""
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from centernet.io.binio import output_bin_path, read_bin
from centernet.io.coco import stable_image_id
from centernet.errors import UserError
from centernet.core.transforms import DOWN_RATIO, INPUT_SIZE, get_affine_transform, test_geometry, transform_points

NUM_OUTPUTS = 3  # hm, wh, reg


def sigmoid(x):
    """float32 1 / (1 + exp(-x)), as torch computes it (saturates to 0 and 1)."""
    out = np.negative(x, dtype=np.float32)
    with np.errstate(over="ignore"):  # exp(-x) = inf for x < -88 gives 0, as in torch
        np.exp(out, out=out)
    out += 1
    return np.reciprocal(out, out=out)


def max_pool3x3(x):
    """3x3 max pool, stride 1, over the last two axes; the border behaves as
    padding with -inf (as torch's max_pool2d with padding 1)."""
    rows = x.copy()
    np.maximum(rows[..., 1:, :], x[..., :-1, :], out=rows[..., 1:, :])
    np.maximum(rows[..., :-1, :], x[..., 1:, :], out=rows[..., :-1, :])
    pooled = rows.copy()
    np.maximum(pooled[..., :, 1:], rows[..., :, :-1], out=pooled[..., :, 1:])
    np.maximum(pooled[..., :, :-1], rows[..., :, 1:], out=pooled[..., :, :-1])
    return pooled


def as_heat(x):
    """The activation of an hm that is already a heatmap (the flip test's
    sigmoid average): a float32 copy, so callers may overwrite it."""
    return np.array(x, dtype=np.float32)


CLASS_BLOCK = 8  # classes per step: 8x128x128 float32 (512 KiB) stays in cache


def _peaks(hm_img, act=sigmoid):
    """Flat indices (ascending) and scores of the nonzero entries of
    heat * (heat == maxpool3x3(heat)) for one image's (C,H,W) heatmap,
    heat = act(hm), worked through in cache-sized blocks of classes."""
    c, h, w = hm_img.shape
    idx, val = [], []
    for c0 in range(0, c, CLASS_BLOCK):
        heat = act(hm_img[c0:c0 + CLASS_BLOCK])
        keep = heat == max_pool3x3(heat)
        keep &= heat > 0
        nz = np.flatnonzero(keep)
        idx.append(nz + c0 * h * w)
        val.append(heat.reshape(-1)[nz])
    return np.concatenate(idx), np.concatenate(val)


def _top_k(indices, values, K, size):
    """The K best (value desc, then index asc) of candidates with ascending
    indices; padded with zero scores at the lowest other indices when there
    are fewer than K (upstream's top K then returns suppressed zeros too)."""
    m = values.size
    if m > 64 * K:
        # Cheap lower bound of the K-th largest value: the K-th largest of a
        # strided sample (the full set has at least K values >= it). Keeps
        # the exact selection below small, and avoids np.partition's slow
        # path on inputs with long runs of equal values.
        sample = values[::m // (16 * K)]
        bound = -np.partition(-sample, K - 1)[K - 1]
        sel = np.flatnonzero(values >= bound)
        indices, values, m = indices[sel], values[sel], sel.size
    if m > K:
        t = -np.partition(-values, K - 1)[K - 1]  # the K-th largest value
        above = np.flatnonzero(values > t)
        ties = np.flatnonzero(values == t)[:K - above.size]  # lowest indices win ties
        sel = np.concatenate([above, ties])
        indices, values = indices[sel], values[sel]
    elif m < K:
        pad = np.setdiff1d(np.arange(min(K + m, size)), indices)[:K - m]
        indices = np.concatenate([indices, pad])
        values = np.concatenate([values, np.zeros(pad.size, np.float32)])
    order = np.lexsort((indices, -values))
    return indices[order], values[order]


def _peak_test(flat, shape, cand, act=sigmoid):
    """The candidates (flat indices into a (C,H,W) heatmap) that are peaks,
    and their scores: same activation, same 3x3 equality test as _peaks."""
    _, h, w = shape
    y, x = np.divmod(cand % (h * w), w)
    score = act(flat[cand])
    best = score.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                inside = (y + dy >= 0) & (y + dy < h) & (x + dx >= 0) & (x + dx < w)
                # a neighbour outside the map stands in as the pixel itself,
                # which cannot change the max (like -inf padding)
                np.maximum(best, act(flat[np.where(inside, cand + dy * w + dx, cand)]), out=best)
    keep = (score == best) & (score > 0)
    return cand[keep], score[keep]


SAMPLE_STEP = 97       # stride of the sample that picks the threshold (prime: no aliasing with rows)
CANDIDATES_PER_K = 64  # aim for this many candidate pixels per wanted detection


def _top_k_thresholded(hm_img, K, act=sigmoid):
    """Top K of one image looking only at pixels whose logit is above a
    threshold, or None where that cannot be shown to give the exact answer.

    The threshold comes from a strided sample. The candidates' peaks are
    the answer when there are at least K of them and the K-th score beats
    act(threshold): every pixel below the threshold scores at most that
    (the activation is monotone).
    Otherwise the threshold is lowered, and after a few tries the caller
    falls back to the full map.
    """
    flat = hm_img.reshape(-1)
    n = flat.size
    sample = flat[::SAMPLE_STEP]
    q = max(1, CANDIDATES_PER_K * K // SAMPLE_STEP)
    while 8 * q * SAMPLE_STEP < n and q <= sample.size:  # give up once candidates approach n / 8
        theta = -np.partition(-sample, q - 1)[q - 1]
        cand = np.flatnonzero(flat >= theta)
        if cand.size * 8 >= n:
            return None
        idx, val = _peak_test(flat, hm_img.shape, cand, act)
        if idx.size >= K:
            idx, val = _top_k(idx, val, K, n)
            if val[-1] > act(np.array([theta], np.float32))[0]:
                return idx, val
        q *= 8
    return None


def decode_ctdet(hm, wh, reg, K=100, hm_is_heat=False):
    """Decode raw outputs of a batch: hm (N,C,H,W), wh and reg (N,2,H,W).
    hm_is_heat: hm is already a heatmap in [0, 1] (the flip test averages
    after the sigmoid), so no sigmoid is applied.

    Returns scores (N,K) float32 (descending), classes (N,K) int64 (0..C-1)
    and boxes (N,K,4) float32 (x1, y1, x2, y2) on the output map.

    Top K over all classes at once equals upstream's top K per class followed
    by top K overall: an entry among the best K overall has fewer than K
    better entries in its own class. Equal scores (in practice only
    suppressed zeros) go to the lower class, then row, then column.
    """
    hm = np.asarray(hm, dtype=np.float32)
    wh = np.asarray(wh, dtype=np.float32)
    reg = np.asarray(reg, dtype=np.float32)
    n, c, h, w = hm.shape
    if wh.shape != (n, 2, h, w) or reg.shape != (n, 2, h, w):
        raise ValueError(f"wh {wh.shape} and reg {reg.shape} must be {(n, 2, h, w)} to match hm {hm.shape}")
    if not 0 < K <= h * w:
        raise ValueError(f"K={K} must be between 1 and H*W={h * w}")
    act = as_heat if hm_is_heat else sigmoid
    top = np.empty((n, K), np.int64)
    scores = np.empty((n, K), np.float32)
    for i in range(n):
        found = _top_k_thresholded(hm[i], K, act)
        top[i], scores[i] = found if found is not None else _top_k(*_peaks(hm[i], act), K, c * h * w)

    classes, pix = np.divmod(top, h * w)
    ys, xs = np.divmod(pix, w)
    batch = np.arange(n)[:, None]
    off = reg.reshape(n, 2, -1)
    size = wh.reshape(n, 2, -1)
    cx = xs.astype(np.float32) + off[batch, 0, pix]
    cy = ys.astype(np.float32) + off[batch, 1, pix]
    half_w = size[batch, 0, pix] / 2
    half_h = size[batch, 1, pix] / 2
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)
    return scores, classes, boxes


def map_boxes_to_image(boxes, center, scale, out_size):
    """Boxes (...,4) on the output map -> image pixels (float64), through the
    inverse affine of the test transform; out_size = (out_w, out_h)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    trans = get_affine_transform(center, scale, out_size, inverse=True)
    corners = transform_points(boxes.reshape(-1, 2), trans)
    return corners.reshape(boxes.shape)


def decode_to_image(hm, wh, reg, geometries, K=100, hm_is_heat=False):
    """Decode a batch (decode_ctdet) and map each image's boxes back onto that
    image. geometries[i] = (center, scale, (out_h, out_w)) of image i's test
    transform. Returns [(scores (K,), classes (K,), boxes (K,4) x1, y1, x2, y2
    in image pixels)] per image."""
    return detections_to_images(*decode_ctdet(hm, wh, reg, K=K, hm_is_heat=hm_is_heat), geometries)


def detections_to_images(scores, classes, boxes, geometries):
    """decode_ctdet's result for a batch (boxes on the output map) -> per
    image (scores, classes, boxes in image pixels); geometries as in decode_to_image."""
    return [(scores[i], classes[i], map_boxes_to_image(boxes[i], center, scale, (out_w, out_h)))
            for i, (center, scale, (out_h, out_w)) in enumerate(geometries)]


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
    for name, entry in sorted(meta.get("images", {}).items()):
        try:
            in_h, in_w = entry["input_size"]
            scale = entry["scale"]
            scale = float(scale) if np.ndim(scale) == 0 else tuple(map(float, scale))
            center = tuple(map(float, entry["center"]))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{source}: entry for {name} lacks a valid center, scale or input_size") from None
        stem = Path(name).stem
        out.append(ImageToDecode(stem, ids.get(stem, stable_image_id(stem)), center, scale,
                                 (int(in_h) // DOWN_RATIO, int(in_w) // DOWN_RATIO)))
    if not out:
        raise UserError(f"{source}: no images listed")
    return out


def split_missing(bin_dir, images):
    """(images whose three output bins all exist, images missing any)."""
    present, missing = [], []
    for im in images:
        ok = all(output_bin_path(bin_dir, im.stem, i).is_file() for i in range(NUM_OUTPUTS))
        (present if ok else missing).append(im)
    return present, missing


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
    """Read hm, wh, reg of each image of `batch` into the first len(batch)
    rows of `buffers` ((B,C,H,W), (B,2,H,W), (B,2,H,W)); returns those rows."""
    views = [buf[:len(batch)] for buf in buffers]
    for j, im in enumerate(batch):
        for i, view in enumerate(views):
            _read_into(output_bin_path(bin_dir, im.stem, i), view[j])
    return views


def _batches(images, batch_size):
    """Consecutive runs of images with the same output size, at most batch_size long."""
    batch = []
    for im in images:
        if batch and (len(batch) == batch_size or im.out_hw != batch[0].out_hw):
            yield batch
            batch = []
        batch.append(im)
    if batch:
        yield batch


def _round2(values):
    """Upstream's float("{:.2f}".format(v)) of every value (coco.py convert_eval_format)."""
    return [float(f"{v:.2f}") for v in values]


def detections_to_coco(image_id, scores, classes, boxes, category_ids, upstream_rounding=False):
    """COCO results entries of one image; boxes (K,4) x1,y1,x2,y2 on the image.

    upstream_rounding: as upstream's results JSON, from which its published
    AP was computed: boxes as float32, width = x2 - x1 in float32, then the
    four numbers and the score rounded to 2 decimals. Default: full precision.
    """
    cat = np.asarray(category_ids)[classes].tolist()
    if upstream_rounding:
        b32 = np.asarray(boxes, dtype=np.float32)
        xywh = np.concatenate([b32[:, :2], b32[:, 2:] - b32[:, :2]], axis=1)
        return [{"image_id": image_id, "category_id": c, "bbox": _round2(b), "score": float(f"{s:.2f}")}
                for c, b, s in zip(cat, xywh.tolist(), np.asarray(scores, np.float32).tolist())]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
    return [{"image_id": image_id, "category_id": c, "bbox": b, "score": s}
            for c, b, s in zip(cat, xywh, scores.astype(np.float64).tolist())]


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


def decode_bins_to_coco(bin_dir, images, category_ids, K=100, batch_size=8, progress=True,
                        hm_is_heat=False, upstream_rounding=False):
    """Decode `<stem>_0/1/2.bin` of every ImageToDecode in bin_dir into COCO
    results entries (K per image, full-precision scores unless
    upstream_rounding). hm_is_heat: the bins come from a model exported with
    the flip test (hm already averaged after the sigmoid). Images of equal
    output size are decoded together; the next batch is read in a background
    thread while this one decodes."""
    num_classes = len(category_ids)
    # Images of one size decode together; the results keep the given order.
    order = sorted(range(len(images)), key=lambda n: images[n].out_hw)
    batches = list(_batches([images[n] for n in order], batch_size))
    # Two sets of batch buffers: the reader thread fills one while the
    # other is decoded. Reused, because fresh arrays of this size cost more
    # in page faults than reading the files does.
    buffer_sets = [{}, {}]

    def read(b):
        batch, slot = batches[b], buffer_sets[b % 2]
        h, w = batch[0].out_hw
        if (h, w) not in slot:
            slot.clear()
            slot[(h, w)] = [np.empty((batch_size, ch, h, w), np.float32) for ch in (num_classes, 2, 2)]
        return _read_batch(bin_dir, batch, slot[(h, w)])

    per_image = []  # in `order`
    with ThreadPoolExecutor(1) as reader, \
            tqdm(total=len(images), desc="decode", unit="img", disable=not progress, file=sys.stderr) as bar:
        pending = reader.submit(read, 0) if batches else None
        for b, batch in enumerate(batches):
            hm, wh, reg = pending.result()
            if b + 1 < len(batches):  # into the other buffer set, whose batch b - 1 is done
                pending = reader.submit(read, b + 1)
            for i, im in enumerate(batch):
                check_hm_kind(hm[i], hm_is_heat, output_bin_path(bin_dir, im.stem, 0))
            # a tiny image's output map (keep resolution: 8x8 at least) may hold fewer than K positions
            scores, classes, boxes = decode_ctdet(hm, wh, reg, min(K, hm.shape[2] * hm.shape[3]),
                                                  hm_is_heat=hm_is_heat)
            for i, im in enumerate(batch):
                out_h, out_w = im.out_hw
                img_boxes = map_boxes_to_image(boxes[i], im.center, im.scale, (out_w, out_h))
                per_image.append(detections_to_coco(im.image_id, scores[i], classes[i], img_boxes, category_ids,
                                                    upstream_rounding))
            bar.update(len(batch))
    results = [None] * len(images)
    for k, n in enumerate(order):
        results[n] = per_image[k]
    return [entry for entries in results for entry in entries]
