"""Loading checkpoints in upstream's layout, and refusing everything else clearly."""
import logging
import subprocess
import sys

import pytest
import torch

from centernet.model.checkpoint import is_random, load_model, load_state_dict, save_upstream_checkpoint
from centernet.errors import UserError
from conftest import ROOT
from pose_dla_dcn import get_pose_net


def test_upstream_layout_loads_exactly(random_ctdet, upstream_checkpoint, caplog):
    raw = torch.load(upstream_checkpoint, weights_only=True)
    keys = raw["state_dict"].keys()
    assert set(raw) == {"epoch", "state_dict", "random_weights"} and raw["random_weights"] is True
    assert all(k.startswith("module.") for k in keys) and "module.base.fc.weight" in keys
    assert not any(k.endswith("num_batches_tracked") for k in keys)

    caplog.set_level(logging.INFO, logger="centernet")
    model = load_model(upstream_checkpoint)  # logged, no longer printed
    assert "ignoring 2 backbone classifier entries" in caplog.text
    ours, ref = model.state_dict(), random_ctdet.state_dict()
    for k, v in ref.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(ours[k], v), k
    assert not model.training


def test_random_weights_are_a_fact_of_the_checkpoint_and_the_model(random_ctdet, upstream_checkpoint,
                                                                     ordinary_checkpoint, tmp_path):
    assert is_random(random_ctdet)  # random_weights.random_model marks its model
    marked, plain = load_model(upstream_checkpoint), load_model(ordinary_checkpoint)
    assert is_random(marked) and not is_random(plain)
    assert all(torch.equal(a, b) for a, b in zip(marked.state_dict().values(), plain.state_dict().values()))
    # saving passes the fact on, either way
    save_upstream_checkpoint(plain, tmp_path / "again.pth")
    assert "random_weights" not in torch.load(tmp_path / "again.pth", weights_only=True)
    assert not is_random(load_model(tmp_path / "again.pth"))
    save_upstream_checkpoint(marked, tmp_path / "marked.pth")
    assert is_random(load_model(tmp_path / "marked.pth"))
    # only True marks: a checkpoint that says anything else is not taken for random weights
    raw = torch.load(upstream_checkpoint, weights_only=True)
    torch.save({**raw, "random_weights": "yes"}, tmp_path / "odd.pth")
    assert not is_random(load_model(tmp_path / "odd.pth"))


def test_bare_state_dict_without_prefix(random_ctdet, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(random_ctdet.state_dict(), path)
    model = load_state_dict(get_pose_net(), path)
    assert torch.equal(model.hm[2].weight, random_ctdet.hm[2].weight)


def _error(path):
    with pytest.raises(UserError) as e:
        load_model(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_missing_file(tmp_path):
    assert "not found" in _error(tmp_path / "nope.pth")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"\x80\x04 this is not a pickle at all")
    msg = _error(path)
    assert "not a readable PyTorch checkpoint" in msg
    assert "weights_only" not in msg  # not torch's advice to load it unsafely


def test_not_a_checkpoint_from_the_command_line_is_one_line(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"\x80\x04 this is not a pickle at all")  # protocol 4: torch warns before failing
    r = subprocess.run([sys.executable, "-m", "centernet.cli.check_weights", str(path)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr


def test_an_exported_model_given_as_the_checkpoint_is_named_so(ctdet_onnx, tmp_path):
    # By content (a protobuf ModelProto), whatever its name says, and by name.
    renamed = tmp_path / "model.pth"
    renamed.write_bytes(ctdet_onnx.read_bytes())
    for path in (ctdet_onnx, renamed):
        msg = _error(path)
        assert "this is an ONNX file, not a checkpoint; give the .pth checkpoint it was exported from" in msg, msg
        assert "operand" not in msg
    om = tmp_path / "CenterNet_bs1.om"
    om.write_bytes(b"\x00 an offline model")
    assert "this is an Ascend offline model (.om), not a checkpoint" in _error(om)


def test_truncated_checkpoint(upstream_checkpoint, tmp_path):
    path = tmp_path / "cut.pth"
    path.write_bytes(upstream_checkpoint.read_bytes()[:100000])
    assert "not a readable PyTorch checkpoint" in _error(path)


def test_wrong_architecture(random_ctdet, tmp_path):
    state = {k: v for k, v in random_ctdet.state_dict().items()}
    state.pop("hm.2.weight")
    state["wh.2.weight"] = torch.zeros(4, 256, 1, 1)
    state["extra.layer.weight"] = torch.zeros(1)
    path = tmp_path / "other.pth"
    torch.save({"state_dict": state}, path)
    msg = _error(path)
    assert "not a CenterNet checkpoint of any upstream network; as dla_34:" in msg
    assert "missing 1: hm.2.weight" in msg and "unexpected 1: extra.layer.weight" in msg
    assert "wh.2.weight (4, 256, 1, 1) != (2, 256, 1, 1)" in msg


def test_a_layout_of_no_network_lists_its_first_names(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {f"layer{i}.weight": torch.zeros(1) for i in range(20)}}, path)
    msg = _error(path)
    assert "its keys fit no upstream ctdet network (dla_34, dlav0_34, res_18" in msg
    assert "top-level names layer0, layer1, layer10, layer11, layer12, layer13, layer14, layer15 (+12 more)" in msg


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    assert "no state_dict" in _error(path)


def test_a_whole_pickled_model(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(torch.nn.Linear(3, 4), path)
    msg = _error(path)
    assert msg == (f"{path}: holds a pickled torch.nn.modules.linear.Linear object, not a state_dict; upstream "
                   "checkpoints are {'epoch': N, 'state_dict': {name: tensor}} (save one with "
                   "torch.save({'state_dict': model.state_dict()}, path))")
    assert "\x1b" not in msg


def test_a_folder(tmp_path):
    assert _error(tmp_path) == f"{tmp_path}: is a folder, not a checkpoint file"


def test_cli_check(upstream_checkpoint):
    # (its one-line errors: test_run_all.py's bad weights)
    r = subprocess.run([sys.executable, "-m", "centernet.cli.check_weights", str(upstream_checkpoint)], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{upstream_checkpoint}: ctdet DLA-34 with DCN, 80 classes, head width 256\n"


def _with_facts(upstream_checkpoint, tmp_path, facts):
    from centernet.constants import FACTS_FIELD
    raw = torch.load(upstream_checkpoint, weights_only=True)
    raw[FACTS_FIELD] = facts
    path = tmp_path / "with_facts.pth"
    torch.save(raw, path)
    return path


def test_a_checkpoint_that_records_its_settings_loads_with_them(upstream_checkpoint, tmp_path):
    """A checkpoint made here (the stand-in's) carries its ModelFacts beside
    upstream's entries; the model, the export cache and CenterNet_pth2onnx.py
    take its settings from there instead of COCO's."""
    from centernet.core.model_facts import ModelFacts
    from centernet.model.checkpoint import checkpoint_facts
    names = tuple(f"class{i}" for i in range(80))
    recorded = ModelFacts(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(256, 320), class_names=names)
    path = _with_facts(upstream_checkpoint, tmp_path, recorded.to_metadata())
    assert checkpoint_facts(path) == recorded
    assert load_model(path).facts == recorded
    assert checkpoint_facts(upstream_checkpoint) == ModelFacts()  # upstream's files: COCO's settings


def test_recorded_settings_that_contradict_the_weights_are_one_line(upstream_checkpoint, tmp_path):
    from centernet.core.model_facts import ModelFacts
    wrong = ModelFacts(heads=(("hm", 3), ("wh", 2), ("reg", 2))).to_metadata()
    path = _with_facts(upstream_checkpoint, tmp_path, wrong)
    with pytest.raises(UserError, match=r"with_facts.pth: its centernet_facts entry says DLA-34 with DCN, 3 classes, "
                                        r"head width 256, but its weights are DLA-34 with DCN, 80 classes"):
        load_model(path)
    path = _with_facts(upstream_checkpoint, tmp_path, {"centernet.mean": "1,2"})
    with pytest.raises(UserError, match="its centernet_facts entry is malformed"):
        load_model(path)
