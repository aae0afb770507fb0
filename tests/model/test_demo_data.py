"""centernet.model.demo_data: the generated dataset and weights that let run_all.sh --demo run anywhere."""
import pytest
import subprocess
import sys

import torch

from centernet.model.checkpoint import is_random, load_model
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
    assert is_random(model)


def test_demo_weights_made_without_the_mark_get_it(tmp_path, random_ctdet, ordinary_checkpoint, monkeypatch):
    # demo weights of an earlier version: the same random weights, without the mark
    monkeypatch.setattr("centernet.model.demo_data.random_model", lambda seed: random_ctdet)
    (tmp_path / "ctdet_demo.pth").write_bytes(ordinary_checkpoint.read_bytes())
    _, weights = make_demo(tmp_path, num_images=2)
    raw, before = torch.load(weights, weights_only=True), torch.load(ordinary_checkpoint, weights_only=True)
    assert raw["random_weights"] is True and raw["epoch"] == before["epoch"]
    assert raw["state_dict"].keys() == before["state_dict"].keys()
    assert all(torch.equal(raw["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctdet_demo.pth", "data"]  # no temp file left
    stamp = weights.stat().st_mtime_ns
    make_demo(tmp_path, num_images=2)
    assert weights.stat().st_mtime_ns == stamp  # marked once


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
