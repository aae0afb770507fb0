"""CenterNet_preprocess.py / centernet.pipeline.preprocess: bins, meta.json, resume, errors."""
import json
import os
import random
import re
import shutil
import subprocess
import time

import cv2
import numpy as np
import pytest

from centernet.pipeline import preprocess
from centernet.pipeline.preprocess import preprocess_array, preprocess_folder
from centernet.core.transforms import preprocess_image, test_geometry
from conftest import HANG, assert_one_line_error, ctrl_c, kill_group, start_script, wait_until_loaded

BIN_BYTES = 3 * 512 * 512 * 4  # 3,145,728


def expected_input(img):
    """The fixed 512x512 test transform stated independently: pure scale
    512/s about the image centre, warpAffine (bilinear, zero border),
    (x/255 - mean)/std per B, G, R channel, CHW float32."""
    h, w = img.shape[:2]
    s = float(max(h, w))
    a = 512 / s
    m = np.array([[a, 0.0, 256 - w / 2 * a], [0.0, a, 256 - h / 2 * a]])
    warped = cv2.warpAffine(img, m, (512, 512), flags=cv2.INTER_LINEAR).astype(np.float64)
    mean = np.array([0.40789654, 0.44719302, 0.47026115])
    std = np.array([0.28863828, 0.27408164, 0.27809835])
    return ((warped / 255 - mean) / std).transpose(2, 0, 1)[None]


def make_folder(folder, rng):
    """Images of several formats and letter cases; returns {name: BGR image as read back}."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = [("a.jpg", (120, 160)), ("b.JPEG", (144, 96)), ("c.png", (64, 64)), ("d.BMP", (90, 200)),
             ("e.Png", (50, 75))]
    images = {}
    for name, (h, w) in specs:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ext = os.path.splitext(name)[1].lower()
        ok, buf = cv2.imencode(".jpg" if ext in (".jpg", ".jpeg") else ext, img)
        assert ok
        (folder / name).write_bytes(buf.tobytes())
        images[name] = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
    (folder / "notes.txt").write_text("not an image")  # ignored
    return images


@pytest.mark.parametrize("hw", [(120, 160), (144, 96), (1, 1), (700, 3)])
def test_preprocess_array_matches_independent_statement(hw):
    img = np.random.default_rng(2).integers(0, 256, hw + (3,), dtype=np.uint8)
    tensor, meta = preprocess_array(img)
    assert tensor.shape == (1, 3, 512, 512) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor, expected_input(img), rtol=0, atol=1e-4)
    # and bit for bit the shared transforms.preprocess_image
    center, scale, in_hw = test_geometry(*hw)
    np.testing.assert_array_equal(tensor, preprocess_image(img, center, scale, in_hw))
    h, w = hw
    assert meta == {"width": w, "height": h, "center": [w / 2, h / 2], "scale": float(max(h, w)),
                    "input_size": [512, 512]}


@pytest.mark.parametrize("workers", [1, 2])
def test_folder_to_bins_and_meta(tmp_path, workers):
    images = make_folder(tmp_path / "imgs", np.random.default_rng(3))
    summary = preprocess_folder(tmp_path / "imgs", tmp_path / "out", workers=workers, progress=False)
    assert summary["converted"] == 5 and summary["skipped"] == 0 and not summary["failed"]
    for name, img in images.items():
        path = tmp_path / "out" / (os.path.splitext(name)[0] + ".bin")
        assert path.stat().st_size == BIN_BYTES
        got = np.fromfile(path, dtype=np.float32).reshape(1, 3, 512, 512)
        np.testing.assert_allclose(got, expected_input(img), rtol=0, atol=1e-4)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["input_size"] == [512, 512]
    assert set(meta["images"]) == set(images)
    h, w = images["d.BMP"].shape[:2]
    assert meta["images"]["d.BMP"] == {"width": w, "height": h, "center": [w / 2, h / 2],
                                        "scale": float(max(h, w)), "input_size": [512, 512]}
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_rerun_skips_complete_bins_and_redoes_broken_ones(tmp_path):
    make_folder(tmp_path / "imgs", np.random.default_rng(4))
    out = tmp_path / "out"
    preprocess_folder(tmp_path / "imgs", out, workers=1, progress=False)
    good = out / "a.bin"
    reference = good.read_bytes()
    os.utime(good, (1, 1))
    # a truncated bin (an interrupted copy, say) and a lost meta entry
    (out / "b.bin").write_bytes((out / "b.bin").read_bytes()[:1000])
    meta = json.loads((out / "meta.json").read_text())
    del meta["images"]["c.png"]
    meta["images"]["gone.jpg"] = {"width": 1, "height": 1, "center": [0.5, 0.5], "scale": 1.0,
                                  "input_size": [512, 512]}
    (out / "meta.json").write_text(json.dumps(meta))

    summary = preprocess_folder(tmp_path / "imgs", out, workers=1, progress=False)
    assert summary["converted"] == 2 and summary["skipped"] == 3
    assert good.stat().st_mtime == 1 and good.read_bytes() == reference  # untouched
    assert (out / "b.bin").stat().st_size == BIN_BYTES
    meta = json.loads((out / "meta.json").read_text())
    assert "c.png" in meta["images"] and "gone.jpg" in meta["images"]  # merged, not replaced

    assert preprocess_folder(tmp_path / "imgs", out, workers=1, progress=False)["converted"] == 0


def test_other_input_size_redoes_everything(tmp_path):
    make_folder(tmp_path / "imgs", np.random.default_rng(5))
    preprocess_folder(tmp_path / "imgs", tmp_path / "out", workers=1, progress=False)
    summary = preprocess_folder(tmp_path / "imgs", tmp_path / "out", input_size=(64, 96), workers=1,
                                progress=False)
    assert summary["converted"] == 5
    assert (tmp_path / "out" / "a.bin").stat().st_size == 3 * 64 * 96 * 4
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["input_size"] == [64, 96] and meta["images"]["a.jpg"]["input_size"] == [64, 96]


def test_cli_corrupt_image_is_named_others_converted_exit_1(tmp_path, run_script):
    make_folder(tmp_path / "imgs", np.random.default_rng(6))
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (tmp_path / "imgs" / "empty.png").write_bytes(b"")
    proc = run_script("CenterNet_preprocess.py", "imgs", "prep", "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "broken.jpg" in proc.stderr and "empty.png" in proc.stderr
    assert "2 of 7 images failed" in proc.stderr and "Traceback" not in proc.stderr
    bins = sorted(p.name for p in (tmp_path / "prep").glob("*.bin"))
    assert bins == ["a.bin", "b.bin", "c.bin", "d.bin", "e.bin"]
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    assert "broken.jpg" not in meta["images"] and len(meta["images"]) == 5
    # a re-run only retries the failures
    proc = run_script("CenterNet_preprocess.py", "imgs", "prep", cwd=tmp_path)
    assert proc.returncode == 1 and "0 converted, 5 already done, 2 failed" in proc.stdout


def test_cli_recipe_command_line(tmp_path, run_script, synthetic_coco):
    shutil.copytree(synthetic_coco["root"], tmp_path / "data")
    proc = run_script("CenterNet_preprocess.py", "data/coco/val2017", "prep_dataset", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = {img["file_name"] for img in synthetic_coco["dataset"]["images"]}
    assert {p.stem for p in (tmp_path / "prep_dataset").glob("*.bin")} == {os.path.splitext(n)[0] for n in names}
    assert all(p.stat().st_size == BIN_BYTES for p in (tmp_path / "prep_dataset").glob("*.bin"))


def test_cli_user_errors_are_one_line(tmp_path, run_script):
    assert_one_line_error(run_script("CenterNet_preprocess.py", "nowhere", "out", cwd=tmp_path), "nowhere",
                          "not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_script("CenterNet_preprocess.py", "empty", "out", cwd=tmp_path), "empty",
                          "no images")
    (tmp_path / "dup").mkdir()
    for name in ("x.jpg", "x.png"):
        cv2.imwrite(str(tmp_path / "dup" / name), np.zeros((4, 4, 3), np.uint8))
    assert_one_line_error(run_script("CenterNet_preprocess.py", "dup", "out", cwd=tmp_path), "x.bin")
    assert_one_line_error(run_script("CenterNet_preprocess.py", "dup", "out", "--input-size", "510", "512",
                                     cwd=tmp_path), "multiples of 4")


def test_bad_meta_json_is_a_user_error(tmp_path):
    make_folder(tmp_path / "imgs", np.random.default_rng(7))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "meta.json").write_text("{not json")
    with pytest.raises(preprocess.UserError, match="meta.json: not valid JSON"):
        preprocess_folder(tmp_path / "imgs", tmp_path / "out", workers=1, progress=False)


def test_warns_when_the_disk_is_too_small(tmp_path, monkeypatch, caplog):
    make_folder(tmp_path / "imgs", np.random.default_rng(8))
    monkeypatch.setattr(preprocess.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 10**6))
    preprocess_folder(tmp_path / "imgs", tmp_path / "out", workers=1, progress=False)  # logs its warnings
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("centernet")]
    assert len(lines) == 1 and lines[0].startswith("warning:")
    assert "5 bins need 15.7 MB but only 1.0 MB is free" in lines[0]


def expected_keep_res_input(img):
    """Keep resolution stated independently: the image unscaled, its centre
    (w//2, h//2) at the centre of an input of (h|31)+1 by (w|31)+1 (the next
    multiple of 32 above each side), zero (normalised) around it."""
    h, w = img.shape[:2]
    in_h, in_w = (h // 32 + 1) * 32, (w // 32 + 1) * 32
    m = np.array([[1.0, 0.0, in_w / 2 - w // 2], [0.0, 1.0, in_h / 2 - h // 2]])
    warped = cv2.warpAffine(img, m, (in_w, in_h), flags=cv2.INTER_LINEAR).astype(np.float64)
    mean = np.array([0.40789654, 0.44719302, 0.47026115])
    std = np.array([0.28863828, 0.27408164, 0.27809835])
    return ((warped / 255 - mean) / std).transpose(2, 0, 1)[None]


def test_keep_res_folder_bins_and_meta(tmp_path):
    images = make_folder(tmp_path / "imgs", np.random.default_rng(9))
    summary = preprocess_folder(tmp_path / "imgs", tmp_path / "out", workers=1, progress=False, keep_res=True)
    assert summary["converted"] == 5 and not summary["failed"]
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["keep_res"] is True and meta["input_size"] is None and meta["flip_test"] is False
    for name, img in images.items():
        h, w = img.shape[:2]
        in_h, in_w = (h // 32 + 1) * 32, (w // 32 + 1) * 32
        assert meta["images"][name] == {"width": w, "height": h, "center": [float(w // 2), float(h // 2)],
                                        "scale": [float(in_w), float(in_h)], "input_size": [in_h, in_w]}
        got = np.fromfile(tmp_path / "out" / (os.path.splitext(name)[0] + ".bin"), dtype=np.float32)
        assert got.size == 3 * in_h * in_w
        np.testing.assert_allclose(got.reshape(1, 3, in_h, in_w), expected_keep_res_input(img), rtol=0, atol=1e-4)


def test_switching_mode_redoes_the_bins_and_flip_only_changes_meta(tmp_path):
    make_folder(tmp_path / "imgs", np.random.default_rng(10))
    out = tmp_path / "out"
    preprocess_folder(tmp_path / "imgs", out, workers=1, progress=False)
    assert preprocess_folder(tmp_path / "imgs", out, workers=1, progress=False, keep_res=True)["converted"] == 5
    again = preprocess_folder(tmp_path / "imgs", out, workers=1, progress=False, keep_res=True, flip_test=True)
    assert again["converted"] == 0 and again["skipped"] == 5
    assert json.loads((out / "meta.json").read_text())["flip_test"] is True
    # A square 480x480 image has a 512x512 input in both modes, but not the same one.
    cv2.imwrite(str(tmp_path / "imgs" / "sq.png"), np.full((480, 480, 3), 7, np.uint8))
    preprocess_folder(tmp_path / "imgs", out, workers=1, progress=False, keep_res=True)
    assert preprocess_folder(tmp_path / "imgs", out, workers=1, progress=False)["converted"] == 6


def test_cli_keep_res_and_flip(tmp_path, run_script):
    make_folder(tmp_path / "imgs", np.random.default_rng(11))
    proc = run_script("CenterNet_preprocess.py", "imgs", "prep", "--keep-res", "--flip", "--workers", "2",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "prep" / "meta.json").read_text())
    assert meta["keep_res"] and meta["flip_test"]
    assert meta["images"]["d.BMP"]["input_size"] == [96, 224]  # a 200x90 image
    assert (tmp_path / "prep" / "d.bin").stat().st_size == 3 * 96 * 224 * 4
def assert_bins_match_meta(out, size):
    """meta.json lists only complete bins, and no temp file is left."""
    meta = json.loads((out / "meta.json").read_text())
    for name in meta["images"]:
        assert (out / (os.path.splitext(name)[0] + ".bin")).stat().st_size == size, name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    return meta


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_cli_full_disk_stops_at_the_first_failed_write(tmp_path, run_script, small_disk_env, workers):
    for i in range(8):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), np.full((40, 50, 3), 30 * i, np.uint8))
    size = 3 * 64 * 64 * 4
    # room for 3 bins and meta.json, not for a 4th bin
    env = small_disk_env(tmp_path / "prep", 3 * size + size // 2)
    proc = run_script("CenterNet_preprocess.py", ".", "prep", "--input-size", 64, 64, "--workers", workers,
                      "--no-progress", cwd=tmp_path, env=env)
    assert_one_line_error(proc, "cannot write (No space left on device)", "free some space or write elsewhere",
                          "bins are finished and kept in prep, the same command converts the rest")
    assert re.match(r"error: prep/\d\d\.bin: ", proc.stderr)
    meta = assert_bins_match_meta(tmp_path / "prep", size)
    n = int(re.search(r"; (\d) of 8 bins are finished", proc.stderr).group(1))
    assert 1 <= n <= 3 and len(meta["images"]) == n
    # with space again, the same command converts the rest
    proc = run_script("CenterNet_preprocess.py", ".", "prep", "--input-size", 64, 64, "--workers", workers,
                      "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0 and f"{8 - n} converted, {n} already done" in proc.stdout


@pytest.mark.slow
def test_ctrl_c_at_random_moments_ends_quietly(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, workers included) at
    moments spread over a two-worker run, sometimes twice: every run ends
    within seconds with exit 130 and one line saying what is kept (or 0 if
    it had finished), never a traceback, a hang or a temp file."""
    rng = np.random.default_rng(10)
    for i in range(48):
        cv2.imwrite(str(tmp_path / f"{i:02d}.jpg"), rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    args = [".", "prep", "--input-size", 128, 128, "--workers", 2, "--no-progress"]
    proc = start_script("CenterNet_preprocess.py", *args, cwd=tmp_path)
    wait_until_loaded(proc, "/cv2/")
    t0 = time.monotonic()
    assert proc.wait(timeout=HANG) == 0, proc.stderr.read()
    proc.stdout.close(), proc.stderr.close()
    whole = time.monotonic() - t0
    shutil.rmtree(tmp_path / "prep")
    runs = 8
    pick = random.Random(11)
    outcomes = []
    for i in range(runs):
        # Spread over the run from the moment main() imports OpenCV: the rest
        # of the imports, starting the workers, converting, shutting down.
        delay = whole * (i + pick.random()) / runs
        proc = start_script("CenterNet_preprocess.py", *args, cwd=tmp_path)
        wait_until_loaded(proc, "/cv2/")
        time.sleep(delay)
        ctrl_c(proc)
        if pick.random() < 0.5:  # pressed twice
            time.sleep(pick.uniform(0.01, 0.3))
            ctrl_c(proc)
        try:
            out, err = proc.communicate(timeout=HANG)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            pytest.fail(f"hangs: no exit within {HANG} s of Ctrl-C at {delay:.2f}s")
        outcomes.append(proc.returncode)
        assert "Traceback" not in err, (delay, err)
        if proc.returncode == 130:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("interrupted: "), (delay, err)
            if (tmp_path / "prep" / "meta.json").exists():
                assert re.match(r"interrupted: \d+ of 48 bins are finished and kept in prep", lines[0]), err
                assert_bins_match_meta(tmp_path / "prep", 3 * 128 * 128 * 4)
        else:
            assert proc.returncode == 0 and not err, (delay, proc.returncode, err)
        shutil.rmtree(tmp_path / "prep", ignore_errors=True)
    assert outcomes.count(130) >= runs // 2, outcomes  # most runs were really interrupted
