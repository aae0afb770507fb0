"""centernet.model.demo_data: the demo's data (the stand-in's held-out shapes)
and weights (a copy of the shipped stand-in), so run_all.sh --demo runs anywhere."""
import json
import subprocess
import sys

import pytest

from centernet.constants import STANDIN_CHECKPOINT
from centernet.errors import UserError
from centernet.io.shapes import make_shapes_coco
from centernet.model.demo_data import make_demo, standin_record
from conftest import ROOT, assert_one_line_error

SHIPPED = ROOT / STANDIN_CHECKPOINT


def test_demo_is_made_once_and_reused(tmp_path):
    data, weights = make_demo(tmp_path, num_images=2, progress=False)
    ann = json.loads((data / "coco" / "annotations" / "instances_val2017.json").read_text())
    assert len(ann["images"]) == 2 and ann["info"]["description"].endswith("seed 0, 2 images")
    assert weights.name == SHIPPED.name and weights.read_bytes() == SHIPPED.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctdet_shapes_resdcn18.pth", "data"]  # no temp file left
    stamp = weights.stat().st_mtime_ns
    assert make_demo(tmp_path, num_images=2, progress=False) == (data, weights)
    assert weights.stat().st_mtime_ns == stamp
    weights.write_bytes(b"damaged")  # a copy that is not the stand-in's is replaced
    make_demo(tmp_path, num_images=2, progress=False)
    assert weights.read_bytes() == SHIPPED.read_bytes()


def test_the_whole_held_out_split_is_the_default():
    assert standin_record()["val_images"] == 200


def test_a_copy_without_the_stand_in_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr("centernet.model.demo_data.REPO_ROOT", tmp_path)
    with pytest.raises(UserError, match="the stand-in detector is missing from this copy of the toolkit; restore"):
        make_demo(tmp_path / "demo", num_images=1, progress=False)


@pytest.mark.slow
def test_full_disk_while_copying_the_weights_is_one_line(tmp_path, small_disk_env):
    # The data fits; the 29 MB of weights do not.
    folder = tmp_path / "demo"
    make_shapes_coco(folder / "data", "val", num_images=2, seed=0)
    used = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    r = subprocess.run([sys.executable, "-m", "centernet.cli.make_demo", str(folder), "--images", "2"], cwd=ROOT,
                       env=small_disk_env(folder, used + 1_000_000), capture_output=True, text=True, timeout=300)
    assert_one_line_error(r, "ctdet_shapes_resdcn18.pth", "No space left")
    assert sorted(p.name for p in folder.iterdir()) == ["data"]  # nothing half-written
