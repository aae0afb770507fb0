"""CenterNet_demo.py and centernet.pipeline.demo: images, folders, a short video, the
.pth path with its export cache, bad inputs, and detections.json."""
import json
import re
import shutil

import cv2
import numpy as np
import onnx
import pytest
import torch

from centernet.io.coco import COCO_CATEGORIES
from centernet.core.modes import TestMode
from centernet.convert.cache import CACHE_KEY, cached_export, export_cache_path
from centernet.pipeline.demo import DemoModel, run_demo
from centernet.pipeline.predictor import Predictor, open_predictor
from centernet.runtime.ort_session import OrtSession
from centernet.errors import UserError
from centernet.runtime.ort_session import make_session
from centernet.pipeline.stream import stream_detections
from centernet.constants import RANDOM_WEIGHTS_NOTE
from centernet.report.visualize import BANNER_COLOUR, banner_height
from conftest import ROOT, assert_one_line_error, captured_logs, unmarked_onnx

SMALL = (128, 128)  # fixed input of the test model: fast, and real decoding (32x32 output map)
NAMES = [name for _, name, _ in COCO_CATEGORIES]
IDS = [cid for cid, _, _ in COCO_CATEGORIES]


def quiet(line):
    pass


def images_of(synthetic_coco):
    return sorted(synthetic_coco["images_dir"].iterdir())


@pytest.fixture(scope="module")
def first_pth_run(upstream_checkpoint, synthetic_coco, tmp_path_factory):
    """The demo on a .pth checkpoint the first time: it exports (at 128x128, to
    keep the tests fast) next to the checkpoint. Returns (checkpoint, log lines,
    run_demo's summary)."""
    folder = tmp_path_factory.mktemp("pth")
    pth = folder / "ctdet_coco_dla_2x.pth"
    shutil.copy(upstream_checkpoint, pth)
    logs = []
    with captured_logs(logs):
        summary = demo([images_of(synthetic_coco)[0]], pth, folder / "out", thresh=0.0, input_size=SMALL)
    return pth, logs, summary


@pytest.fixture(scope="module")
def small_onnx(first_pth_run):
    """The ONNX file that export left next to the checkpoint."""
    return export_cache_path(first_pth_run[0], dynamic_size=False, input_size=SMALL)


def demo(inputs, model, output, **kw):
    kw.setdefault("threads", 2)
    kw.setdefault("progress", False)
    return run_demo([str(p) for p in inputs], model, output=output, **kw)


def test_folder_and_file_detections_match_the_evaluation_pipeline(synthetic_coco, small_onnx, tmp_path):
    folder = synthetic_coco["images_dir"]
    files = images_of(synthetic_coco)
    out = tmp_path / "out"
    summary = demo([folder, files[0]], small_onnx, out, thresh=0.0)
    assert summary["images"] == len(files) + 1 and not summary["errors"]
    doc = json.loads((out / "detections.json").read_text())
    assert doc["mode"] == "fixed 128x128" and doc["vis_thresh"] == 0.0 and "clipped" in doc["box"]
    entries = doc["images"]
    assert [e["file"] for e in entries] == [str(p) for p in files] + [str(files[0])]
    # same names in the output folder; the second copy of a name is not overwritten
    stem = files[0].stem
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in files] + [f"{stem}-2.jpg",
                                                                                    "detections.json"])
    assert entries[-1]["output"] == str(out / f"{stem}-2.jpg")

    # The detections are the evaluation's: same geometry, decoder and class mapping
    # (boxes clipped to the image here), keyed by file name instead of image id.
    by_id = {}
    results, _, _, _ = stream_detections(small_onnx, folder, synthetic_coco["annotation_file"], threads=2,
                                         input_size=SMALL, progress=False)
    for r in results:
        by_id.setdefault(r["image_id"], []).append(r)
    ids = {img["file_name"]: img for img in synthetic_coco["dataset"]["images"]}
    for entry in entries[:-1]:
        img = ids[entry["file"].rsplit("/", 1)[1]]
        assert (entry["width"], entry["height"]) == (img["width"], img["height"])
        dets = entry["detections"]
        expected = by_id[img["id"]]
        assert len(dets) == len(expected) == 100  # threshold 0: all K
        for d, r in zip(dets, expected):
            assert d["score"] == pytest.approx(r["score"], abs=1e-4)
            assert d["category_id"] == r["category_id"] and d["class"] == NAMES[IDS.index(r["category_id"])]
            x, y, w, h = r["bbox"]
            x1, x2 = sorted((x, x + w))
            y1, y2 = sorted((y, y + h))
            clipped = [min(max(x1, 0), img["width"]), min(max(y1, 0), img["height"]),
                       min(max(x2, 0), img["width"]), min(max(y2, 0), img["height"])]
            assert d["box"] == pytest.approx(clipped, abs=0.01)
        assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
        drawn = cv2.imread(entry["output"])
        assert drawn.shape == (img["height"], img["width"], 3)
    assert entries[-1]["detections"] == entries[0]["detections"]


def test_threshold_keeps_the_top_of_the_same_list(synthetic_coco, small_onnx, tmp_path):
    image = images_of(synthetic_coco)[1]
    all_dets = demo([image], small_onnx, tmp_path / "a", thresh=0.0)["json"]
    all_dets = json.loads(all_dets.read_text())["images"][0]["detections"]
    # Halfway between the 3rd and 4th best distinct scores as written (4
    # decimals), so that rounding cannot put a score on the other side.
    distinct = sorted({d["score"] for d in all_dets})
    thresh = (distinct[-3] + distinct[-4]) / 2
    kept = json.loads(demo([image], small_onnx, tmp_path / "b", thresh=thresh)["json"].read_text())
    kept = kept["images"][0]["detections"]
    assert kept == [d for d in all_dets if d["score"] >= thresh] and len(kept) >= 3
    # nothing above the threshold: the copy is the image itself (PNG: lossless),
    # from a model with ordinary weights (random ones add their banner)
    png = tmp_path / "same.png"
    cv2.imwrite(str(png), cv2.imread(str(image)))
    out = demo([png], unmarked_onnx(small_onnx, tmp_path / "ordinary.onnx"), tmp_path / "c", thresh=1.0)["output"]
    assert not json.loads((out / "detections.json").read_text())["images"][0]["detections"]
    assert np.array_equal(cv2.imread(str(out / "same.png")), cv2.imread(str(png)))


def make_video(path, frames=5, size=(96, 64), fps=7.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 40 + 30 * i, np.uint8)
        x = 10 + 8 * i
        frame[20:50, x:x + 25] = rng.integers(0, 256, 3)
        writer.write(frame)
    writer.release()
    return path


def test_video_same_fps_size_and_frames(small_onnx, tmp_path):
    video = make_video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    summary = demo([video], small_onnx, out, thresh=0.0)
    assert summary["videos"] == 1 and not summary["errors"]
    result = out / "clip.mp4"
    cap = cv2.VideoCapture(str(result))
    assert cap.isOpened() and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(7.0)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 5 and frames[0].shape == (64, 96, 3)
    entries = json.loads((out / "detections.json").read_text())["images"]
    assert [e["frame"] for e in entries] == list(range(5))
    assert all(e["file"] == str(video) and e["output"] == str(result) and (e["width"], e["height"]) == (96, 64)
               and len(e["detections"]) == 100 for e in entries)
    assert not list(out.glob(".*tmp*"))


def red_fraction(pixels, tol=60):
    """The share of pixels near the banner's red."""
    return float((np.abs(pixels.astype(int) - BANNER_COLOUR).max(-1) <= tol).mean())


def test_random_weights_put_a_banner_on_the_picture_and_say_so(synthetic_coco, upstream_checkpoint,
                                                                 ordinary_checkpoint, tmp_path, run_script):
    png = tmp_path / "photo.png"  # lossless: the pictures can be compared pixel for pixel
    cv2.imwrite(str(png), cv2.imread(str(images_of(synthetic_coco)[0])))
    runs = {}
    for name, checkpoint in (("random", upstream_checkpoint), ("ordinary", ordinary_checkpoint)):
        r = run_script("CenterNet_demo.py", "--model", checkpoint, "--backend", "torch", "--input-size", *SMALL,
                       "--threads", 2, "--vis-thresh", 0.2, "--output", tmp_path / name, "--no-progress", png,
                       cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        runs[name] = (r.stdout, cv2.imread(str(tmp_path / name / "photo.png")),
                      json.loads((tmp_path / name / "detections.json").read_text()))
    (random_out, random_pic, random_doc), (plain_out, plain_pic, plain_doc) = runs["random"], runs["ordinary"]
    bar = banner_height(*random_pic.shape[:2])
    # the same weights, so the same boxes; the random ones' picture has the banner on top
    assert random_doc["images"][0]["detections"] == plain_doc["images"][0]["detections"]
    assert np.array_equal(random_pic[bar:], plain_pic[bar:])
    assert red_fraction(random_pic[:bar]) > 0.5 and red_fraction(plain_pic[:bar]) < 0.1
    assert not np.array_equal(random_pic[:bar], plain_pic[:bar])
    # detections.json and the printed summary say so
    assert random_doc["random_weights"] is True and plain_doc["random_weights"] is False
    assert RANDOM_WEIGHTS_NOTE in random_out and "RANDOM WEIGHTS" not in plain_out
    assert "annotated 1 image" in random_out.splitlines()[-2] and random_out.splitlines()[-1] == RANDOM_WEIGHTS_NOTE


def test_random_weights_banner_without_any_detection_and_on_video_frames(synthetic_coco, small_onnx, tmp_path):
    png = tmp_path / "same.png"
    cv2.imwrite(str(png), cv2.imread(str(images_of(synthetic_coco)[1])))
    summary = demo([png, make_video(tmp_path / "clip.mp4")], small_onnx, tmp_path / "out", thresh=1.0)
    assert summary["random_weights"] is True and summary["images"] == 1 and summary["videos"] == 1
    drawn, image = cv2.imread(str(tmp_path / "out" / "same.png")), cv2.imread(str(png))
    bar = banner_height(*image.shape[:2])
    assert np.array_equal(drawn[bar:], image[bar:]) and red_fraction(drawn[:bar]) > 0.5
    cap = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames += 1
        bar = banner_height(*frame.shape[:2])
        assert red_fraction(frame[:bar]) > 0.5 and red_fraction(frame[bar + 4:]) < 0.1  # mp4v blurs the edge
    cap.release()
    assert frames == 5


def test_bad_inputs_named_one_line_each_others_done(synthetic_coco, small_onnx, tmp_path, run_script):
    folder = tmp_path / "photos"
    folder.mkdir()
    good = images_of(synthetic_coco)[:2]
    for p in good:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, not listed")
    bad_video = tmp_path / "bad.mp4"
    bad_video.write_bytes(b"\x00" * 64)
    missing = tmp_path / "nowhere.jpg"
    out = tmp_path / "out"
    r = run_script("CenterNet_demo.py", "--model", small_onnx, folder, missing, bad_video,
                   "--output", out, "--threads", 2, "--no-progress", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 5, r.stderr
    for name in ("broken.jpg", "empty.png", "nowhere.jpg", "bad.mp4"):
        assert sum(name in ln for ln in errors) == 1, (name, errors)
    assert "4 input(s) skipped" in errors[-1]
    entries = json.loads((out / "detections.json").read_text())["images"]
    assert [e["file"].rsplit("/", 1)[1] for e in entries] == [p.name for p in good]
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in good] + ["detections.json"])
    # a line per image on the terminal, then where everything is
    for p in good:
        assert sum(ln.startswith(p.name) and "above 0.3" in ln for ln in r.stdout.splitlines()) == 1
    assert f"detections in {out / 'detections.json'}" in r.stdout


def test_keep_res_needs_a_dynamic_model(small_onnx, tmp_path, synthetic_coco, run_script):
    r = run_script("CenterNet_demo.py", "--model", small_onnx, images_of(synthetic_coco)[0], "--keep-res",
                   "--output", tmp_path / "o", cwd=tmp_path)
    assert_one_line_error(r, str(small_onnx), "fixed 128x128", "--keep-res",
                          "python CenterNet_pth2onnx.py", "--dynamic-size")


class RecordingSession(OrtSession):
    """An ONNX Runtime session that records the input shapes it is given."""

    def __init__(self, session):
        super().__init__(session)
        self.shapes = []

    def run(self, batch):
        self.shapes.append(batch.shape)
        return super().run(batch)


def Detector(session, keep_res=False, input_size=None, flip=False):
    """The demo's model on a session, in a test mode."""
    if not isinstance(session, OrtSession):
        session = OrtSession(session)
    mode = TestMode(keep_res, flip, (1.0,), tuple(input_size or (512, 512)))
    return DemoModel(Predictor(session, mode))


def test_pth_exports_once_and_reuses_while_unchanged(first_pth_run, synthetic_coco, tmp_path):
    pth, logs, first = first_pth_run
    cache = export_cache_path(pth, dynamic_size=False, input_size=SMALL)
    assert cache == pth.parent / "ctdet_coco_dla_2x.cache-128x128.onnx" and cache.is_file()
    assert any("exporting" in ln for ln in logs) and any("checked against PyTorch" in ln for ln in logs)
    meta = {p.key: p.value for p in onnx.load(str(cache)).metadata_props}
    assert len(meta[CACHE_KEY]) == 64 and meta["centernet.input"] == "128x128"
    stamp = cache.stat().st_mtime_ns
    image = images_of(synthetic_coco)[0]

    logs = []
    with captured_logs(logs):
        second = demo([image], pth, tmp_path / "b", thresh=0.0, input_size=SMALL)
    assert cache.stat().st_mtime_ns == stamp and not any("exporting" in ln for ln in logs)
    assert any("cached export" in ln for ln in logs)
    dets = [json.loads(s["json"].read_text())["images"][0]["detections"] for s in (first, second)]
    assert dets[0] == dets[1] and len(dets[0]) == 100

    # A changed checkpoint (same name, its cache beside it) is exported again,
    # and its detections differ.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy2(cache, other / cache.name)
    state = torch.load(pth, weights_only=True)
    state["state_dict"]["module.hm.2.bias"] += 0.5
    torch.save(state, other / pth.name)
    logs = []
    with captured_logs(logs):
        third = demo([image], other / pth.name, tmp_path / "c", thresh=0.0, input_size=SMALL)
    assert any("exporting again" in ln for ln in logs)
    new_meta = {p.key: p.value for p in onnx.load(str(other / cache.name)).metadata_props}
    assert new_meta[CACHE_KEY] != meta[CACHE_KEY]
    changed = json.loads(third["json"].read_text())["images"][0]["detections"]
    assert [d["score"] for d in changed] != [d["score"] for d in dets[0]]


def test_pth_keep_res_caches_a_dynamic_export_beside_the_fixed_one(first_pth_run, synthetic_coco):
    pth = first_pth_run[0]
    path = cached_export(pth, dynamic_size=True, input_size=(64, 96), threads=2)
    assert path == pth.parent / "ctdet_coco_dla_2x.cache-dynamic.onnx"
    assert export_cache_path(pth, False, SMALL).is_file()  # one file per form
    assert cached_export(pth, dynamic_size=True, input_size=(64, 96)) == path  # reused
    session = RecordingSession(make_session(path, threads=2))
    detector = Detector(session, keep_res=True)
    assert detector.mode == "keep resolution"
    for img in synthetic_coco["dataset"]["images"][:3]:
        image = cv2.imread(str(synthetic_coco["images_dir"] / img["file_name"]))
        scores, classes, boxes = detector.detect(image)
        h, w = image.shape[:2]
        # keep resolution: the image's own size, rounded up to a multiple of 32
        assert session.shapes[-1] == (1, 3, (h | 31) + 1, (w | 31) + 1)
        assert scores.shape == (100,) and boxes.shape == (100, 4)
    # the same dynamic model in fixed mode runs at 512x512 unless told otherwise
    fixed = Detector(session, keep_res=False, input_size=(64, 64))
    fixed.detect(image)
    assert session.shapes[-1] == (1, 3, 64, 64) and fixed.mode == "fixed 64x64"


def test_custom_names_and_their_errors(small_onnx, synthetic_coco, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("# my names\n" + "\n".join(f"thing {i}" for i in range(80)) + "\n\n")
    s = demo([images_of(synthetic_coco)[0]], small_onnx, tmp_path / "o", thresh=0.0, names_file=names)
    dets = json.loads(s["json"].read_text())["images"][0]["detections"]
    for d in dets:  # new names, COCO ids for the 80 channels
        assert d["class"] == f"thing {IDS.index(d['category_id'])}"
    names.write_text("cat\ndog\n")
    with pytest.raises(UserError, match="2 names, the model has 80 classes"):
        demo([images_of(synthetic_coco)[0]], small_onnx, tmp_path / "o", names_file=names)
    with pytest.raises(UserError, match="names file not found"):
        demo([images_of(synthetic_coco)[0]], small_onnx, tmp_path / "o", names_file=tmp_path / "none.txt")
    with pytest.raises(UserError, match="does not match"):
        open_predictor(small_onnx, TestMode(input_size=(256, 256)))


def test_output_into_an_input_folder_is_refused(synthetic_coco, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(synthetic_coco["images_dir"], folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(UserError, match="is an input folder"):
        demo([folder], "unused.onnx", folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_flip_export_is_decoded_as_a_heatmap(ctdet_onnx_flip_dynamic, tiny_coco):
    """An export with --flip outputs the averaged heatmap: the demo decodes it
    without a second sigmoid, as the streaming evaluation does."""
    detector = Detector(make_session(ctdet_onnx_flip_dynamic, threads=2), keep_res=True)
    assert detector.mode == "keep resolution + flip (in the model)"
    streamed, _, _, _ = stream_detections(ctdet_onnx_flip_dynamic, tiny_coco["images_dir"],
                                          tiny_coco["annotation_file"], threads=2, progress=False,
                                          mode=TestMode(keep_res=True))
    for img in tiny_coco["dataset"]["images"][:2]:
        scores, _, _ = detector.detect(cv2.imread(str(tiny_coco["images_dir"] / img["file_name"])))
        expected = sorted((r["score"] for r in streamed if r["image_id"] == img["id"]), reverse=True)
        assert scores.tolist() == expected


def test_flip_option_runs_the_flip_test_like_the_evaluation(ctdet_onnx_dynamic, tiny_coco):
    """--flip on a plain export: the image and its mirror in one batch,
    averaged as upstream's flip test: the streaming evaluation's detections."""
    detector = Detector(make_session(ctdet_onnx_dynamic, threads=2), keep_res=True, flip=True)
    assert detector.mode == "keep resolution + flip"
    streamed, _, _, _ = stream_detections(ctdet_onnx_dynamic, tiny_coco["images_dir"], tiny_coco["annotation_file"],
                                          threads=2, progress=False, mode=TestMode(keep_res=True, flip=True))
    plain = Detector(make_session(ctdet_onnx_dynamic, threads=2), keep_res=True)
    for img in tiny_coco["dataset"]["images"][:2]:
        image = cv2.imread(str(tiny_coco["images_dir"] / img["file_name"]))
        scores, _, _ = detector.detect(image)
        expected = sorted((r["score"] for r in streamed if r["image_id"] == img["id"]), reverse=True)
        assert scores.tolist() == expected
        assert scores.tolist() != plain.detect(image).scores.tolist()


def test_a_run_that_annotates_nothing_leaves_earlier_outputs_alone(small_onnx, synthetic_coco, tmp_path):
    out = tmp_path / "o"
    first = demo([images_of(synthetic_coco)[0]], small_onnx, out, thresh=0.0)
    before = first["json"].read_bytes()
    again = demo([tmp_path / "mistyped.jpg"], small_onnx, out, thresh=0.0)
    assert again["json"] is None and again["images"] == 0 and again["errors"]
    assert (out / "detections.json").read_bytes() == before


def test_detections_json_is_as_documented(small_onnx, synthetic_coco, tmp_path):
    """docs/demo.md's description of detections.json: an object whose
    `images` list holds one entry per image with the fields it names."""
    text = " ".join((ROOT / "docs" / "demo.md").read_text().split())
    described = text[text.index("- `detections.json`: an object whose `images` list holds"):]
    described = described[:described.index(", each")]
    fields = set(re.findall(r"`(\w+)`", described)) - {"detections.json", "images", "frame"}
    result = demo([images_of(synthetic_coco)[0]], small_onnx, tmp_path / "o", thresh=0.0)
    data = json.loads(result["json"].read_text())
    assert isinstance(data, dict) and isinstance(data["images"], list) and len(data["images"]) == 1
    assert set(data["images"][0]) == fields


def test_a_missing_model_says_where_models_come_from(synthetic_coco, run_script, tmp_path):
    # README's "your own photo" command with the real checkpoint, run before it was downloaded
    r = run_script("CenterNet_demo.py", "--model", "ctdet_coco_dla_2x.pth", images_of(synthetic_coco)[0],
                   cwd=tmp_path)
    assert_one_line_error(r, "ctdet_coco_dla_2x.pth: model not found", "work/demo/CenterNet.onnx", "MODEL_ZOO")


STANDIN_RECALL = 0.7  # of the shapes, found at --vis-thresh 0.3 with the right class and IoU >= 0.5


def test_without_a_model_the_stand_in_draws_boxes_on_the_shapes(run_script, tmp_path):
    """No --model and none of the default files here: the stand-in detector
    that ships with the toolkit runs (PyTorch: no export cached in the
    repository), and its boxes sit on the generated shapes, labelled with
    their names."""
    from centernet.io.shapes import make_shapes_coco
    from centernet.core.compare import box_iou
    images_dir, ann_file = make_shapes_coco(tmp_path / "data", "val", num_images=6, seed=0)
    out = tmp_path / "out"
    r = run_script("CenterNet_demo.py", images_dir, "--backend", "torch", "--output", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "running the stand-in detector" in r.stdout and "it detects shapes, not COCO objects" in r.stdout
    truth = json.loads(ann_file.read_text())
    names = {c["id"]: c["name"] for c in truth["categories"]}
    drawn = {e["file"].rsplit("/", 1)[1]: e["detections"] for e in json.loads((out / "detections.json").read_text())["images"]}
    found = total = 0
    for image in truth["images"]:
        dets = drawn[image["file_name"]]
        for a in (a for a in truth["annotations"] if a["image_id"] == image["id"]):
            x, y, w, h = a["bbox"]
            total += 1
            found += any(d["class"] == names[a["category_id"]] and box_iou([d["box"]], [[x, y, x + w, y + h]])[0, 0] >= 0.5
                         for d in dets)
    assert total and found / total >= STANDIN_RECALL, (found, total)
