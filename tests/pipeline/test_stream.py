"""The streaming evaluation gives the staged pipeline's detections exactly."""
import json
import shutil
import time

import cv2
import numpy as np
import pytest

from centernet.io.coco import class_category_ids, load_annotations
from centernet.core.decode import decode_ctdet, detections_to_coco, map_boxes_to_image, sigmoid
from centernet.pipeline.staged_decode import decode_bins_to_coco, images_from_meta
from centernet.core.modes import TestMode
from centernet.runtime.ort_session import make_session, run_session
from centernet.core.soft_nms import detections_by_class, merge_detections
from centernet.pipeline.staged_infer import run_folder
from centernet.io.meta import load_meta
from centernet.pipeline.preprocess import preprocess_folder
from centernet.pipeline.stream import stream_detections
from conftest import HANG, captured_logs, assert_one_line_error, ctrl_c, kill_group, start_script, wait_until_loaded


def test_stream_equals_staged(synthetic_coco, ctdet_onnx, tmp_path):
    ann = synthetic_coco["annotation_file"]
    data = load_annotations(ann)
    cats = class_category_ids(data)
    # Staged: bins on disk, ais_bench layout, s1's decoder.
    prep = tmp_path / "prep"
    preprocess_folder(synthetic_coco["images_dir"], prep, workers=1, progress=False)
    run_folder(ctdet_onnx, prep, tmp_path / "result", "dump", batchsize=2, threads=2, progress=False)
    images = images_from_meta(load_meta(prep / "meta.json"), data)
    staged = decode_bins_to_coco(tmp_path / "result" / "dump", images, cats, progress=False)
    # Streaming: same images, same batch size, nothing on disk.
    streamed, ids, errors, stats = stream_detections(ctdet_onnx, synthetic_coco["images_dir"], ann,
                                                     batchsize=2, threads=2, progress=False)
    assert not errors and sorted(ids) == sorted(im["id"] for im in data["images"])
    assert len(streamed) == 100 * len(ids)
    key = lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"])  # noqa: E731
    assert sorted(streamed, key=key) == sorted(staged, key=key)
    assert stats["end_to_end_fps"] > 0 and stats["fps"] > 0


def test_eval_script_limit_and_corrupt_image(synthetic_coco, ctdet_onnx, tmp_path, run_script):
    data_root = tmp_path / "data"
    shutil.copytree(synthetic_coco["root"], data_root)
    first = sorted((data_root / "coco" / "val2017").iterdir())[0]
    first.write_bytes(b"not a jpeg")
    r = run_script("CenterNet_eval.py", "--model", ctdet_onnx, "--dataset", data_root, "--limit", 2,
                   "--threads", 2, "--output", tmp_path / "res.json", "--resultfolder", tmp_path / "ev",
                   "--no-progress", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert f"{first}: cannot read or decode the image" in r.stderr and "Traceback" not in r.stderr
    results = json.loads((tmp_path / "res.json").read_text())
    assert len(results) == 100 and len({d["image_id"] for d in results}) == 1
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["num_images"] == 2  # the unreadable one counts, as missed
    assert (tmp_path / "ev" / "pr_curves.png").is_file() and (tmp_path / "ev" / "per_class_ap.png").is_file()


def test_eval_script_missing_annotations(ctdet_onnx, tmp_path, run_script):
    r = run_script("CenterNet_eval.py", "--model", ctdet_onnx, "--dataset", tmp_path / "nowhere", cwd=tmp_path)
    assert_one_line_error(r, "instances_val2017.json")


# --- upstream's test modes ---------------------------------------------------


# float32, as upstream's detector holds them (base_detector.py)
MEAN = np.array([0.40789654, 0.44719302, 0.47026115], np.float32)
STD = np.array([0.28863828, 0.27408164, 0.27809835], np.float32)


def by_detection(results):
    key = lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"])  # noqa: E731
    return sorted(results, key=key)


def hand_input(img, t, keep_res, fixed=512):
    """Upstream's pre_process for scale t written out: cv2.resize, then a
    pure translation (keep resolution) or scale fixed/max(h, w) of the
    ORIGINAL image about the resized centre (fixed mode). Returns the
    float32 input and the (center, scale, out_hw) decoding needs."""
    h, w = img.shape[:2]
    nh, nw = int(h * t), int(w * t)
    resized = cv2.resize(img, (nw, nh)) if (nh, nw) != (h, w) else img
    if keep_res:
        in_h, in_w = (nh | 31) + 1, (nw | 31) + 1
        center, scale = (nw // 2, nh // 2), np.array([in_w, in_h], np.float32)
        m = np.array([[1.0, 0, in_w / 2 - nw // 2], [0, 1.0, in_h / 2 - nh // 2]])
    else:
        in_h = in_w = fixed
        center, scale = (nw / 2, nh / 2), float(max(h, w))
        a = fixed / max(h, w)
        m = np.array([[a, 0, fixed / 2 - nw / 2 * a], [0, a, fixed / 2 - nh / 2 * a]])
    warped = cv2.warpAffine(resized, m, (in_w, in_h), flags=cv2.INTER_LINEAR)
    x = ((warped / 255.0 - MEAN) / STD).astype(np.float32).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(x), center, scale, (in_h // 4, in_w // 4)


def reference_detections(model, dataset, images_dir, keep_res=False, flip=False, scales=(1.0,), fixed=512,
                         rounding=False):
    """Each image on its own (batch 1) through the same session: hand-built inputs per
    scale; for the flip test, the input batched with its mirror and the
    sigmoid heatmaps and sizes averaged by hand; decoding; boxes mapped back
    and divided by the scale; with several scales, upstream's merge."""
    session = make_session(model, threads=2)
    cats = sorted(c["id"] for c in dataset["categories"])
    out = []
    for info in dataset["images"]:
        img = cv2.imread(str(images_dir / info["file_name"]), cv2.IMREAD_COLOR)
        per_scale = []
        for t in scales:
            x, center, scale, (oh, ow) = hand_input(img, t, keep_res, fixed)
            if flip:
                hm, wh, reg = run_session(session, np.concatenate([x, x[:, :, :, ::-1]]))
                heat = sigmoid(hm)
                hm = (heat[0:1] + heat[1:2, :, :, ::-1]) / np.float32(2)
                wh, reg = (wh[0:1] + wh[1:2, :, :, ::-1]) / np.float32(2), reg[0:1]
            else:
                hm, wh, reg = run_session(session, x)
            scores, classes, boxes = decode_ctdet(hm, wh, reg, hm_is_heat=flip)
            img_boxes = map_boxes_to_image(boxes[0], center, scale, (ow, oh))
            if len(scales) == 1:
                out += detections_to_coco(info["id"], scores[0], classes[0], img_boxes, cats, rounding)
            per_scale.append(detections_by_class(scores[0], classes[0], img_boxes, 80, scale=t))
        if len(scales) > 1:
            for j, rows in sorted(merge_detections(per_scale).items()):
                out += detections_to_coco(info["id"], rows[:, 4], np.full(len(rows), j), rows[:, :4], cats, rounding)
    return out


def test_keep_res_streamed_equals_staged(tiny_coco, ctdet_onnx_dynamic, tmp_path):
    """Keep resolution: the staged recipe (preprocess --keep-res, run_infer
    over bins of mixed sizes, s1 --meta) and the streaming eval give the same
    detections, bit for bit; equal sizes are batched together in both."""
    ann = tiny_coco["annotation_file"]
    data = load_annotations(ann)
    cats = class_category_ids(data)
    prep = tmp_path / "prep"
    preprocess_folder(tiny_coco["images_dir"], prep, workers=1, progress=False, keep_res=True)
    summary = run_folder(ctdet_onnx_dynamic, prep, tmp_path / "result", "dump", batchsize=2, threads=2,
                         progress=False)
    assert summary["images"] == 5 and summary["input_sizes"] == 3 and summary["batches"] == 3
    images = images_from_meta(load_meta(prep / "meta.json"), data)
    assert sorted({im.out_hw for im in images}) == [(16, 24), (16, 32), (24, 24)]
    staged = decode_bins_to_coco(tmp_path / "result" / "dump", images, cats, progress=False)
    streamed, ids, errors, stats = stream_detections(ctdet_onnx_dynamic, tiny_coco["images_dir"], ann,
                                                     batchsize=2, threads=2, progress=False,
                                                     mode=TestMode(keep_res=True))
    assert not errors and len(streamed) == 500
    assert stats["mode"] == "keep-res" and stats["input_sizes"] == 3 and stats["batches"] == 3
    assert by_detection(streamed) == by_detection(staged)


def test_keep_res_streamed_equals_hand_statement(tiny_coco, ctdet_onnx_dynamic):
    # Batch 1 on both sides: ONNX Runtime's last bits depend on the batch.
    streamed, _, errors, _ = stream_detections(ctdet_onnx_dynamic, tiny_coco["images_dir"],
                                               tiny_coco["annotation_file"], threads=2, progress=False,
                                               mode=TestMode(keep_res=True))
    ref = reference_detections(ctdet_onnx_dynamic, tiny_coco["dataset"], tiny_coco["images_dir"], keep_res=True)
    assert not errors
    assert_same(streamed, ref)


def assert_same(got, ref, box_tol=1e-4):
    """Same detections: ids, classes and scores exactly, boxes to box_tol
    pixels (the hand-built warp matrices agree with the library's to ~1e-9)."""
    got, ref = by_detection(got), by_detection(ref)
    assert [(r["image_id"], r["category_id"], r["score"]) for r in got] == \
        [(r["image_id"], r["category_id"], r["score"]) for r in ref]
    np.testing.assert_allclose([r["bbox"] for r in got], [r["bbox"] for r in ref], rtol=0, atol=box_tol)


def test_flip_streamed_equals_hand_flip_test(tiny_coco, ctdet_onnx_dynamic):
    streamed, _, errors, stats = stream_detections(ctdet_onnx_dynamic, tiny_coco["images_dir"],
                                                   tiny_coco["annotation_file"], threads=2, progress=False,
                                                   mode=TestMode(keep_res=True, flip=True))
    assert not errors and stats["mode"] == "keep-res + flip"
    ref = reference_detections(ctdet_onnx_dynamic, tiny_coco["dataset"], tiny_coco["images_dir"], keep_res=True,
                               flip=True)
    assert_same(streamed, ref)


@pytest.mark.parametrize("keep_res", [True, False])
def test_multi_scale_streamed_equals_hand_composition(tiny_coco, ctdet_onnx_dynamic, keep_res):
    """Scales (with flip): resize, transform of the resized size (fixed mode:
    s = max(h, w) of the original), boxes / t, merged with soft-NMS."""
    scales = (0.5, 1.0, 1.5)
    mode = TestMode(keep_res=keep_res, flip=True, scales=scales, input_size=(96, 96))
    streamed, _, errors, stats = stream_detections(ctdet_onnx_dynamic, tiny_coco["images_dir"],
                                                   tiny_coco["annotation_file"], threads=2, progress=False,
                                                   mode=mode, input_size=(96, 96))
    assert not errors and stats["inputs"] == 15
    ref = reference_detections(ctdet_onnx_dynamic, tiny_coco["dataset"], tiny_coco["images_dir"],
                               keep_res=keep_res, flip=True, scales=scales, fixed=96)
    assert_same(streamed, ref)
    per_image = np.bincount([r["image_id"] for r in streamed])
    assert per_image[per_image > 0].min() >= 100  # the top 100 per image, ties at the threshold kept


def test_flip_graph_staged_equals_streamed(tiny_coco, ctdet_onnx_flip_dynamic, tmp_path, run_script):
    """A model exported with --flip: staged (preprocess --keep-res --flip,
    run_infer, s1 --meta decoding hm as the averaged heatmap) equals the
    streaming eval with the same model, which also needs no --flip."""
    ann = tiny_coco["annotation_file"]
    prep = tmp_path / "prep"
    preprocess_folder(tiny_coco["images_dir"], prep, workers=1, progress=False, keep_res=True, flip_test=True)
    run_folder(ctdet_onnx_flip_dynamic, prep, tmp_path / "result", "dump", batchsize=2, threads=2, progress=False)
    r = run_script("CenterNet_postprocess_s1.py", "--bin_data_path", tmp_path / "result" / "dump",
                   "--annotations", ann, "--meta", prep / "meta.json", "--output", tmp_path / "s1.json",
                   "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "hm as flip-averaged heatmap" in r.stdout
    staged = json.loads((tmp_path / "s1.json").read_text())
    notes = []
    with captured_logs(notes):
        streamed, _, _, stats = stream_detections(ctdet_onnx_flip_dynamic, tiny_coco["images_dir"], ann,
                                                  batchsize=2, threads=2, progress=False,
                                                  mode=TestMode(keep_res=True))
    assert stats["mode"] == "keep-res + flip" and any("flip test in its graph" in n for n in notes)
    assert by_detection(streamed) == by_detection(staged)

    # Told the wrong kind of hm, s1 and run_infer refuse in one line.
    meta = json.loads((prep / "meta.json").read_text())
    meta["flip_test"] = False
    (prep / "meta.json").write_text(json.dumps(meta))
    r = run_script("CenterNet_postprocess_s1.py", "--bin_data_path", tmp_path / "result" / "dump",
                   "--annotations", ann, "--meta", prep / "meta.json", "--no-progress", cwd=tmp_path)
    assert_one_line_error(r, "every hm value lies in [0, 1]", "--flip")
    r = run_script("CenterNet_infer.py", "--model", ctdet_onnx_flip_dynamic, "--input", prep,
                   "--output", tmp_path / "again", cwd=tmp_path)
    assert_one_line_error(r, "has the flip test in its graph", "--flip")


def test_upstream_rounding_in_the_eval(tiny_coco, ctdet_onnx_dynamic, tmp_path, run_script):
    r = run_script("CenterNet_eval.py", "--model", ctdet_onnx_dynamic, "--dataset", tiny_coco["root"],
                   "--keep-res", "--upstream-rounding", "--limit", 2, "--threads", 2, "--no-progress",
                   "--output", tmp_path / "res.json", "--resultfolder", tmp_path / "ev", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mode: keep-res" in r.stdout
    results = json.loads((tmp_path / "res.json").read_text())
    assert len(results) == 200
    values = [v for d in results for v in d["bbox"] + [d["score"]]]
    assert all(v == float(f"{v:.2f}") for v in values)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["mode"] == "keep-res"


def test_a_fixed_size_model_cannot_keep_resolution(tiny_coco, ctdet_onnx, tmp_path, run_script):
    r = run_script("CenterNet_eval.py", "--model", ctdet_onnx, "--dataset", tiny_coco["root"], "--keep-res",
                   cwd=tmp_path)
    assert_one_line_error(r, "fixed 512x512 input", "CenterNet_pth2onnx.py", "--dynamic-size")
    r = run_script("CenterNet_eval.py", "--model", ctdet_onnx, "--dataset", tiny_coco["root"], "--scales", "0,1",
                   cwd=tmp_path)
    assert_one_line_error(r, "--scales 0,1")


def test_a_tiny_image_keeps_resolution_with_fewer_detections(tmp_path, ctdet_onnx_dynamic):
    """A 20x30 image has a 32x32 keep-resolution input: an 8x8 output map
    holds 64 positions, so it gets 64 detections, streamed and staged alike."""
    from centernet.io.synthetic import make_synthetic_coco
    info = make_synthetic_coco(tmp_path / "data", num_images=2, seed=3, image_sizes=[(30, 20), (64, 64)],
                               max_objects=1)
    streamed, _, errors, _ = stream_detections(ctdet_onnx_dynamic, info["images_dir"], info["annotation_file"],
                                               threads=2, progress=False, mode=TestMode(keep_res=True))
    data = load_annotations(info["annotation_file"])
    assert not errors and sorted(np.bincount([r["image_id"] for r in streamed])[[i["id"] for i in data["images"]]]) \
        == [64, 100]
    preprocess_folder(info["images_dir"], tmp_path / "prep", workers=1, progress=False, keep_res=True)
    run_folder(ctdet_onnx_dynamic, tmp_path / "prep", tmp_path / "out", "d", threads=2, progress=False)
    images = images_from_meta(load_meta(tmp_path / "prep" / "meta.json"), data)
    staged = decode_bins_to_coco(tmp_path / "out" / "d", images, class_category_ids(data), progress=False)
    assert by_detection(staged) == by_detection(streamed)
@pytest.mark.slow
def test_eval_ctrl_c_ends_quietly(synthetic_coco, ctdet_onnx, tmp_path):
    """Ctrl-C to the whole process group (the worker pool included) while the
    script loads, while its workers start, and while it infers (pressed twice):
    exit 130 and one line within seconds, no traceback, and either no results
    file or, once it is written, a message that says where it is (or, on a
    machine fast enough to have finished, exit 0 and no message)."""
    outcomes = []
    for delay, twice in ((0.0, False), (0.8, True), (2.0, False)):
        # Each try writes its own results file: a fast machine may finish one
        # try (exit 0, results written) and still be interrupted in the next.
        results = tmp_path / f"res_{delay}.json"
        args = ["--model", ctdet_onnx, "--dataset", synthetic_coco["root"], "--workers", 2, "--threads", 2,
                "--output", results, "--resultfolder", tmp_path / f"ev_{delay}", "--no-progress"]
        proc = start_script("CenterNet_eval.py", *args, cwd=tmp_path)
        wait_until_loaded(proc, "/cv2/")  # main() runs (it imports OpenCV)
        time.sleep(delay)
        ctrl_c(proc)
        if twice:
            time.sleep(0.1)
            ctrl_c(proc)
        try:
            out, err = proc.communicate(timeout=HANG)
        finally:
            kill_group(proc)
        outcomes.append(proc.returncode)
        if proc.returncode == 0 and delay > 0:
            assert not err, err
            continue
        assert proc.returncode == 130, (delay, proc.returncode, err)
        if results.exists():  # interrupted while scoring: the message says the detections are kept
            assert err.strip().splitlines() == [f"interrupted: the detections are in {results}; "
                                                f"CenterNet_postprocess_s2.py --results {results} evaluates them"]
            assert json.loads(results.read_text())  # complete, not half written
        else:  # before the first image, or while streaming: finished blocks are kept for a re-run
            lines = err.strip().splitlines()
            assert lines == ["interrupted: stopped before any image was finished"] or (
                len(lines) == 1 and lines[0].startswith("interrupted: 0 of 1 block(s) finished, kept in ")
                and lines[0].endswith("; run the same command again to go on from there")), err
    assert outcomes[0] == 130


def test_eval_checks_its_outputs_before_inference(synthetic_coco, ctdet_onnx, tmp_path, run_script):
    """An output folder that cannot be made is one line naming it, before any
    image is run: no blocks, no results."""
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    r = run_script("CenterNet_eval.py", "--model", ctdet_onnx, "--dataset", synthetic_coco["root"],
                   "--output", blocker / "results.json", "--resultfolder", tmp_path / "ev", "--threads", 1,
                   cwd=tmp_path)
    assert_one_line_error(r, str(blocker), "exists but is not a folder")
    assert not list(tmp_path.rglob("*.parts")) and not (tmp_path / "ev" / "metrics.json").exists()
    r = run_script("CenterNet_eval.py", "--model", ctdet_onnx, "--dataset", synthetic_coco["root"],
                   "--output", tmp_path / "res.json", "--resultfolder", blocker / "ev", "--threads", 1,
                   cwd=tmp_path)
    assert_one_line_error(r, str(blocker), "part of its path is a file")
    assert not (tmp_path / "res.json").exists() and not (tmp_path / "res.json.parts").exists()


def test_eval_of_random_weights_says_so_in_every_output(synthetic_coco, ctdet_onnx, ordinary_onnx, tmp_path,
                                                        run_script):
    from centernet.constants import RANDOM_WEIGHTS_NOTE
    for name, model, random_weights in (("random", ctdet_onnx, True), ("ordinary", ordinary_onnx, False)):
        out = tmp_path / name
        r = run_script("CenterNet_eval.py", "--model", model, "--dataset", synthetic_coco["root"], "--limit", 1,
                       "--threads", 2, "--workers", 1, "--output", out / "res.json", "--resultfolder", out / "ev",
                       "--no-progress", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert (RANDOM_WEIGHTS_NOTE in r.stdout) is random_weights and ("RANDOM" in r.stdout) is random_weights
        assert json.loads((out / "ev" / "metrics.json").read_text())["random_weights"] is random_weights
        assert json.loads((out / "ev" / "stream_summary.json").read_text())["random_weights"] is random_weights
        assert isinstance(json.loads((out / "res.json").read_text()), list)
        facts = json.loads((out / "res.model.json").read_text())  # what CenterNet_postprocess_s2.py reads
        assert facts["random_weights"] is random_weights and facts["model"] == str(model)
        # annotating (images without annotations): detections.json says so, and so does the summary
        r = run_script("CenterNet_eval.py", "--model", model, "--images", synthetic_coco["images_dir"], "--limit", 1,
                       "--threads", 2, "--workers", 1, "--output", out / "detections.json", "--no-progress",
                       cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert (RANDOM_WEIGHTS_NOTE in r.stdout) is random_weights
        assert json.loads((out / "detections.json").read_text())["random_weights"] is random_weights


def test_a_pool_whose_shutdown_deadlocks_has_its_workers_killed_and_the_run_goes_on():
    """After a Ctrl-C, multiprocessing's Pool.terminate() can wait forever on
    its task-handler thread (a queue lock left held when the workers died).
    _terminate gives it a bounded wait, then kills the workers itself."""
    import threading
    from centernet.pipeline.stream import _terminate

    class Worker:
        exitcode = None
        killed = False

        def kill(self):
            self.killed = True

    class DeadlockedPool:
        def __init__(self):
            self._pool = [Worker(), Worker()]
            self.never = threading.Event()

        def terminate(self):
            self.never.wait()  # what the real one does in that state

    pool = DeadlockedPool()
    _terminate(pool, wait_s=0.5)  # returns: the wait is bounded
    assert all(w.killed for w in pool._pool)
    pool.never.set()


def test_a_pool_that_shuts_down_is_left_to_do_so():
    import multiprocessing
    from centernet.pipeline.stream import _init_worker, _terminate
    pool = multiprocessing.get_context("spawn").Pool(1, initializer=_init_worker)
    workers = list(pool._pool)
    _terminate(pool)
    assert all(w.exitcode is not None for w in workers)  # terminate() ended them, and joined them
