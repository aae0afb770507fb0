"""What an export records about its making, when an existing file counts as
current (CenterNet_pth2onnx.py --if-changed, the demo's export cache), and
the export that appears under its name only once checked (export_checked):
on a failed check and on Ctrl-C nothing unchecked is left behind."""
import queue
import shutil
import subprocess
import threading

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from centernet.convert import export as export_module
from centernet.convert.cache import cached_export, export_cache_path
from centernet.convert.export import OutputCheck, export_checked
from centernet.convert.provenance import (CHECKED_KEY, CHECKPOINT_SHA256_KEY, ExportOptions, export_status,
                                          file_sha256, provenance_metadata)
from centernet.errors import UserError
from conftest import PYTHON, ROOT, _env_with_path, ctrl_c, start_command

SHA = "ab" * 32
OTHER_SHA = "cd" * 32
SMALL = (64, 64)


def meta_of(path):
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def tiny_onnx(path, props):
    """A one-node ONNX file with these metadata_props: what export_status reads."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def run_export(*args):
    return subprocess.run([PYTHON, str(ROOT / "CenterNet_pth2onnx.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


# --- export_status: the record against the checkpoint and options --------------------------------


def test_a_file_with_the_same_record_is_current(tmp_path):
    options = ExportOptions(input_size=(128, 160))
    path = tiny_onnx(tmp_path / "m.onnx", provenance_metadata(SHA, "w.pth", options, checked=True))
    status = export_status(path, SHA, options)
    assert status.current and status.checked
    assert status.describe(path, "w.pth", SHA) == (f"{path} is up to date (exported from w.pth, sha256 abababab…, "
                                                   f"same options, checked)")


@pytest.mark.parametrize("recorded,asked,reason", [
    (ExportOptions(), ExportOptions(flip=True), "was exported with other options (flip test no, not yes)"),
    (ExportOptions(), ExportOptions(input_size=(384, 384)), "was exported with other options (input 512x512, not 384x384)"),
    (ExportOptions(), ExportOptions(dynamic_size=True), "was exported with other options (input 512x512, not dynamic)"),
    (ExportOptions(), ExportOptions(dcn="decompose"), "was exported with other options (dcn deformconv, not decompose)"),
    (ExportOptions(), ExportOptions(target="ascend"), "was exported with other options (target onnxruntime, not ascend)"),
])
def test_other_options_are_not_current(tmp_path, recorded, asked, reason):
    path = tiny_onnx(tmp_path / "m.onnx", provenance_metadata(SHA, "w.pth", recorded, checked=True))
    assert export_status(path, SHA, asked).reason == reason


def test_a_dynamic_export_records_its_fixed_mode_size_not_its_trace_size(tmp_path, upstream_checkpoint):
    from centernet.convert.export import export_checked
    from centernet.model.checkpoint import load_model
    path = tmp_path / "m.onnx"
    export_checked(load_model(upstream_checkpoint), path, ExportOptions(dynamic_size=True), SHA, "w.pth", batch=1,
                   trace_size=SMALL)  # a dynamic graph is the same whatever size it was traced at
    assert export_status(path, SHA, ExportOptions(dynamic_size=True)).current
    assert export_status(path, SHA, ExportOptions(dynamic_size=True, input_size=(384, 384))).reason == (
        "was exported with other options (input size 512x512, not 384x384)")


def test_other_settings_are_not_current(tmp_path):
    options = ExportOptions(mean=(0.485, 0.456, 0.406), class_names=["a"] * 80)
    path = tiny_onnx(tmp_path / "m.onnx", provenance_metadata(SHA, "w.pth", options, checked=True))
    assert export_status(path, SHA, options).current
    assert export_status(path, SHA, ExportOptions(class_names=["a"] * 80)).reason == (
        "was exported with other options (mean 0.485,0.456,0.406, not 0.40789654,0.44719302,0.47026115)")
    assert export_status(path, SHA, ExportOptions(mean=(0.485, 0.456, 0.406))).reason.startswith(
        "was exported with other options (class names [\"a\", ")


def test_another_checkpoint_or_no_record_is_not_current(tmp_path):
    options = ExportOptions()
    path = tiny_onnx(tmp_path / "m.onnx", provenance_metadata(SHA, "w.pth", options, checked=True))
    assert export_status(path, OTHER_SHA, options).reason == (
        "was exported from another checkpoint (sha256 abababab…, this one's is cdcdcdcd…)")
    bare = tiny_onnx(tmp_path / "bare.onnx", {"centernet.flip_test": "0"})  # export_onnx alone, or an older export
    assert export_status(bare, SHA, options).reason.startswith("has no record of the checkpoint")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx")
    assert export_status(junk, SHA, options).reason.startswith("cannot be read as ONNX")
    assert export_status(tmp_path / "none.onnx", SHA, options).reason == "does not exist yet"


def test_an_unchecked_file_is_current_only_for_a_run_that_does_not_check(tmp_path):
    options = ExportOptions()
    path = tiny_onnx(tmp_path / "m.onnx", provenance_metadata(SHA, "w.pth", options, checked=False))
    assert meta_of(path)[CHECKED_KEY] == "no (--no-check)"
    assert export_status(path, SHA, options).reason == "was not checked against PyTorch (no (--no-check))"
    status = export_status(path, SHA, options, need_checked=False)
    assert status.current and not status.checked
    assert status.describe(path, "w.pth", SHA).endswith("same options, not checked (--no-check))")


# --- export_checked: temp file, check, record, rename ---------------------------------------------


def failing_check(model, proto, **kw):
    return [OutputCheck("output1", 1.0, 1.0, 1e-6, 1e-3)]


def test_a_failed_check_leaves_no_file_and_no_temp(random_ctdet, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "check_export", failing_check)
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match=r"m\.onnx: exported graph is wrong: output1 differs"):
        export_checked(random_ctdet, out, ExportOptions(input_size=SMALL), SHA, "w.pth")
    assert list(tmp_path.iterdir()) == []
    # an earlier file stays as it was
    out.write_bytes(b"earlier")
    with pytest.raises(UserError):
        export_checked(random_ctdet, out, ExportOptions(input_size=SMALL), SHA, "w.pth")
    assert out.read_bytes() == b"earlier" and list(tmp_path.iterdir()) == [out]


def test_export_checked_records_what_it_was_made_from(random_ctdet, tmp_path):
    out = tmp_path / "m.onnx"
    options = ExportOptions(input_size=SMALL, flip=True)
    done = export_checked(random_ctdet, out, options, SHA, "w.pth", batch=1, threads=2)
    assert done.checked and all(c.ok for c in done.checks)
    assert meta_of(out) == {"centernet.flip_test": "1", "centernet.hm": "sigmoid",
                            CHECKPOINT_SHA256_KEY: SHA, "centernet.checkpoint": "w.pth",
                            "centernet.target": "onnxruntime", "centernet.dcn": "deformconv",
                            "centernet.input": "64x64", CHECKED_KEY: "yes",
                            "centernet.random_weights": "1",  # random_model's weights say so
                            # the model's facts (core/model_facts.py)
                            "centernet.network": "dla_34", "centernet.task": "ctdet",
                            "centernet.heads": "hm:80,wh:2,reg:2",
                            "centernet.head_conv": "256", "centernet.mean": "0.40789654,0.44719302,0.47026115",
                            "centernet.std": "0.28863828,0.27408164,0.27809835", "centernet.input_size": "64x64",
                            "centernet.down_ratio": "4", "centernet.pad": "31"}
    assert list(tmp_path.iterdir()) == [out]
    assert export_status(out, SHA, options).current


# --- CenterNet_pth2onnx.py --if-changed -------------------------------------------------------------


def test_if_changed_reexports_for_a_check_or_other_options_and_keeps_a_current_file(upstream_checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    size = ("--input-size", *SMALL, "--threads", 2)
    r = run_export(upstream_checkpoint, out, *size, "--no-check")
    assert r.returncode == 0, r.stderr
    assert meta_of(out)[CHECKED_KEY] == "no (--no-check)"
    digest = file_sha256(upstream_checkpoint)
    assert meta_of(out)[CHECKPOINT_SHA256_KEY] == digest
    # A run that does not check takes the unchecked file ...
    r = run_export(upstream_checkpoint, out, *size, "--no-check", "--if-changed")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{out} is up to date (exported from {upstream_checkpoint}, sha256 "
                                     f"{digest[:8]}…, same options, not checked (--no-check))"]
    # ... a run that checks does not.
    r = run_export(upstream_checkpoint, out, *size, "--if-changed")
    assert r.returncode == 0, r.stderr
    assert f"{out} was not checked against PyTorch (no (--no-check)); exporting again" in r.stdout
    assert "check passed" in r.stdout and meta_of(out)[CHECKED_KEY] == "yes"
    stamp = out.stat().st_mtime_ns
    r = run_export(upstream_checkpoint, out, *size, "--if-changed")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{out} is up to date (exported from {upstream_checkpoint}, sha256 "
                                     f"{digest[:8]}…, same options, checked)"]
    assert out.stat().st_mtime_ns == stamp
    # Other options: exported again, whatever the file's date.
    r = run_export(upstream_checkpoint, out, "--input-size", 64, 96, "--flip", "--no-check", "--if-changed")
    assert r.returncode == 0, r.stderr
    assert (f"{out} was exported with other options (input 64x64, not 64x96; flip test no, not yes); "
            f"exporting again") in r.stdout
    assert meta_of(out)["centernet.input"] == "64x96" and meta_of(out)["centernet.flip_test"] == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_if_changed_help_names_its_default():
    r = run_export("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--if-changed" in text and "(default: off, always export)" in text


# --- Ctrl-C -------------------------------------------------------------------------------------------

# A sitecustomize.py that holds the export in export_onnx or check_export
# (HOLD_EXPORT=export|check) until Ctrl-C, after saying so on stdout: the
# test interrupts at that point and no sooner or later.
HOLD_SITECUSTOMIZE = """
import os, time
_hold = os.environ.get("HOLD_EXPORT")
if _hold:
    import centernet.convert.export as _export
    _name = {"export": "export_onnx", "check": "check_export"}[_hold]

    def _held(*args, **kwargs):
        print(f"held in {_name}", flush=True)
        while True:
            time.sleep(1)

    setattr(_export, _name, _held)
"""


@pytest.fixture
def hold_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("hold_export")
    (site / "sitecustomize.py").write_text(HOLD_SITECUSTOMIZE)
    return lambda stage: dict(_env_with_path(f"{site}:{ROOT}"), HOLD_EXPORT=stage)


def interrupt_when(proc, line, timeout=600, before=lambda: None):
    """Ctrl-C once `proc` printed `line` on stdout (calling `before` first);
    returns (stdout, stderr)."""
    lines = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(ln) for ln in iter(proc.stdout.readline, "")] + [lines.put(None)],
                              daemon=True)
    reader.start()
    seen = []
    while True:
        got = lines.get(timeout=timeout)  # only bounds a hang
        assert got is not None, ("exited before: " + line, "".join(seen), proc.stderr.read())
        seen.append(got)
        if got.strip() == line:
            break
    before()
    ctrl_c(proc)
    proc.wait(timeout=timeout)
    reader.join(timeout=timeout)
    rest = []
    while not lines.empty():
        rest.append(lines.get() or "")
    return "".join(seen + rest), proc.stderr.read()


def test_ctrl_c_during_the_check_leaves_nothing_unchecked(upstream_checkpoint, tmp_path, hold_env):
    out = tmp_path / "m.onnx"
    proc = start_command([PYTHON, ROOT / "CenterNet_pth2onnx.py", upstream_checkpoint, out, "--input-size", *SMALL],
                         cwd=ROOT, env=hold_env("check"))
    held = []
    stdout, stderr = interrupt_when(proc, "held in check_export", before=lambda: held.extend(tmp_path.iterdir()))
    assert proc.returncode == 130, (stdout, stderr)
    assert "checking the export against PyTorch (float64) ..." in stdout
    (tmp,) = held  # the export under its temp name, and nothing under the final one
    assert tmp == out.with_name(f".m.onnx.{proc.pid}.unchecked.tmp")
    assert stderr.strip().splitlines() == [
        f"interrupted: the unchecked export {tmp} was removed; {out} was not written; run the same command again"]
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_the_check_leaves_an_earlier_file_as_it_was(upstream_checkpoint, tmp_path, hold_env):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"earlier")
    proc = start_command([PYTHON, ROOT / "CenterNet_pth2onnx.py", upstream_checkpoint, out, "--input-size", *SMALL,
                          "--if-changed"], cwd=ROOT, env=hold_env("check"))
    stdout, stderr = interrupt_when(proc, "held in check_export")
    assert proc.returncode == 130, (stdout, stderr)
    (line,) = stderr.strip().splitlines()
    assert line.startswith("interrupted: the unchecked export ") and line.endswith(
        f".unchecked.tmp was removed; {out} was left as it was; run the same command again"), line
    assert out.read_bytes() == b"earlier" and list(tmp_path.iterdir()) == [out]


def test_ctrl_c_before_anything_was_written_says_so(upstream_checkpoint, tmp_path, hold_env):
    out = tmp_path / "m.onnx"
    proc = start_command([PYTHON, ROOT / "CenterNet_pth2onnx.py", upstream_checkpoint, out, "--input-size", *SMALL],
                         cwd=ROOT, env=hold_env("export"))
    stdout, stderr = interrupt_when(proc, "held in export_onnx")
    assert proc.returncode == 130, (stdout, stderr)
    assert stderr.strip().splitlines() == ["interrupted: nothing was written; run the same command again"]
    assert list(tmp_path.iterdir()) == []


# --- the demo's export cache shares the record and the checked export -----------------------------


def test_cache_reexports_an_unchecked_file_and_records_like_the_script(upstream_checkpoint, tmp_path):
    pth = tmp_path / "w.pth"
    shutil.copy(upstream_checkpoint, pth)
    cache = export_cache_path(pth, dynamic_size=False, input_size=SMALL)
    # The script's --no-check export of the same checkpoint in the cache's place: same record, unchecked.
    r = run_export(pth, cache, "--input-size", *SMALL, "--no-check")
    assert r.returncode == 0, r.stderr
    assert cached_export(pth, input_size=SMALL, threads=2) == cache
    meta = meta_of(cache)
    assert meta[CHECKED_KEY] == "yes" and meta[CHECKPOINT_SHA256_KEY] == file_sha256(pth)
    # and now the script takes the cache's file as its own
    r = run_export(pth, cache, "--input-size", *SMALL, "--if-changed")
    assert r.returncode == 0 and "is up to date" in r.stdout and "same options, checked" in r.stdout, r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["w.pth", cache.name])
    # A changed checkpoint of the same name is exported again.
    state = torch.load(pth, weights_only=True)
    state["state_dict"]["module.hm.2.bias"] += 0.5
    torch.save(state, pth)
    cached_export(pth, input_size=SMALL, threads=2)
    assert meta_of(cache)[CHECKPOINT_SHA256_KEY] == file_sha256(pth) != meta[CHECKPOINT_SHA256_KEY]
