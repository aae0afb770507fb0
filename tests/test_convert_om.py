"""convert_om.sh cannot compile here: check its arguments and the exact atc
command lines it runs, with stub `atc` and `npu-smi` first on PATH."""
import hashlib
import os
import subprocess
import sys

import pytest

from conftest import HANG, ROOT, ctrl_c, kill_group, start_command, wait_for

NPU_SMI_INFO = """\
+-------------------+-----------------+------------------------------------------------------+
| NPU     Name      | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device    | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===================+=================+======================================================+
| 0       310P3     | OK              | 15.8         42                0    / 0              |
| 0       0         | 0000:82:00.0    | 0            1074 / 21534                            |
+===================+=================+======================================================+
"""


@pytest.fixture
def stubs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "atc.log"
    (bin_dir / "atc").write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    (bin_dir / "npu-smi").write_text(f"#!/bin/sh\ncat <<'EOF'\n{NPU_SMI_INFO}EOF\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    model = tmp_path / "CenterNet_ascend.onnx"
    model.write_bytes(b"onnx")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
               ASCEND_SET_ENV=str(tmp_path / "no_set_env.sh"))
    return tmp_path, model, log, env


def convert(*args, env, cwd):
    return subprocess.run(["bash", str(ROOT / "convert_om.sh"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd)


def test_one_atc_call_per_batch_size(stubs):
    tmp, model, log, env = stubs
    r = convert(model, "--batchsizes", "1 4", "--soc_version", "Ascend910B", env=env, cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == [
        f"--framework=5 --model={model} --output=CenterNet_bs{b} --input_format=NCHW "
        f"--input_shape=actual_input:{b},3,512,512 --log=error --soc_version=Ascend910B"
        for b in (1, 4)]


def test_soc_version_read_from_npu_smi(stubs):
    tmp, model, log, env = stubs
    r = convert(model, "--output_prefix", "out/cn", "--input-size", 384, 640, env=env, cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == [
        "--framework=5", f"--model={model}", "--output=out/cn_bs1", "--input_format=NCHW",
        "--input_shape=actual_input:1,3,384,640", "--log=error", "--soc_version=Ascend310P3"]


def test_set_env_is_sourced(stubs):
    tmp, model, log, env = stubs
    set_env = tmp / "set_env.sh"
    set_env.write_text(f'echo sourced > "{tmp}/sourced"\n')
    r = convert(model, "--soc_version", "Ascend310P3", env=dict(env, ASCEND_SET_ENV=str(set_env)), cwd=tmp)
    assert r.returncode == 0 and (tmp / "sourced").exists()


@pytest.mark.parametrize("args,message", [
    ((), "no ONNX model given"),
    (("missing.onnx",), "missing.onnx: file not found"),
    (("{model}", "--batchsizes", "1 x"), "batch size 'x' is not a positive integer"),
    (("{model}", "--bogus"), "unknown option --bogus"),
])
def test_argument_errors(stubs, args, message):
    tmp, model, log, env = stubs
    r = convert(*[a.format(model=model) for a in args], env=env, cwd=tmp)
    assert r.returncode == 2 and message in r.stderr
    assert not log.exists()


@pytest.mark.parametrize("option, meant", [
    ("--batchsize", "--batchsizes"), ("--soc-version=Ascend310P3", "--soc_version"), ("--keepres", "--keep-res"),
])
def test_a_mistyped_option_is_one_line_naming_the_closest(stubs, option, meant):
    tmp, model, log, env = stubs
    r = convert(model, option, "1", env=env, cwd=tmp)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"error: unknown option {option.split('=')[0]}; did you mean {meant}? "
                                     f"(bash {ROOT / 'convert_om.sh'} --help lists them)"]
    assert not log.exists()


def test_missing_atc_is_explained(stubs):
    tmp, model, log, env = stubs
    (tmp / "bin" / "atc").unlink()
    r = convert(model, "--soc_version", "Ascend310P3", env=dict(env, PATH=f"{tmp / 'bin'}:/usr/bin:/bin"), cwd=tmp)
    assert r.returncode == 2 and "atc not found: install the CANN toolkit" in r.stderr


def write_meta(path, sizes, keep_res=True):
    """A keep-resolution meta.json for images of the given (width, height)."""
    import json
    from centernet.pipeline.preprocess import meta_entry
    images = {f"{i:03d}.jpg": meta_entry(h, w, keep_res=keep_res) for i, (w, h) in enumerate(sizes)}
    path.write_text(json.dumps({"images": images, "keep_res": keep_res, "input_size": None}))
    return path


def test_keep_res_gears_from_meta(stubs):
    tmp, model, log, env = stubs
    # (w, h) -> inputs 512x672, 448x672 (twice), 672x512: three distinct gears, ascending
    meta = write_meta(tmp / "meta.json", [(640, 480), (640, 427), (500, 640), (640, 420)])
    r = convert(model, "--keep-res", "--meta", meta, "--batchsizes", "1 4", "--soc_version", "Ascend310P3",
                env=env, cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert "3 input sizes" in r.stdout
    assert log.read_text().splitlines() == [
        f"--framework=5 --model={model} --output=CenterNet_bs{b} --input_format=NCHW "
        f"--input_shape=actual_input:{b},3,-1,-1 --dynamic_image_size=448,672;512,672;672,512 "
        f"--log=error --soc_version=Ascend310P3" for b in (1, 4)]


def test_keep_res_with_one_size_is_a_static_shape(stubs):
    tmp, model, log, env = stubs
    meta = write_meta(tmp / "meta.json", [(640, 480), (650, 481)])  # both 512x672
    r = convert(model, "--keep-res", "--meta", meta, "--soc_version", "Ascend310P3", env=env, cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == [
        "--framework=5", f"--model={model}", "--output=CenterNet_bs1", "--input_format=NCHW",
        "--input_shape=actual_input:1,3,512,672", "--log=error", "--soc_version=Ascend310P3"]


def test_keep_res_flip_export_through_atc(stubs, random_ctdet, tiny_coco):
    """The recipe's keep resolution + flip on Ascend: an ascend-target export
    with --flip --dynamic-size and the gears of a real keep-res preprocessing."""
    from centernet.convert.export import export_onnx
    from centernet.pipeline.preprocess import preprocess_folder
    tmp, _, log, env = stubs
    model = tmp / "CenterNet_ascend_flip.onnx"
    export_onnx(random_ctdet, model, target="ascend", input_size=(64, 64), dynamic_size=True, flip=True)
    preprocess_folder(tiny_coco["images_dir"], tmp / "prep", workers=1, progress=False, keep_res=True,
                      flip_test=True)
    r = convert(model, "--keep-res", "--meta", tmp / "prep" / "meta.json", "--soc_version", "Ascend310P3",
                env=env, cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == [
        "--framework=5", f"--model={model}", "--output=CenterNet_bs1", "--input_format=NCHW",
        "--input_shape=actual_input:1,3,-1,-1", "--dynamic_image_size=64,96;64,128;96,96",
        "--log=error", "--soc_version=Ascend310P3"]


def test_keep_res_errors(stubs):
    tmp, model, log, env = stubs
    many = write_meta(tmp / "many.json", [(w, h) for w in range(32, 32 * 12, 32) for h in range(32, 32 * 11, 32)])
    fixed = write_meta(tmp / "fixed.json", [(640, 480)], keep_res=False)
    for args, message in [
        (("--keep-res",), "--keep-res needs --meta"),
        (("--meta", many), "--meta goes with --keep-res"),
        (("--keep-res", "--meta", tmp / "none.json"), "none.json: file not found"),
        (("--keep-res", "--meta", fixed), "fixed.json: not written with --keep-res"),
        (("--keep-res", "--meta", many), "110 distinct input sizes, but ATC takes at most 100"),
    ]:
        r = convert(model, *args, "--soc_version", "Ascend310P3", env=env, cwd=tmp)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not log.exists()


@pytest.mark.slow
def test_ctrl_c_removes_the_half_written_om(stubs):
    """Ctrl-C while atc writes the second .om: that one is removed, the first kept.

    The stub atc writes part of its .om, then waits to read a FIFO that
    nobody writes: it stays there until the Ctrl-C, however slow the machine.
    It is one process with Ctrl-C at its default, as a compiled atc is, so
    the Ctrl-C ends it whole: not a shell script, which catches SIGINT while
    it opens a file (it reports the interrupted open and goes on) and can
    miss one that lands while it starts a child (a `sleep` would then hold
    the output pipes open until it ends)."""
    tmp, model, log, env = stubs
    never = tmp / "never"
    os.mkfifo(never)
    (tmp / "bin" / "atc").write_text(f"""#!{sys.executable}
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
out = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--output=")][0]
with open({str(log)!r}, "a") as f:
    print(*sys.argv[1:], file=f)
with open(out + ".om", "w") as f:
    f.write("half" if out.endswith("bs4") else "whole")
if out.endswith("bs4"):
    open({str(never)!r}).read()
""")
    proc = start_command(["bash", ROOT / "convert_om.sh", model, "--batchsizes", "1 4", "--soc_version",
                          "Ascend310P3"], cwd=tmp, env=env)
    try:
        wait_for(lambda: (tmp / "CenterNet_bs4.om").exists() or proc.poll() is not None, "atc's half .om")
        ctrl_c(proc)
        out, err = proc.communicate(timeout=HANG)
    finally:
        kill_group(proc)
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines() == ["interrupted: CenterNet_bs4.om removed (incomplete); complete: "
                                        "CenterNet_bs1.om; run the same command again"]
    assert (tmp / "CenterNet_bs1.om").read_text() == "whole" and not (tmp / "CenterNet_bs4.om").exists()


def test_if_changed_keeps_an_om_converted_from_the_same_onnx_with_the_same_options(stubs):
    tmp, model, log, env = stubs
    # this atc writes its .om, as the real one does
    (tmp / "bin" / "atc").write_text('#!/bin/sh\nfor a; do case "$a" in --output=*) out="${a#--output=}";; esac; done\n'
                                     f'echo "$@" >> "{log}"\nprintf om > "$out.om"\n')

    def run(*args):
        r = convert(model, "--soc_version", "Ascend310P3", "--if-changed", *args, env=env, cwd=tmp)
        assert r.returncode == 0, r.stderr
        return r.stdout, len(log.read_text().splitlines())

    out, calls = run()
    assert calls == 1 and (tmp / "CenterNet_bs1.om.source").is_file()
    out, calls = run()
    assert calls == 1, out
    assert out.strip() == f"CenterNet_bs1.om is up to date (converted from {model}, sha256 " \
                          f"{hashlib.sha256(b'onnx').hexdigest()[:8]}…, same options)"
    # another chip, another ONNX file (whatever its date), another batch size: converted
    out, calls = run("--soc_version", "Ascend910B")
    assert calls == 2
    old = os.stat(model).st_mtime - 3600
    model.write_bytes(b"other onnx")
    os.utime(model, (old, old))
    out, calls = run("--soc_version", "Ascend910B")
    assert calls == 3 and "atc: " in out
    out, calls = run("--soc_version", "Ascend910B", "--batchsizes", "1 2")
    assert calls == 4 and "CenterNet_bs1.om is up to date" in out and "--output=CenterNet_bs2 " in log.read_text()
    # an .om without its record (converted before records, or by hand) is converted again
    (tmp / "CenterNet_bs2.om.source").unlink()
    out, calls = run("--soc_version", "Ascend910B", "--batchsizes", "2")
    assert calls == 5


def test_a_failed_conversion_leaves_no_record(stubs):
    tmp, model, log, env = stubs
    (tmp / "bin" / "atc").write_text('#!/bin/sh\nprintf half > CenterNet_bs1.om\nexit 1\n')
    (tmp / "CenterNet_bs1.om.source").write_text("an earlier conversion's record")
    r = convert(model, "--soc_version", "Ascend310P3", "--if-changed", env=env, cwd=tmp)
    assert r.returncode != 0
    assert not (tmp / "CenterNet_bs1.om.source").exists()
