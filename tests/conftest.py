"""Shared test fixtures: the repository on sys.path, a small synthetic COCO
dataset, and a runner for the top-level scripts."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Small images of varied shape (width, height) keep the suite fast.
SMALL_SIZES = [(160, 120), (96, 144), (128, 128), (200, 90), (64, 64), (150, 100)]


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory):
    """A 6-image synthetic dataset in the recipe layout (read-only for tests:
    copy before modifying). Returns make_synthetic_coco's dict plus the
    loaded annotations under "dataset"."""
    from centernet.synthetic import make_synthetic_coco
    info = make_synthetic_coco(tmp_path_factory.mktemp("synth") / "data", num_images=6, seed=0,
                               image_sizes=SMALL_SIZES, max_objects=4)
    info["dataset"] = json.loads(Path(info["annotation_file"]).read_text())
    return info


def _run_script(script, *args, cwd):
    """Run a top-level script in a fresh interpreter; returns CompletedProcess."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def run_script():
    return _run_script


def assert_one_line_error(proc, *fragments):
    """A user error: exit status 2, one 'error:' line on stderr naming the
    given fragments, and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


@pytest.fixture(scope="session")
def ctdet_onnx(random_ctdet, tmp_path_factory):
    """`random_ctdet` exported with the default target (512x512, DeformConv)."""
    from centernet.export import export_onnx
    path = tmp_path_factory.mktemp("onnx") / "CenterNet.onnx"
    export_onnx(random_ctdet, path)
    return path


PYTHON = sys.executable

# ONNX Runtime and PyTorch, both in float32, each differ from the exact
# (float64) network by float32 rounding: about 1e-4 of an output's largest
# magnitude at the trained model's scale (hm logits to +-10, wh tens of
# pixels). Two float32 runs of the same network agree within 1e-3 of it.
PARITY_REL = 1e-3


def assert_parity(got, ref, rel=PARITY_REL, what=""):
    """got matches ref within `rel` of ref's largest magnitude."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    diff, scale = float(np.abs(got - ref).max()), float(np.abs(ref).max())
    assert diff <= rel * scale, f"{what}: max abs diff {diff:.3g} > {rel:g} x max |ref| {scale:.3g}"


def photo_inputs(num_images, input_size, seed=0):
    """Network input from synthetic photos (the test transform applied), not
    white noise: the fixture model is calibrated on photos, as a trained one is."""
    from centernet.synthetic import synthetic_input_batch
    return synthetic_input_batch(num_images, tuple(input_size), seed=seed)


@pytest.fixture(scope="session")
def random_ctdet():
    """Random ctdet DLA-34 weights calibrated to behave like the trained network
    (centernet/random_weights.py; its output ranges: tests/test_random_weights.py)."""
    from centernet.random_weights import random_model
    return random_model(seed=0)


@pytest.fixture(scope="session")
def upstream_checkpoint(random_ctdet, tmp_path_factory):
    """`random_ctdet` saved in the zoo file's layout: {'epoch', 'state_dict'},
    module.-prefixed keys, base.fc present, num_batches_tracked missing."""
    from centernet.checkpoint import save_upstream_checkpoint
    path = tmp_path_factory.mktemp("weights") / "ctdet_coco_dla_2x.pth"
    save_upstream_checkpoint(random_ctdet, path)
    return path


@pytest.fixture(scope="session")
def ctdet_onnx_dynamic(random_ctdet, tmp_path_factory):
    """`random_ctdet` with a dynamic input height and width (keep resolution,
    scales); traced at a small size, which keeps the export fast."""
    from centernet.export import export_onnx
    path = tmp_path_factory.mktemp("onnx") / "CenterNet_dynamic.onnx"
    export_onnx(random_ctdet, path, input_size=(64, 64), dynamic_size=True)
    return path


@pytest.fixture(scope="session")
def ctdet_onnx_flip_dynamic(random_ctdet, tmp_path_factory):
    """As ctdet_onnx_dynamic, with the flip test in the graph (export --flip)."""
    from centernet.export import export_onnx
    path = tmp_path_factory.mktemp("onnx") / "CenterNet_flip_dynamic.onnx"
    export_onnx(random_ctdet, path, input_size=(64, 64), dynamic_size=True, flip=True)
    return path


# Tiny images whose keep-resolution inputs come in pairs of equal size
# ((h|31)+1, (w|31)+1): 64x128 twice, 64x96 twice, 96x96 once.
KEEP_RES_SIZES = [(100, 60), (90, 50), (64, 64), (96, 40), (70, 60)]


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """A 5-image synthetic dataset of KEEP_RES_SIZES (read-only for tests)."""
    from centernet.synthetic import make_synthetic_coco
    info = make_synthetic_coco(tmp_path_factory.mktemp("tiny") / "data", num_images=5, seed=1,
                               image_sizes=KEEP_RES_SIZES, max_objects=3)
    info["dataset"] = json.loads(Path(info["annotation_file"]).read_text())
    return info
