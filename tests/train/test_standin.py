"""centernet.train.standin: the stand-in's training is deterministic and
resumable, and what it saves is an upstream-layout checkpoint that carries
its facts and record (a tiny recipe: a few steps at 64x64)."""
import json

import pytest
import torch

from centernet.constants import FACTS_FIELD, STANDIN_FIELD
from centernet.io.shapes import SHAPE_CLASSES
from centernet.model.checkpoint import checkpoint_facts, load_model
from centernet.train.standin import StandinRecipe, make_standin, train_standin

TINY = StandinRecipe(input_size=64, batch_size=2, steps=3, warmup=1, train_images=4, val_images=3, stats_images=2)


def test_training_resumes_where_it_stopped_and_ends_where_an_uninterrupted_run_does(tmp_path, caplog):
    straight, _, _ = train_standin(TINY, tmp_path / "a.pth")
    # a run stopped after its first step (its progress saved), then resumed
    train_standin(StandinRecipe(**{**TINY.__dict__, "steps": 1}), tmp_path / "b.pth", save_every_s=0)
    partial = torch.load(tmp_path / "b.pth.partial", weights_only=True)
    assert partial["step"] == 1
    partial["recipe"]["steps"] = TINY.steps  # the same recipe, continued
    torch.save(partial, tmp_path / "b.pth.partial")
    with caplog.at_level("INFO"):
        resumed, _, _ = train_standin(TINY, tmp_path / "b.pth")
    assert f"resuming from {tmp_path / 'b.pth.partial'} at step 1 of 3" in caplog.text
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # another recipe's progress is not taken for this one's
    caplog.clear()
    with caplog.at_level("INFO"):
        train_standin(StandinRecipe(**{**TINY.__dict__, "seed": 1, "steps": 1}), tmp_path / "b.pth")
    assert "another recipe's progress; starting over" in caplog.text


def test_the_saved_stand_in_is_an_upstream_checkpoint_with_its_facts_and_record(tmp_path):
    out = tmp_path / "models" / "standin.pth"
    record = make_standin(out, TINY, data_root=tmp_path / "data", command="test")
    raw = torch.load(out, weights_only=True)
    assert set(raw) == {"epoch", "state_dict", FACTS_FIELD, STANDIN_FIELD}
    assert all(k.startswith("module.") for k in raw["state_dict"])
    assert {v.dtype for v in raw["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    facts = checkpoint_facts(out)
    assert facts.network == "resdcn_18" and facts.class_names == SHAPE_CLASSES
    assert facts.input_size == (64, 64) and facts.mean != (0.40789654, 0.44719302, 0.47026115)
    model = load_model(out)
    assert model.facts == facts and model.hm[-1].weight.dtype == torch.float32
    assert not (out.parent / "standin.pth.partial").exists()
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["val_AP"] == record["val_AP"] and side["recipe"]["steps"] == TINY.steps
    assert side["facts"]["centernet.class_names"] == json.dumps(list(SHAPE_CLASSES))
    assert 0 <= record["val_AP"] <= 1 and record["command"] == "test"


def test_an_unwritable_output_folder_fails_before_training(tmp_path, monkeypatch):
    from centernet.errors import UserError
    monkeypatch.setattr("centernet.train.standin.train_standin",
                        lambda *a, **k: pytest.fail("trained before checking the output"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError):
        make_standin(blocker / "standin.pth", TINY)
