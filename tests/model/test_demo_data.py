"""centernet.model.demo_data: the generated dataset and weights that let run_all.sh --demo run anywhere."""
import pytest
import subprocess
import sys

import torch

from centernet.model.checkpoint import load_model
from centernet.model.demo_data import make_demo
from centernet.io.synthetic import make_synthetic_coco
from conftest import ROOT, assert_one_line_error


def test_demo_is_made_once_and_reused(tmp_path, random_ctdet, monkeypatch):
    monkeypatch.setattr("centernet.model.demo_data.random_model", lambda seed: random_ctdet)  # built once per test run
    data, weights = make_demo(tmp_path, num_images=2)
    assert (data / "coco" / "annotations" / "instances_val2017.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctdet_demo.pth", "data"]  # no temp file left
    stamp = weights.stat().st_mtime_ns
    assert make_demo(tmp_path, num_images=2) == (data, weights) and weights.stat().st_mtime_ns == stamp
    model = load_model(weights)
    assert torch.isfinite(model.hm[2].weight).all()


@pytest.mark.slow
def test_full_disk_while_writing_the_weights_is_one_line(tmp_path, small_disk_env):
    # The data fits; the ~80 MB of weights do not.
    folder = tmp_path / "demo"
    make_synthetic_coco(folder / "data", num_images=2, seed=0)
    used = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    r = subprocess.run([sys.executable, "-m", "centernet.cli.make_demo", str(folder), "--images", "2"], cwd=ROOT,
                       env=small_disk_env(folder, used + 1_000_000), capture_output=True, text=True, timeout=300)
    assert_one_line_error(r, "ctdet_demo.pth", "No space left")
    assert sorted(p.name for p in folder.iterdir()) == ["data"]  # nothing half-written
