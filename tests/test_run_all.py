"""run_all.sh end to end: the demo pipeline on a handful of images."""
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess

import numpy as np
import pytest
import torch

from centernet.model.checkpoint import load_model
from centernet.io.coco import STAT_NAMES
from centernet.convert.export import export_checked
from centernet.convert.provenance import ExportOptions, file_sha256
from conftest import HANG, ROOT, ctrl_c, kill_group, start_command, wait_for

N = 3
STANDIN = "ctdet_shapes_resdcn18.pth"  # the demo's copy of the stand-in detector


def run_all(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(["bash", str(ROOT / "run_all.sh"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo as a user without COCO meets it: their checkpoint given, no
    dataset, so run_all.sh falls back to the demo (which never loads it)."""
    top = tmp_path_factory.mktemp("run_all")
    work, mine = top / "work", top / "mine.pth"
    mine.write_bytes(b"not loaded")
    r = run_all("--weights", mine, "--data", top / "no_data", "--demo-images", N, "--workdir", work,
                "--batchsize", 2, "--keep", "--threads", 2, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return work, r, mine


def test_given_weights_unused_by_the_demo_are_named(demo_run):
    _, r, mine = demo_run
    assert (f"note: --weights {mine} is not used: the real run needs COCO val2017 as well, and the demo runs "
            "the stand-in detector.") in r.stdout.splitlines()


def test_every_stage_reported(demo_run):
    _, r, _ = demo_run
    assert "DEMO: the stand-in detector" in r.stdout and "it detects shapes, not COCO objects" in r.stdout
    for stage in ("preprocess", "export", "infer", "postprocess_s1", "postprocess_s2", "annotate"):
        assert f"== {stage} done in" in r.stdout
    assert "| AP |" in r.stdout  # the final table
    # s2's summary: no per-class table of every class nor pycocotools' chatter, but where they are
    assert "run_eval_result/per_class_ap.txt" in r.stdout
    assert "Accumulating evaluation results" not in r.stdout and "DONE (t=" not in r.stdout
    # the summary has the setup and the whole run's time besides each stage's
    summary = r.stdout[r.stdout.index("== summary"):]
    assert re.search(r"^  setup +\d+\.\d s$", summary, re.M) and re.search(r"^  total +\d+\.\d s$", summary, re.M)
    # it ends by saying where the pictures are
    tail = r.stdout[r.stdout.index("pictures:"):]
    for name in ("demo_out/", "pr_curves.png", "per_class_ap.png"):
        assert name in tail
    # the final table sets this run's AP beside the stand-in's record, not upstream's COCO figure
    table = r.stdout[r.stdout.index("| metric | value |"):r.stdout.index("pictures:")]
    assert f"| this run, fixed | {N} |" in table and "| the stand-in at training time, fixed 256x256 | 200 |" in table
    assert "published AP" not in table
    from centernet.constants import RANDOM_WEIGHTS_NOTE
    assert RANDOM_WEIGHTS_NOTE not in r.stdout  # trained weights


def test_annotate_stage_shows_a_runnable_command(demo_run, tmp_path):
    _, r, _ = demo_run
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("== annotate: "))
    command = shlex.split(line[len("== annotate: "):])
    assert command[1] == "CenterNet_demo.py", line
    out = tmp_path / "again"
    command[command.index("--output") + 1] = str(out)
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert len(json.loads((out / "detections.json").read_text())["images"]) == N


def test_every_stage_output(demo_run):
    work, _, _ = demo_run
    ann = json.loads((work / "data/coco/annotations/instances_val2017.json").read_text())
    stems = sorted(img["file_name"].rsplit(".", 1)[0] for img in ann["images"])
    assert len(stems) == N
    prep = work / "prep_dataset"
    assert sorted(p.stem for p in prep.glob("*.bin")) == stems
    assert all(p.stat().st_size == 3 * 256 * 256 * 4 for p in prep.glob("*.bin"))  # the stand-in's own size
    assert set(json.loads((prep / "meta.json").read_text())["images"]) == {i["file_name"] for i in ann["images"]}
    dump = work / "result" / "dumpout_bs2"
    for stem in stems:
        sizes = [(dump / f"{stem}_{i}.bin").stat().st_size for i in range(3)]
        assert sizes == [4 * 64 * 64 * 4, 2 * 64 * 64 * 4, 2 * 64 * 64 * 4]
    results = json.loads((work / "save" / "results.json").read_text())
    per_image = np.bincount([d["image_id"] for d in results])
    assert sorted(per_image[per_image > 0].tolist()) == [100] * N
    metrics = json.loads((work / "run_eval_result" / "metrics.json").read_text())
    assert set(STAT_NAMES) <= set(metrics) and "per_class" in metrics
    for name in ("pr_curves.png", "per_class_ap.png"):
        assert (work / "run_eval_result" / name).stat().st_size > 0
    # the demo script on the evaluated images (all N here: fewer than its limit of 4)
    annotated = json.loads((work / "demo_out" / "detections.json").read_text())["images"]
    assert sorted(e["file"].rsplit("/", 1)[1] for e in annotated) == [f"{s}.jpg" for s in stems]
    assert all((work / "demo_out" / f"{s}.jpg").is_file() for s in stems)
    # the stand-in's weights are trained, and every file that describes the run says they are not random
    assert metrics["random_weights"] is False
    assert json.loads((work / "demo_out" / "detections.json").read_text())["random_weights"] is False
    assert json.loads((work / "save" / "results.model.json").read_text())["random_weights"] is False
    assert json.loads((work / "result" / "dumpout_bs2_summary.json").read_text())["random_weights"] is False
    # the pictures name the shapes
    labels = {d["class"] for e in annotated for d in e["detections"]}
    assert labels and labels <= {"rectangle", "ellipse", "triangle", "cross"}


def test_rerun_resumes(demo_run):
    work, _, _ = demo_run
    r = run_all("--demo", "--demo-images", N, "--workdir", work, "--batchsize", 2, "--keep",
                "--threads", 2, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "export: " in r.stdout and "is up to date" in r.stdout
    assert f"0 converted, {N} already done" in r.stdout
    assert "nothing to do" in r.stdout


def onnx_metadata(path):
    import onnx
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def test_other_weights_with_an_older_date_are_exported_again(demo_run, tmp_path):
    """A run with other weights in the same workdir exports them, though their
    file is older than the export there (a restored download keeps its date);
    the next run with them keeps that export."""
    work = tmp_path / "w"
    work.mkdir()
    # The state after a run with the demo's weights (w1): its data and export.
    shutil.copytree(demo_run[0] / "data", work / "data")
    shutil.copy(demo_run[0] / "CenterNet.onnx", work)
    state = torch.load(demo_run[0] / STANDIN, weights_only=True)
    state["state_dict"]["module.hm.2.bias"] += 0.5  # other weights: every score changes
    w2 = tmp_path / "w2.pth"
    torch.save(state, w2)
    old = (work / "CenterNet.onnx").stat().st_mtime - 3600
    os.utime(w2, (old, old))
    args = ("--weights", w2, "--data", work / "data", "--workdir", work, "--limit", 1, "--threads", 2)
    r = run_all(*args, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "is up to date" not in r.stdout
    assert f"{work}/CenterNet.onnx was exported from another checkpoint" in r.stdout
    sha = hashlib.sha256(w2.read_bytes()).hexdigest()
    assert onnx_metadata(work / "CenterNet.onnx")["centernet.checkpoint_sha256"] == sha
    # the pictures are w2's too
    ours, w1s = (json.loads((d / "demo_out" / "detections.json").read_text())["images"][0]
                 for d in (work, demo_run[0]))
    assert ours["file"].rsplit("/", 1)[1] == w1s["file"].rsplit("/", 1)[1]
    assert [d["score"] for d in ours["detections"]] != [d["score"] for d in w1s["detections"]]
    stamp = (work / "CenterNet.onnx").stat().st_mtime_ns
    r = run_all(*args, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (f"{work}/CenterNet.onnx is up to date (exported from {w2}, sha256 {sha[:8]}…, same options, "
            f"checked)") in r.stdout
    assert "exporting again" not in r.stdout and (work / "CenterNet.onnx").stat().st_mtime_ns == stamp


def test_missing_weights_says_what_to_fetch_then_runs_demo(demo_run, tmp_path):
    # The demo's data, weights and export, made once for this module: the
    # fallback reuses them (as a re-run would) instead of making them again.
    work = tmp_path / "w"
    work.mkdir()
    shutil.copytree(demo_run[0] / "data", work / "data")
    for name in (STANDIN, "CenterNet.onnx"):  # the export records these weights: it is kept
        shutil.copy(demo_run[0] / name, work)
    r = run_all("--weights", tmp_path / "none.pth", "--data", tmp_path / "nodata", "--workdir", work,
                "--threads", 2, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ctdet_coco_dla_2x.pth" in r.stdout and "MODEL_ZOO" in r.stdout
    assert "val2017.zip" in r.stdout and "annotations_trainval2017.zip" in r.stdout
    assert "Running the demo instead" in r.stdout and "| AP |" in r.stdout
    assert "CenterNet.onnx is up to date" in r.stdout
    assert not (work / "prep_dataset").exists()  # cleaned up without --keep


def test_bad_option(tmp_path):
    r = run_all("--backend", "tpu", cwd=tmp_path)
    assert r.returncode == 2 and "--backend must be onnxruntime, ascend or torch" in r.stderr
    r = run_all("--precision", "bf16", cwd=tmp_path)
    assert r.returncode == 2 and "--precision is for --backend torch" in r.stderr
    r = run_all("--backend", "torch", "--device", "tensorrt", cwd=tmp_path)
    assert r.returncode == 2 and "--backend torch runs on cpu or cuda" in r.stderr


def test_keep_res_flip_staged(demo_run, tmp_path):
    """--keep-res --flip: keep-resolution bins, a dynamic-size export with the
    flip test in its graph, s1 told by meta.json, the mode and upstream's
    published AP for it in the final table."""
    work = tmp_path / "work"
    work.mkdir()
    # The demo's data and weights, made once for this module, and the export
    # this mode needs, made and checked here at 64x64 instead of run_all's
    # 512x512 (a dynamic-size export is the same graph whatever size it was
    # traced at): run_all finds it up to date.
    shutil.copytree(demo_run[0] / "data", work / "data")
    shutil.copy(demo_run[0] / STANDIN, work)
    model = load_model(work / STANDIN)
    facts = model.facts  # the stand-in's settings, as CenterNet_pth2onnx.py takes them from the checkpoint
    export_checked(model, work / "CenterNet_dynamic_flip.onnx",
                   ExportOptions(dynamic_size=True, flip=True, input_size=facts.input_size, mean=facts.mean,
                                 std=facts.std, class_names=facts.class_names),
                   file_sha256(work / STANDIN), STANDIN, batch=1, threads=2, trace_size=(64, 64))
    r = run_all("--demo", "--demo-images", N, "--workdir", work, "--keep-res", "--flip", "--keep", "--threads", 2,
                cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "| this run, keep-res + flip |" in r.stdout
    assert "CenterNet_dynamic_flip.onnx is up to date" in r.stdout
    meta = json.loads((work / "prep_dataset" / "meta.json").read_text())
    assert meta["keep_res"] and meta["flip_test"]
    assert (work / "CenterNet_dynamic_flip.onnx").is_file()
    dump = work / "result" / "dumpout_bs1_keepres_flip"
    for name, entry in meta["images"].items():
        h, w = entry["input_size"]
        assert (h, w) == ((entry["height"] | 31) + 1, (entry["width"] | 31) + 1)
        assert (dump / f"{name.rsplit('.', 1)[0]}_0.bin").stat().st_size == 4 * (h // 4) * (w // 4) * 4
    assert "hm as flip-averaged heatmap" in r.stdout
    assert len(json.loads((work / "save" / "results.json").read_text())) == 100 * N


@pytest.mark.parametrize("args, line", [
    (("--batch-size", "4"), "unknown option --batch-size; did you mean --batchsize?"),
    (("--Keep_Res",), "unknown option --Keep_Res; did you mean --keep-res?"),
    (("--thread=2",), "unknown option --thread; did you mean --threads?"),
    (("--stram",), "unknown option --stram; did you mean --stream?"),
    (("--up",), "unknown option --up"),
    (("demo",), "unknown option demo; did you mean --demo?"),
])
def test_a_mistyped_option_is_one_line_naming_the_closest(tmp_path, args, line):
    """Before anything else (no .venv, no Python): the line, not the usage."""
    r = run_all(*args, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"error: {line} (bash {ROOT / 'run_all.sh'} --help lists them)"]
    assert not (tmp_path / "work").exists()


def test_every_option_is_in_the_usage():
    """The suggestions come from usage(): every option the parser takes is there."""
    text = (ROOT / "run_all.sh").read_text()
    usage = text[text.index("usage() {"):text.index("\nUSAGE\n}")]
    parsed = re.findall(r"^    (-[-\w|]+)\)", text, re.M)
    assert len(parsed) > 15
    assert [o for o in parsed for o in o.split("|") if o not in usage] == []


@pytest.mark.parametrize("args,message", [
    (("--scales", "0.5,x"), "--scales wants comma-separated numbers"),
    (("--scales", "0.5,1", "--backend", "ascend"), "--scales runs in the streaming evaluation"),
])
def test_mode_option_errors(tmp_path, args, message):
    r = run_all(*args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr


def test_torch_backend_runs_the_checkpoint_without_an_export(demo_run, tmp_path):
    """--backend torch, staged, keep resolution: run_infer.sh on the .pth over
    bins of many sizes (the PyTorch network takes any size), no export stage,
    s1 and s2 as usual, and the demo pictures drawn by PyTorch too."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(demo_run[0] / "data", work / "data")
    shutil.copy(demo_run[0] / STANDIN, work)
    r = run_all("--demo", "--demo-images", N, "--workdir", work, "--backend", "torch", "--keep-res", "--threads", 1,
                cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "== export" not in r.stdout and not list(work.glob("*.onnx"))
    assert "torch backend: cpu, fp32" in r.stdout and "| AP |" in r.stdout and "| this run, keep-res |" in r.stdout
    assert len(json.loads((work / "save" / "results.json").read_text())) == 100 * N
    assert "warning: CenterNet_demo.py" not in r.stdout
    assert len(list((work / "demo_out").glob("*.jpg"))) == N


def test_bad_weights_fail_before_any_heavy_stage(tmp_path, synthetic_coco):
    empty = tmp_path / "EMPTY.pth"
    empty.write_bytes(b"")
    r = run_all("--weights", empty, "--data", synthetic_coco["root"], "--workdir", tmp_path / "w", cwd=ROOT)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        f"error: {empty}: empty file (0 bytes), not a checkpoint; an interrupted download?"]
    assert "== check-weights" in r.stdout and "== preprocess" not in r.stdout
    assert not (tmp_path / "w" / "prep_dataset").exists()


@pytest.mark.slow
def test_ctrl_c_gives_one_resume_hint(tmp_path, synthetic_coco, upstream_checkpoint):
    """The stage says what it kept, and the one way to go on is run_all.sh's
    (not also the stage script's own command)."""
    work = tmp_path / "w"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = start_command(["bash", ROOT / "run_all.sh", "--weights", upstream_checkpoint, "--data",
                          synthetic_coco["root"], "--workdir", work, "--threads", 2], cwd=ROOT, env=env)
    try:
        wait_for(lambda: (work / "prep_dataset").exists() or proc.poll() is not None, "prep_dataset")
        ctrl_c(proc)  # preprocessing (or, if that was quicker, a later stage)
        out, err = proc.communicate(timeout=HANG)
    finally:
        kill_group(proc)
    assert proc.returncode == 130, (out[-2000:], err)
    assert "Traceback" not in err
    hints = [line for line in err.splitlines() if "interrupted" in line or "run the same" in line]
    assert len(hints) == 1, err
    assert re.fullmatch(r"interrupted: .+; run the same run_all\.sh command again to go on from there", hints[0]), err
