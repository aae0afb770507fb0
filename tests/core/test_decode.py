"""decode_ctdet against two independent statements of upstream's ctdet_decode,
box mapping by hand, and a perfect-model round trip through s1 and s2."""
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from centernet.constants import RANDOM_WEIGHTS_NOTE
from centernet.core.decode import _peaks, _top_k, _top_k_thresholded, decode_ctdet, detections_to_coco, map_boxes_to_image, max_pool3x3, sigmoid
from centernet.pipeline.staged_decode import check_hm_kind
from centernet.errors import UserError
from centernet.io.synthetic import write_perfect_model_bins
from conftest import assert_one_line_error

SCORE_TOL = 1e-6  # float32 sigmoid vs float64 / torch
BOX_TOL = 1e-4    # output-map pixels


def plain_decode(hm, wh, reg, K):
    """One image, written out the long way: sigmoid; a pixel is a peak if no
    pixel of its 3x3 neighbourhood (clipped at the border) is larger; top K
    peaks per class, then top K of those; offsets and sizes at the peak."""
    C, H, W = hm.shape
    heat = 1 / (1 + np.exp(-hm.astype(np.float64)))
    per_class = []
    for c in range(C):
        peaks = []
        for y in range(H):
            for x in range(W):
                neighbours = [heat[c, yy, xx] for yy in range(y - 1, y + 2) for xx in range(x - 1, x + 2)
                              if 0 <= yy < H and 0 <= xx < W]
                if heat[c, y, x] >= max(neighbours):
                    peaks.append((heat[c, y, x], c, y, x))
        per_class += sorted(peaks, reverse=True)[:K]
    dets = []
    for score, c, y, x in sorted(per_class, reverse=True)[:K]:
        cx, cy = x + reg[0, y, x], y + reg[1, y, x]
        w, h = wh[0, y, x], wh[1, y, x]
        dets.append((score, c, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    return dets


def torch_ctdet_decode(hm, wh, reg, K, heat=False):
    """Upstream's ctdet_decode restated with torch ops (sigmoid first, as
    detectors/ctdet.py does; with heat=True hm is already the heatmap, as
    after the flip test's average)."""
    heat = torch.from_numpy(hm) if heat else torch.from_numpy(hm).sigmoid()
    wh, reg = torch.from_numpy(wh), torch.from_numpy(reg)
    b, c, h, w = heat.shape
    hmax = F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * (hmax == heat).float()
    scores, inds = torch.topk(heat.view(b, c, -1), K)
    scores, ind = torch.topk(scores.view(b, -1), K)
    classes = ind // K
    inds = inds.view(b, -1).gather(1, ind)
    ys, xs = (inds // w).float(), (inds % w).float()
    gather = lambda m: m.view(b, 2, -1).gather(2, inds[:, None].expand(b, 2, K))  # noqa: E731
    off, size = gather(reg), gather(wh)
    xs, ys = xs + off[:, 0], ys + off[:, 1]
    boxes = torch.stack([xs - size[:, 0] / 2, ys - size[:, 1] / 2, xs + size[:, 0] / 2, ys + size[:, 1] / 2], -1)
    return scores.numpy(), classes.numpy(), boxes.numpy()


def assert_same_detections(scores, classes, boxes, ref_scores, ref_classes, ref_boxes):
    """Same K detections of one image. Compared as sets (sorted by class,
    then box), since scores one float32 step apart may swap places between
    float64, torch and numpy sigmoids; our own order must be descending."""
    assert np.all(np.diff(scores) <= 0)
    ours = np.lexsort((boxes[:, 1], boxes[:, 0], classes))
    theirs = np.lexsort((ref_boxes[:, 1], ref_boxes[:, 0], ref_classes))
    np.testing.assert_array_equal(classes[ours], ref_classes[theirs])
    np.testing.assert_allclose(scores[ours], ref_scores[theirs], rtol=0, atol=SCORE_TOL)
    np.testing.assert_allclose(boxes[ours], ref_boxes[theirs], rtol=0, atol=BOX_TOL)


def random_maps(rng, n, c, h, w):
    hm = rng.normal(-2, 2, (n, c, h, w)).astype(np.float32)  # continuous: no ties
    wh = rng.uniform(0, 30, (n, 2, h, w)).astype(np.float32)
    reg = rng.uniform(0, 1, (n, 2, h, w)).astype(np.float32)
    return hm, wh, reg


def test_max_pool_matches_torch_including_borders():
    x = np.random.default_rng(0).normal(size=(2, 3, 7, 9)).astype(np.float32)
    expected = F.max_pool2d(torch.from_numpy(x), 3, stride=1, padding=1).numpy()
    np.testing.assert_array_equal(max_pool3x3(x), expected)


def test_decode_matches_plain_per_pixel_decoder():
    hm, wh, reg = random_maps(np.random.default_rng(1), 2, 80, 16, 20)
    scores, classes, boxes = decode_ctdet(hm, wh, reg, K=100)
    assert scores.shape == (2, 100) and classes.shape == (2, 100) and boxes.shape == (2, 100, 4)
    for i in range(2):
        ref = plain_decode(hm[i], wh[i], reg[i], K=100)
        assert len(ref) == 100 and ref[-1][0] > 0.01  # enough real peaks: no zero padding involved
        assert_same_detections(scores[i], classes[i], boxes[i], np.array([d[0] for d in ref]),
                               np.array([d[1] for d in ref]), np.array([d[2] for d in ref]))


@pytest.mark.parametrize("shape", [(3, 80, 16, 20), (1, 80, 32, 24)])
def test_decode_matches_torch_restatement_of_upstream(shape):
    hm, wh, reg = random_maps(np.random.default_rng(2), *shape)
    got = decode_ctdet(hm, wh, reg, K=100)
    ref = torch_ctdet_decode(hm, wh, reg, K=100)
    for i in range(shape[0]):
        assert_same_detections(*(a[i] for a in got), *(a[i] for a in ref))


def smooth_maps(rng, c, h, w):
    """Heatmap logits like a trained model's: a smooth low background with
    a few bumps (rather than independent noise)."""
    import cv2
    noise = rng.standard_normal((c, h, w)).astype(np.float32)
    hm = np.stack([cv2.GaussianBlur(ch, (0, 0), 2.0) for ch in noise]) * 6 - 7
    for _ in range(6):
        ci, y, x = rng.integers(0, c), rng.integers(2, h - 2), rng.integers(2, w - 2)
        hm[ci, y - 1:y + 2, x - 1:x + 2] += 5
    return hm


def test_decode_on_model_like_maps_matches_torch():
    rng = np.random.default_rng(3)
    hm = np.stack([smooth_maps(rng, 80, 64, 48) for _ in range(2)])
    wh = rng.uniform(0, 30, (2, 2, 64, 48)).astype(np.float32)
    reg = rng.uniform(0, 1, (2, 2, 64, 48)).astype(np.float32)
    got, ref = decode_ctdet(hm, wh, reg, K=100), torch_ctdet_decode(hm, wh, reg, K=100)
    for i in range(2):
        assert_same_detections(*(a[i] for a in got), *(a[i] for a in ref))


def stable_top_k(hm_img, K):
    """The full-map answer stated with torch's max pool and a stable sort:
    flat indices and scores of the K best of heat * (heat == maxpool(heat)),
    score descending, equal scores by lowest index (suppressed pixels are
    zeros, so fewer than K peaks are padded with the lowest other indices)."""
    heat = torch.from_numpy(sigmoid(hm_img))
    heat = (heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)).reshape(-1).numpy()
    order = np.argsort(-heat, kind="stable")[:K]
    return order, heat[order]


# Which maps the thresholded search answers: it declines where the pixels at or above its
# threshold cannot be shown to hold the answer: a constant background (every pixel ties
# with the threshold) or a saturated block (the K-th score, 1.0, does not beat it).
ANSWERS = {"smooth": True, "noise": True, "quantised": True, "plateau": False, "few peaks": False,
           "saturated": False}


def _map_cases():
    rng = np.random.default_rng(4)
    shape = (80, 48, 40)
    plateau = np.full(shape, -8, np.float32)
    few = np.full(shape, -30, np.float32)
    few[3, 5, 5], few[7, 20, 30], few[79, 47, 39] = 1, 2, 3
    saturated = smooth_maps(rng, *shape)
    saturated[:, 10:30, 10:30] += 30  # a large block of sigmoid == 1.0: ties broken by index
    quantised = np.round(smooth_maps(rng, *shape) * 4) / 4  # fp16-like steps: equal neighbours
    return {"smooth": smooth_maps(rng, *shape), "noise": rng.normal(-6, 2, shape).astype(np.float32),
            "plateau": plateau, "few peaks": few, "saturated": saturated, "quantised": quantised}


@pytest.mark.parametrize("kind", list(_map_cases()))
def test_thresholded_search_equals_the_full_map_or_declines(kind):
    """The fast path (only pixels above a sampled threshold) answers on
    ordinary maps, with exactly the full-map answer, and declines (None) on
    the maps where it cannot show its answer exact; either way decode_ctdet
    gives the full-map answer."""
    hm = _map_cases()[kind]
    rng = np.random.default_rng(5)
    wh = rng.uniform(0, 30, (1, 2) + hm.shape[1:]).astype(np.float32)
    reg = rng.uniform(0, 1, (1, 2) + hm.shape[1:]).astype(np.float32)
    _, h, w = hm.shape
    for K in (1, 100):
        want_idx, want_scores = stable_top_k(hm, K)
        full = _top_k(*_peaks(hm), K, hm.size)
        np.testing.assert_array_equal(full[0], want_idx)
        np.testing.assert_array_equal(full[1], want_scores)
        fast = _top_k_thresholded(hm, K)
        if ANSWERS[kind]:
            assert fast is not None
            np.testing.assert_array_equal(fast[0], want_idx)
            np.testing.assert_array_equal(fast[1], want_scores)
        else:
            assert fast is None
        scores, classes, boxes = decode_ctdet(hm[None], wh, reg, K=K)
        np.testing.assert_array_equal(scores[0], want_scores)
        np.testing.assert_array_equal(classes[0], want_idx // (h * w))
        ys, xs = np.divmod(want_idx % (h * w), w)
        cx, cy = xs.astype(np.float32) + reg[0, 0, ys, xs], ys.astype(np.float32) + reg[0, 1, ys, xs]
        half_w, half_h = wh[0, 0, ys, xs] / 2, wh[0, 1, ys, xs] / 2
        np.testing.assert_array_equal(boxes[0], np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1))


def test_saturated_neighbours_are_both_peaks_as_in_upstream():
    # sigmoid(20) and sigmoid(25) are both 1.0 in float32, so upstream's
    # equality test keeps both; a comparison of raw logits would not.
    hm = np.full((1, 2, 6, 6), -5, np.float32)
    hm[0, 0, 2, 2], hm[0, 0, 2, 3] = 25.0, 20.0
    hm[0, 1, 4, 4] = 3.0
    wh = np.ones((1, 2, 6, 6), np.float32)
    reg = np.zeros((1, 2, 6, 6), np.float32)
    scores, classes, boxes = decode_ctdet(hm, wh, reg, K=3)
    assert scores[0, :2].tolist() == [1.0, 1.0]
    assert boxes[0, :2, 0].tolist() == [1.5, 2.5]  # x = 2 and 3, lower index first
    ref = torch_ctdet_decode(hm, wh, reg, K=3)
    np.testing.assert_allclose(scores, ref[0], rtol=0, atol=SCORE_TOL)


def test_fewer_peaks_than_k_pads_with_zero_scores():
    hm = np.full((1, 2, 8, 8), -30, np.float32)
    hm[0, 1, 5, 6] = 1.0
    hm[0, 0, 0, 0] = 0.5
    wh = np.zeros((1, 2, 8, 8), np.float32)
    reg = np.zeros((1, 2, 8, 8), np.float32)
    scores, classes, _ = decode_ctdet(hm, wh, reg, K=50)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    np.testing.assert_allclose(scores[0, :2], [sig(1.0), sig(0.5)], rtol=0, atol=SCORE_TOL)
    assert classes[0, :2].tolist() == [1, 0]
    # the rest: the constant background are plateau peaks (equal to their
    # pool), so upstream returns them too, all with score sigmoid(-30)
    np.testing.assert_allclose(scores[0, 2:], sig(-30.0), rtol=1e-5)


def test_constant_map_keeps_lowest_indices_and_is_fast():
    import time
    hm = np.full((2, 80, 128, 128), -8, np.float32)
    wh = np.zeros((2, 2, 128, 128), np.float32)
    reg = np.zeros((2, 2, 128, 128), np.float32)
    t = time.perf_counter()
    scores, classes, boxes = decode_ctdet(hm, wh, reg, K=100)
    assert time.perf_counter() - t < 2.0  # guards against np.partition's slow path on ties (~0.3 s/img)
    assert (classes == 0).all()
    np.testing.assert_array_equal(boxes[0, :, 0], np.tile(np.arange(128), 1)[:100])
    np.testing.assert_array_equal(boxes[0, :, 1], 0)


def test_map_boxes_to_image_by_hand():
    boxes = np.array([[0, 0, 128, 128], [10.25, 20.5, 30.75, 40.0], [-3, 64, 64, 140]], np.float32)
    for width, height in [(640, 480), (333, 500), (97, 161)]:
        s = max(width, height)
        got = map_boxes_to_image(boxes, (width / 2, height / 2), float(s), (128, 128))
        expected = np.array(boxes, np.float64) * (s / 128)
        expected[:, 0::2] += width / 2 - s / 2
        expected[:, 1::2] += height / 2 - s / 2
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # keep-resolution mode: a pure 4x scale and translation
    got = map_boxes_to_image(boxes, (320, 213), np.array([640, 448]), (160, 112))
    expected = np.array(boxes, np.float64) * 4
    expected[:, 1::2] += 213 - 224
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.fixture
def perfect_run(tmp_path, synthetic_coco):
    """A working directory with data/, a perfect model's output bins and s1 results."""
    shutil.copytree(synthetic_coco["root"], tmp_path / "data")
    write_perfect_model_bins(synthetic_coco["dataset"], tmp_path / "result" / "dumpout_bs1")
    return tmp_path


def test_perfect_model_round_trip_through_s1_and_s2(perfect_run, run_script, synthetic_coco):
    proc = run_script("CenterNet_postprocess_s1.py", "--bin_data_path=./result/dumpout_bs1/", "--dataset=./data",
                      cwd=perfect_run)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((perfect_run / "save" / "results.json").read_text())
    dataset = synthetic_coco["dataset"]
    ids = [img["id"] for img in dataset["images"]]
    assert sorted({r["image_id"] for r in results}) == sorted(ids)
    assert all(sum(r["image_id"] == i for r in results) == 100 for i in ids)
    assert {r["category_id"] for r in results} <= {c["id"] for c in dataset["categories"]}
    # each ground-truth box comes back (to float32 precision of the map) with a high score
    for ann in dataset["annotations"]:
        best = max((r for r in results if r["image_id"] == ann["image_id"]
                    and r["category_id"] == ann["category_id"]), key=lambda r: r["score"])
        assert best["score"] > 0.98
        np.testing.assert_allclose(best["bbox"], ann["bbox"], rtol=0, atol=1e-3)

    proc = run_script("CenterNet_postprocess_s2.py", "--dataset=./data", cwd=perfect_run)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((perfect_run / "run_eval_result" / "metrics.json").read_text())
    assert metrics["AP"] >= 0.99 and metrics["AP50"] >= 0.99
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in proc.stdout


def test_random_weights_travel_from_the_inference_summary_through_s1_to_s2(perfect_run, run_script):
    # CenterNet_infer.py's summary beside the bins says the model's weights are random
    summary = perfect_run / "result" / "dumpout_bs1_summary.json"
    summary.write_text(json.dumps({"model": "CenterNet.onnx", "random_weights": True}))
    s1 = run_script("CenterNet_postprocess_s1.py", "--bin_data_path=./result/dumpout_bs1/", "--dataset=./data",
                    cwd=perfect_run)
    assert s1.returncode == 0, s1.stderr
    assert s1.stdout.splitlines()[-1] == RANDOM_WEIGHTS_NOTE
    results = perfect_run / "save" / "results.json"
    assert isinstance(json.loads(results.read_text()), list)  # still a plain COCO results list
    facts = json.loads((perfect_run / "save" / "results.model.json").read_text())
    assert facts["random_weights"] is True and facts["model"] == "CenterNet.onnx"
    assert facts["results"] == "results.json"
    s2 = run_script("CenterNet_postprocess_s2.py", "--dataset=./data", cwd=perfect_run)
    assert s2.returncode == 0, s2.stderr
    assert RANDOM_WEIGHTS_NOTE in s2.stdout
    assert json.loads((perfect_run / "run_eval_result" / "metrics.json").read_text())["random_weights"] is True

    # the facts file is about those results only: another results file in their place is not labelled
    other = json.loads(results.read_text())[:-1]
    results.write_text(json.dumps(other))
    s2 = run_script("CenterNet_postprocess_s2.py", "--dataset=./data", cwd=perfect_run)
    assert s2.returncode == 0, s2.stderr
    assert "RANDOM WEIGHTS" not in s2.stdout
    assert json.loads((perfect_run / "run_eval_result" / "metrics.json").read_text())["random_weights"] is False

    # and bins of a model whose summary says nothing of random weights are not labelled either
    summary.write_text(json.dumps({"model": "CenterNet.onnx", "random_weights": False}))
    s1 = run_script("CenterNet_postprocess_s1.py", "--bin_data_path=./result/dumpout_bs1/", "--dataset=./data",
                    cwd=perfect_run)
    assert s1.returncode == 0 and "RANDOM WEIGHTS" not in s1.stdout
    assert json.loads((perfect_run / "save" / "results.model.json").read_text())["random_weights"] is False
    s2 = run_script("CenterNet_postprocess_s2.py", "--dataset=./data", cwd=perfect_run)
    assert s2.returncode == 0 and "RANDOM WEIGHTS" not in s2.stdout


def test_s1_with_meta_needs_no_annotation_file(perfect_run, run_script):
    proc = run_script("CenterNet_preprocess.py", "data/coco/val2017", "prep_dataset", "--workers", "1",
                      cwd=perfect_run)
    assert proc.returncode == 0, proc.stderr
    assert run_script("CenterNet_postprocess_s1.py", "--bin_data_path=result/dumpout_bs1",
                      "--dataset=./data", cwd=perfect_run).returncode == 0
    proc = run_script("CenterNet_postprocess_s1.py", "--bin_data_path=result/dumpout_bs1",
                      "--meta=prep_dataset/meta.json", "--annotations=nowhere.json", "--output=save/meta.json",
                      cwd=perfect_run)
    assert proc.returncode == 0, proc.stderr
    by_ann = json.loads((perfect_run / "save" / "results.json").read_text())
    by_meta = json.loads((perfect_run / "save" / "meta.json").read_text())
    key = lambda r: (r["image_id"], -r["score"], r["category_id"])  # noqa: E731
    by_ann, by_meta = sorted(by_ann, key=key), sorted(by_meta, key=key)
    assert [(r["image_id"], r["category_id"]) for r in by_ann] == [(r["image_id"], r["category_id"]) for r in by_meta]
    np.testing.assert_allclose([r["bbox"] for r in by_ann], [r["bbox"] for r in by_meta], rtol=0, atol=1e-9)


def test_s1_missing_and_broken_bins(perfect_run, run_script, synthetic_coco):
    stems = sorted(img["file_name"][:-4] for img in synthetic_coco["dataset"]["images"])
    bins = perfect_run / "result" / "dumpout_bs1"
    (bins / f"{stems[0]}_2.bin").unlink()
    proc = run_script("CenterNet_postprocess_s1.py", "--bin_data_path=result/dumpout_bs1", "--dataset=data",
                      cwd=perfect_run)
    assert_one_line_error(proc, "no output bins for 1 of 6 images", stems[0], "--allow-missing")
    proc = run_script("CenterNet_postprocess_s1.py", "--bin_data_path=result/dumpout_bs1", "--dataset=data",
                      "--allow-missing", "--no-progress", cwd=perfect_run)
    assert proc.returncode == 0 and "warning:" in proc.stderr
    results = json.loads((perfect_run / "save" / "results.json").read_text())
    assert len(results) == 500 and int(stems[0]) not in {r["image_id"] for r in results}
    proc = run_script("CenterNet_postprocess_s2.py", "--dataset=data", cwd=perfect_run)
    assert proc.returncode == 0 and "5 of the 6 evaluated images" in proc.stderr

    broken = bins / f"{stems[1]}_0.bin"
    broken.write_bytes(broken.read_bytes()[:4000])
    proc = run_script("CenterNet_postprocess_s1.py", "--bin_data_path=result/dumpout_bs1", "--dataset=data",
                      "--allow-missing", "--no-progress", cwd=perfect_run)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {broken.relative_to(perfect_run)}: 4000 bytes")

    assert_one_line_error(run_script("CenterNet_postprocess_s1.py", "--bin_data_path=nowhere", "--dataset=data",
                                     cwd=perfect_run), "nowhere")
    assert_one_line_error(run_script("CenterNet_postprocess_s1.py", "--bin_data_path=result/dumpout_bs1",
                                     "--dataset=elsewhere", cwd=perfect_run),
                          "elsewhere/coco/annotations/instances_val2017.json", "not found")


def test_decode_folder_batches_of_mixed_sizes(tmp_path):
    """decode_bins_to_coco over batches (reused buffers, several output sizes)
    gives what decoding each image alone gives."""
    from centernet.io.binio import output_bin_path, write_bin
    from centernet.pipeline.staged_decode import ImageToDecode, decode_bins_to_coco
    rng = np.random.default_rng(5)
    cats = list(range(1, 81))
    images, expected = [], []
    for n, (h, w) in enumerate([(32, 32), (32, 32), (24, 40), (32, 32), (24, 40)]):
        maps = random_maps(rng, 1, 80, h, w)
        for i, m in enumerate(maps):
            write_bin(output_bin_path(tmp_path, f"img{n}", i), m[0])
        im = ImageToDecode(f"img{n}", 100 + n, (w * 2.0, h * 2.0), (w * 4.0, h * 4.0), (h, w))
        images.append(im)
        scores, classes, boxes = decode_ctdet(*maps, K=20)
        img_boxes = map_boxes_to_image(boxes[0], im.center, im.scale, (w, h))
        for s, c, b in zip(scores[0], classes[0], img_boxes):
            expected.append((100 + n, cats[c], [b[0], b[1], b[2] - b[0], b[3] - b[1]], float(s)))
    got = decode_bins_to_coco(tmp_path, images, cats, K=20, batch_size=2, progress=False)
    assert [(r["image_id"], r["category_id"]) for r in got] == [e[:2] for e in expected]
    np.testing.assert_allclose([r["bbox"] for r in got], [e[2] for e in expected], rtol=0, atol=1e-9)
    assert [r["score"] for r in got] == [e[3] for e in expected]


def test_limited_run_is_evaluated_on_its_own_images(perfect_run, run_script, synthetic_coco):
    """preprocess --limit 3 -> s1 --meta -> s2 --meta: the three images alone."""
    proc = run_script("CenterNet_preprocess.py", "data/coco/val2017", "prep", "--limit", "3", "--workers", "1",
                      cwd=perfect_run)
    assert proc.returncode == 0, proc.stderr
    assert len(list((perfect_run / "prep").glob("*.bin"))) == 3
    proc = run_script("CenterNet_postprocess_s1.py", "--bin_data_path=result/dumpout_bs1", "--dataset=data",
                      "--meta", "prep/meta.json", cwd=perfect_run)
    assert proc.returncode == 0, proc.stderr
    first3 = sorted(img["file_name"] for img in synthetic_coco["dataset"]["images"])[:3]
    results = json.loads((perfect_run / "save" / "results.json").read_text())
    assert {r["image_id"] for r in results} == {int(name[:-4]) for name in first3}
    proc = run_script("CenterNet_postprocess_s2.py", "--dataset=data", "--meta", "prep/meta.json", cwd=perfect_run)
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    metrics = json.loads((perfect_run / "run_eval_result" / "metrics.json").read_text())
    assert metrics["num_images"] == 3 and metrics["AP"] >= 0.99
    # without --meta the other three images count as missed
    proc = run_script("CenterNet_postprocess_s2.py", "--dataset=data", cwd=perfect_run)
    assert proc.returncode == 0 and "3 of the 6 evaluated images" in proc.stderr
    assert json.loads((perfect_run / "run_eval_result" / "metrics.json").read_text())["AP"] < 0.9


def test_decode_of_a_heatmap():
    """hm_is_heat: no sigmoid. On sigmoid(hm) it is the logits' decoding, and
    on a flip-averaged heatmap it matches the torch restatement."""
    rng = np.random.default_rng(6)
    hm = np.stack([smooth_maps(rng, 80, 40, 48) for _ in range(2)])
    wh = rng.uniform(0, 30, (2, 2, 40, 48)).astype(np.float32)
    reg = rng.uniform(0, 1, (2, 2, 40, 48)).astype(np.float32)
    for a, b in zip(decode_ctdet(sigmoid(hm), wh, reg, hm_is_heat=True), decode_ctdet(hm, wh, reg)):
        np.testing.assert_array_equal(a, b)
    heat = (sigmoid(hm) + sigmoid(hm[:, :, :, ::-1] - 1)) / np.float32(2)
    got = decode_ctdet(heat, wh, reg, hm_is_heat=True)
    ref = torch_ctdet_decode(np.ascontiguousarray(heat), wh, reg, K=100, heat=True)
    for i in range(2):
        assert_same_detections(*(a[i] for a in got), *(a[i] for a in ref))


def test_hm_kind_check():
    logits = np.full((1, 80, 4, 4), -9.0, np.float32)
    logits[0, 3, 1, 1] = 2.0
    heat = sigmoid(logits)
    check_hm_kind(logits, False, "x_0.bin")
    check_hm_kind(heat, True, "x_0.bin")
    with pytest.raises(UserError, match="x_0.bin: hm runs from -9 to 2, so it holds raw logits"):
        check_hm_kind(logits, True, "x_0.bin")
    with pytest.raises(UserError, match="x_0.bin: every hm value lies in \\[0, 1\\].*--flip"):
        check_hm_kind(heat, False, "x_0.bin")


def test_upstream_rounding_by_hand():
    """Upstream's results JSON: boxes as float32, w = x2 - x1 and h = y2 - y1
    in float32, then every number as float("{:.2f}".format(v))."""
    boxes = np.array([[10.123456789, 20.005, 110.987654321, 70.0049], [-3.3333, 0.125, 1.0 / 3, 1e-9]])
    scores = np.array([0.87654321, 0.005], np.float32)
    got = detections_to_coco(7, scores, np.array([2, 0]), boxes, [1, 2, 3], upstream_rounding=True)
    f = np.float32
    for entry, (x1, y1, x2, y2), s, cat in zip(got, boxes, scores, [3, 1]):
        expected = [f(x1), f(y1), f(x2) - f(x1), f(y2) - f(y1)]
        assert entry == {"image_id": 7, "category_id": cat, "bbox": [float("{:.2f}".format(v)) for v in expected],
                         "score": float("{:.2f}".format(s))}
    assert got[0]["bbox"] == [10.12, 20.0, 100.86, 50.0] and got[0]["score"] == 0.88
    full = detections_to_coco(7, scores, np.array([2, 0]), boxes, [1, 2, 3])
    assert full[0]["bbox"][2] == boxes[0, 2] - boxes[0, 0] and full[0]["score"] == float(scores[0])
def test_s1_after_a_limited_preprocess_points_to_meta(perfect_run, run_script, synthetic_coco):
    """preprocess --limit 3, inference of those: s1 without --meta names the
    meta.json that lists exactly the images with outputs (not --allow-missing,
    which would score the other 3 as misses)."""
    proc = run_script("CenterNet_preprocess.py", "data/coco/val2017", "prep", "--limit", "3", "--workers", "1",
                      "--no-progress", cwd=perfect_run)
    assert proc.returncode == 0, proc.stderr
    stems = sorted(img["file_name"][:-4] for img in synthetic_coco["dataset"]["images"])
    for stem in stems[3:]:
        for i in range(3):
            (perfect_run / "result" / "dumpout_bs1" / f"{stem}_{i}.bin").unlink()
    # run_infer's summary names its input folder
    (perfect_run / "result" / "dumpout_bs1_summary.json").write_text(json.dumps({"input": "prep"}))
    args = ["--bin_data_path=result/dumpout_bs1", "--dataset=data", "--no-progress"]
    assert_one_line_error(run_script("CenterNet_postprocess_s1.py", *args, cwd=perfect_run),
                          "no output bins for 3 of 6 images",
                          "prep/meta.json lists exactly the 3 images that have outputs: pass --meta prep/meta.json")
    # the recipe's own folder name is found without a summary
    (perfect_run / "result" / "dumpout_bs1_summary.json").unlink()
    (perfect_run / "prep").rename(perfect_run / "prep_dataset")
    proc = run_script("CenterNet_postprocess_s1.py", *args, cwd=perfect_run)
    assert_one_line_error(proc, "pass --meta prep_dataset/meta.json")
    assert "--allow-missing" not in proc.stderr
    # a meta.json listing other images does not count: the old hint stays
    (perfect_run / "prep_dataset" / "meta.json").write_text(json.dumps({"images": {"other.jpg": {}}}))
    assert_one_line_error(run_script("CenterNet_postprocess_s1.py", *args, cwd=perfect_run),
                          "finish inference or pass --allow-missing")


@pytest.mark.slow
def test_s1_full_disk_is_one_line(perfect_run, run_script, small_disk_env):
    env = small_disk_env(perfect_run / "save", 10000)
    proc = run_script("CenterNet_postprocess_s1.py", "--bin_data_path=result/dumpout_bs1", "--dataset=data",
                      "--no-progress", cwd=perfect_run, env=env)
    assert_one_line_error(proc, "save/results.json: cannot write (No space left on device)")
    assert not list((perfect_run / "save").iterdir())  # no temp file left either
