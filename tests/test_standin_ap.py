"""The end-to-end test with teeth: the shipped stand-in detector (ResNet-18 +
DCN trained on generated shapes, models/) run through the pipeline as a user
runs it (export with its check, streaming evaluation; the staged recipe)
scores, on its held-out split, the AP recorded when it was trained, within
0.005. A broken transform, decoder, class mapping or a setting that does not
travel with the model moves it far more (the last test shows one)."""
import json

import pytest

from centernet.constants import STANDIN_CHECKPOINT
from centernet.io.shapes import make_shapes_coco
from conftest import ROOT

AP_TOLERANCE = 0.005  # the bound: float32 ONNX Runtime against the PyTorch run that recorded it
CHECKPOINT = ROOT / STANDIN_CHECKPOINT
RECORD = json.loads(CHECKPOINT.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """The stand-in exported for ONNX Runtime as a user exports it (with its
    check against PyTorch, no settings given: they come from the checkpoint),
    and its held-out split, as the record made it."""
    import CenterNet_pth2onnx
    top = tmp_path_factory.mktemp("standin")
    make_shapes_coco(top / "data", "val", RECORD["val_images"], seed=RECORD["recipe"]["seed"])
    onnx = top / "CenterNet.onnx"
    assert CenterNet_pth2onnx.main([str(CHECKPOINT), str(onnx), "--threads", "2"]) == 0
    return top, onnx


def evaluate(model, data, out, *extra):
    import CenterNet_eval
    assert CenterNet_eval.main(["--model", str(model), "--dataset", str(data), "--output", str(out / "results.json"),
                                "--resultfolder", str(out / "eval"), "--no-progress", "--threads", "2",
                                *extra]) == 0
    return json.loads((out / "eval" / "metrics.json").read_text())


def test_the_record_is_what_the_checkpoint_holds():
    import torch
    from centernet.constants import FACTS_FIELD, STANDIN_FIELD
    raw = torch.load(CHECKPOINT, weights_only=True)
    assert {**raw[STANDIN_FIELD], "facts": raw[FACTS_FIELD]} == RECORD
    assert RECORD["val_AP"] > 0.1  # it detects: a broken pipeline scores near 0


def test_streaming_evaluation_reproduces_the_recorded_ap(standin, tmp_path):
    top, onnx = standin
    metrics = evaluate(onnx, top / "data", tmp_path)  # ONNX Runtime, as every runner runs it
    assert metrics["num_images"] == RECORD["val_images"]
    assert abs(metrics["AP"] - RECORD["val_AP"]) <= AP_TOLERANCE, (metrics["AP"], RECORD["val_AP"])
    assert abs(metrics["AP50"] - RECORD["val_AP50"]) <= AP_TOLERANCE
    # the export carries the stand-in's own settings, not COCO's
    from centernet.convert.provenance import read_facts
    facts = read_facts(onnx)
    assert facts.class_names == ("rectangle", "ellipse", "triangle", "cross")
    assert facts.input_size == (RECORD["recipe"]["input_size"],) * 2
    assert set(metrics["per_class"]) == set(facts.class_names)


def test_the_staged_recipe_reproduces_the_recorded_ap(standin, tmp_path):
    import CenterNet_infer
    import CenterNet_postprocess_s1
    import CenterNet_postprocess_s2
    import CenterNet_preprocess
    top, onnx = standin
    data, prep = top / "data", tmp_path / "prep"
    # preprocessing takes the settings from the checkpoint, as run_all.sh runs it
    assert CenterNet_preprocess.main([str(data / "coco" / "val2017"), str(prep), "--model", str(CHECKPOINT),
                                      "--no-progress"]) == 0
    assert CenterNet_infer.main(["--model", str(onnx), "--input", str(prep), "--output", str(tmp_path / "result"),
                                 "--output_dirname", "bs4", "--batchsize", "4", "--no-progress"]) == 0
    results = tmp_path / "results.json"
    assert CenterNet_postprocess_s1.main([f"--bin_data_path={tmp_path / 'result' / 'bs4'}", f"--dataset={data}",
                                          "--meta", str(prep / "meta.json"), "--output", str(results)]) == 0
    assert CenterNet_postprocess_s2.main([f"--dataset={data}", "--results", str(results), "--resultfolder",
                                          str(tmp_path / "eval"), "--meta", str(prep / "meta.json")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert abs(metrics["AP"] - RECORD["val_AP"]) <= AP_TOLERANCE, (metrics["AP"], RECORD["val_AP"])


def test_the_ap_check_fails_when_the_mean_and_std_are_swapped(standin, tmp_path):
    """The check has teeth: the same weights exported with the mean and std
    swapped (as a stage that mixed up the model's settings might) miss the
    recorded AP by more than the tolerance (0.151 against 0.174)."""
    import CenterNet_pth2onnx
    top, _ = standin
    facts = RECORD["facts"]
    mean, std = facts["centernet.mean"].split(","), facts["centernet.std"].split(",")
    swapped = tmp_path / "swapped.onnx"
    assert CenterNet_pth2onnx.main([str(CHECKPOINT), str(swapped), "--mean", *std, "--std", *mean, "--no-check"]) == 0
    metrics = evaluate(swapped, top / "data", tmp_path)
    assert abs(metrics["AP"] - RECORD["val_AP"]) > AP_TOLERANCE, (metrics["AP"], RECORD["val_AP"])  # 0.023 off
