"""tools/upstream_detector.py, the developer tool that runs upstream
CenterNet's own detector (docs/upstream-comparison.md).

The end-to-end test needs an upstream clone (a checkout or a bare mirror):
it runs only when CENTERNET_UPSTREAM names one, and is skipped otherwise (CI
has none). The tool's soft-NMS transcription is checked without upstream,
against centernet.core.soft_nms (itself checked bit for bit against a
transcription of upstream's Cython in tests/core/test_soft_nms.py)."""
import importlib.util
import json
import os
import subprocess

import cv2
import numpy as np
import pytest

from centernet.core.soft_nms import soft_nms as library_soft_nms
from centernet.io.synthetic import synthetic_photo
from conftest import HANG, PYTHON, ROOT

TOOL = ROOT / "tools" / "upstream_detector.py"
UPSTREAM = os.environ.get("CENTERNET_UPSTREAM")


def load_tool():
    spec = importlib.util.spec_from_file_location("upstream_detector_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def overlapping_rows(rng, n, width):
    """float32 rows [x1, y1, x2, y2, score, extra...] in a few clusters, so
    that soft-NMS re-scores, discards (scores down to 1e-4) and reorders."""
    centres = rng.uniform(20, 100, size=(3, 2))[rng.integers(0, 3, size=n)]
    half = rng.uniform(5, 30, size=(n, 2))
    boxes = np.concatenate([centres - half, centres + half], axis=1)
    scores = np.where(rng.random(n) < 0.3, rng.uniform(1e-4, 3e-3, n), rng.random(n))
    extra = rng.uniform(0, 200, size=(n, width - 5))
    return np.concatenate([boxes, scores[:, None], extra], axis=1).astype(np.float32)


def test_soft_nms_transcriptions_equal_the_library():
    tool = load_tool()
    rng = np.random.default_rng(0)
    discarded = 0
    for n in (0, 1, 2, 7, 40):
        rows = overlapping_rows(rng, n, 5)
        expected = rows.copy()
        kept = library_soft_nms(expected)
        got = rows.copy()
        assert tool.soft_nms(got, Nt=0.5, method=2) == list(range(kept))
        assert np.array_equal(got, expected), n  # bit for bit, stale rows included

        rows39 = overlapping_rows(rng, n, 39)
        expected5 = rows39[:, :5].copy()
        kept39 = library_soft_nms(expected5)
        got39 = rows39.copy()
        assert tool.soft_nms_39(got39, Nt=0.5, method=2) == list(range(kept39))
        assert np.array_equal(got39[:, :5], expected5), n
        # columns 5..38 are only ever swapped between rows: a permutation of the input's
        assert sorted(r.tobytes() for r in got39[:, 5:]) == sorted(r.tobytes() for r in rows39[:, 5:])
        if n > 1:
            assert not np.array_equal(got39, rows39)  # the case did reorder or re-score
        discarded += n - kept39
    assert discarded  # the discard step (its quirks) was exercised


def test_soft_nms_39_moves_the_joints_with_the_box():
    tool = load_tool()
    far = [[0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210]]  # no overlaps: a pure sort
    rows = np.array([box + [score] + [k] * 34 for k, (box, score) in enumerate(zip(far, [0.2, 0.9, 0.5]))],
                    np.float32)
    tool.soft_nms_39(rows, Nt=0.5, method=2)
    assert rows[:, 4].tolist() == pytest.approx([0.9, 0.5, 0.2]) and rows[:, 5:].tolist() == \
        [[1] * 34, [2] * 34, [0] * 34]


@pytest.mark.skipif(not UPSTREAM, reason="CENTERNET_UPSTREAM does not name an upstream CenterNet clone")
def test_runs_upstream_multi_pose_on_a_random_checkpoint(tmp_path):
    checkpoint = tmp_path / "multi_pose.pth"
    photos = tmp_path / "photos"
    photos.mkdir()
    image, _ = synthetic_photo(np.random.default_rng(0), 160, 120)
    cv2.imwrite(str(photos / "one.jpg"), image)
    out = tmp_path / "upstream.npz"

    def tool(*args):
        proc = subprocess.run([PYTHON, str(TOOL), *args], capture_output=True, text=True, timeout=HANG)
        assert proc.returncode == 0, proc.stderr[-2000:]

    tool("random-checkpoint", "--upstream", UPSTREAM, "--task", "multi_pose", "--arch", "dla_34",
         "--out", str(checkpoint))
    tool("--upstream", UPSTREAM, "--checkpoint", str(checkpoint), "--images", str(photos),
         "--task", "multi_pose", "--arch", "dla_34", "--out", str(out))

    with np.load(out, allow_pickle=False) as data:
        assert sorted(data.files) == ["__options__", "one"]
        rows = data["one"]
        options = json.loads(str(data["__options__"]))
    assert rows.dtype == np.float32 and rows.shape == (100, 39)  # K = 100 rows at one scale
    assert np.isfinite(rows).all()
    assert np.all(np.diff(rows[:, 4]) <= 0)  # upstream's top-K order, no soft-NMS at one scale
    assert (options["task"], options["test_scales"], options["flip_test"], options["keep_res"]) == \
        ("multi_pose", [1.0], False, False)
    assert options["opt"]["heads"] == {"hm": 1, "wh": 2, "hps": 34, "reg": 2, "hm_hp": 17, "hp_offset": 2}
    assert options["opt"]["gpus"] == [-1] and options["opt"]["K"] == 100

    # compared with itself: nothing differs
    proc = subprocess.run([PYTHON, str(TOOL), "compare", str(out), str(out)], capture_output=True, text=True,
                          timeout=HANG)
    assert proc.returncode == 0 and "1 images, 100 rows" in proc.stdout and "0 rows differ" in proc.stdout
