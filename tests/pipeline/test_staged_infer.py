"""run_infer.sh: ais_bench's command line and file layout on ONNX Runtime."""
import json
import os
import re
import shlex
import subprocess

import numpy as np
import pytest
import torch

from centernet.io.binio import write_bin
from centernet.pipeline.staged_infer import run_loop
from conftest import (HANG, ROOT, assert_one_line_error, assert_parity, ctrl_c, kill_group, photo_inputs, run_infer,
                      start_command, wait_for)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prep_dataset")
    arrays = {}
    for stem, x in zip(("000000000139", "000000000285", "000000000632"), photo_inputs(3, (512, 512))):
        arrays[stem] = x
        write_bin(folder / f"{stem}.bin", x)
    return folder, arrays


@pytest.fixture(scope="module")
def reference(random_ctdet, inputs):
    _, arrays = inputs
    with torch.no_grad():
        outs = random_ctdet(torch.from_numpy(np.stack(list(arrays.values()))))
    return {stem: [o[i].numpy() for o in outs] for i, stem in enumerate(arrays)}


@pytest.mark.parametrize("batchsize", [1, 2])  # 2: three images, so a partial last batch
def test_outputs_match_pytorch_in_ais_bench_layout(ctdet_onnx, inputs, reference, tmp_path, batchsize):
    folder, _ = inputs
    name = f"dumpout_bs{batchsize}"
    r = run_infer("--model", ctdet_onnx, "--input", folder, "--output", tmp_path,
                  "--output_dirname", name, "--batchsize", batchsize, "--threads", 2)
    assert r.returncode == 0, r.stderr
    assert "fps" in r.stdout and "p99" in r.stdout
    out_dir = tmp_path / name
    expected_files = {f"{stem}_{i}.bin" for stem in reference for i in range(3)}
    assert {p.name for p in out_dir.iterdir()} == expected_files
    shapes = [(80, 128, 128), (2, 128, 128), (2, 128, 128)]
    for stem, ref in reference.items():
        for i, (shape, r_out) in enumerate(zip(shapes, ref)):
            got = np.fromfile(out_dir / f"{stem}_{i}.bin", dtype=np.float32)
            assert got.size == np.prod(shape)
            assert_parity(got.reshape(shape), r_out, what=f"{stem}_{i}")
    summary = json.loads((tmp_path / f"{name}_summary.json").read_text())
    assert summary["input"] == str(folder)  # s1 finds meta.json through it
    assert summary["images"] == 3 and summary["batches"] == (3 if batchsize == 1 else 2)
    assert summary["fps"] > 0 and summary["latency_ms_p50"] > 0


def test_wrong_size_bin_is_named(ctdet_onnx, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_bin(folder / "a.bin", np.zeros((3, 512, 512)))
    write_bin(folder / "b.bin", np.zeros((3, 512, 100)))
    r = run_infer("--model", ctdet_onnx, "--input", folder, "--output", tmp_path / "out", "--progress",
                  "--output_dirname", "d")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "b.bin" in r.stderr and "bytes, expected 3145728" in r.stderr
    # The progress bar is ended first: the error starts a line of its own.
    assert "infer:" in r.stderr and re.search(r"(^|\n)error: \S*b\.bin: ", r.stderr), r.stderr


def test_loop_mode(ctdet_onnx):
    s = run_loop(ctdet_onnx, loop=2, batchsize=2, threads=2, warmup=1)
    assert s["images"] == 4 and s["batches"] == 2 and s["fps"] > 0


def test_the_summary_says_whether_the_weights_are_random(ctdet_onnx, ordinary_onnx, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_bin(folder / "a.bin", photo_inputs(1, (512, 512))[0])
    for name, model, random_weights in (("random", ctdet_onnx, True), ("ordinary", ordinary_onnx, False)):
        r = run_infer("--model", model, "--input", folder, "--output", tmp_path / "out", "--output_dirname", name,
                      "--threads", 2)
        assert r.returncode == 0, r.stderr
        # CenterNet_postprocess_s1.py reads it from the summary file and passes it on
        summary = json.loads((tmp_path / "out" / f"{name}_summary.json").read_text())
        assert summary["random_weights"] is random_weights
        assert ("RANDOM WEIGHTS" in r.stdout) is random_weights


def test_empty_input_and_missing_model(ctdet_onnx, tmp_path):
    r = run_infer("--model", ctdet_onnx, "--input", tmp_path, "--output", tmp_path / "o")
    assert r.returncode == 2 and "no .bin files" in r.stderr
    r = run_infer("--model", tmp_path / "none.onnx", "--loop", 1)
    assert r.returncode == 2 and "model file not found" in r.stderr and "Traceback" not in r.stderr


def test_om_model_without_ais_bench_says_where_it_comes_from(tmp_path):
    r = run_infer("--model", tmp_path / "CenterNet_bs1.om", "--input", tmp_path, "--output", tmp_path)
    assert r.returncode == 2 and "ais_bench is not installed" in r.stderr and "gitee.com/ascend/tools" in r.stderr


def test_om_model_hands_the_same_arguments_to_ais_bench(tmp_path):
    # A stub ais_bench package records the command line it was given.
    stub = tmp_path / "stub" / "ais_bench"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    (stub / "__main__.py").write_text(
        "import sys, pathlib\npathlib.Path(sys.argv[-1] + '.args').write_text(' '.join(sys.argv[1:]))\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "stub"))
    args = ["--model", "CenterNet_bs1.om", "--input", "prep", "--output", "result",
            "--output_dirname", str(tmp_path / "rec")]
    r = run_infer(*args, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rec.args").read_text() == " ".join(args)


def test_skip_existing_resumes(ctdet_onnx, inputs, reference, tmp_path):
    folder, _ = inputs
    args = ["--model", ctdet_onnx, "--input", folder, "--output", tmp_path, "--output_dirname", "d",
            "--batchsize", 2, "--skip-existing"]
    assert run_infer(*args).returncode == 0
    stem = next(iter(reference))
    (tmp_path / "d" / f"{stem}_1.bin").unlink()
    (tmp_path / "d" / f"{stem}_2.bin").write_bytes(b"half")  # as if cut off mid-write
    r = run_infer(*args)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "d_summary.json").read_text())
    assert summary["images"] == 1 and summary["skipped"] == 2 and "2 already done" in r.stdout
    got = np.fromfile(tmp_path / "d" / f"{stem}_2.bin", dtype=np.float32).reshape(2, 128, 128)
    assert_parity(got, reference[stem][2])
    r = run_infer(*args)
    assert r.returncode == 0 and "nothing to do" in r.stdout


@pytest.fixture(scope="module")
def keep_res_prep(tiny_coco, tmp_path_factory):
    """Keep-resolution bins of five tiny images: three input sizes."""
    from centernet.pipeline.preprocess import preprocess_folder
    prep = tmp_path_factory.mktemp("prep_keepres")
    preprocess_folder(tiny_coco["images_dir"], prep, workers=1, progress=False, keep_res=True)
    meta = json.loads((prep / "meta.json").read_text())
    return prep, {name.rsplit(".", 1)[0]: tuple(e["input_size"]) for name, e in meta["images"].items()}


def test_mixed_sizes_in_one_dynamic_session(random_ctdet, ctdet_onnx_dynamic, keep_res_prep, tmp_path):
    prep, sizes = keep_res_prep
    assert len(set(sizes.values())) == 3
    r = run_infer("--model", ctdet_onnx_dynamic, "--input", prep, "--output", tmp_path, "--output_dirname", "d",
                  "--batchsize", 2, "--threads", 2)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "d_summary.json").read_text())
    # equal sizes batched together: 2 + 2 + 1
    assert summary["images"] == 5 and summary["batches"] == 3 and summary["input_sizes"] == 3
    for stem, (h, w) in sizes.items():
        x = np.fromfile(prep / f"{stem}.bin", dtype=np.float32).reshape(1, 3, h, w)
        with torch.no_grad():
            ref = [o[0].numpy() for o in random_ctdet(torch.from_numpy(x))]
        for i, r_out in enumerate(ref):
            got = np.fromfile(tmp_path / "d" / f"{stem}_{i}.bin", dtype=np.float32)
            assert r_out.shape[1:] == (h // 4, w // 4) and got.size == r_out.size
            assert_parity(got.reshape(r_out.shape), r_out, what=f"{stem}_{i}")
    # a resume sees every output complete
    r = run_infer("--model", ctdet_onnx_dynamic, "--input", prep, "--output", tmp_path, "--output_dirname", "d",
                  "--skip-existing")
    assert r.returncode == 0 and "nothing to do: all 5" in r.stdout


def test_fixed_size_model_on_keep_res_bins_says_what_to_export(ctdet_onnx, keep_res_prep, tmp_path):
    prep, _ = keep_res_prep
    r = run_infer("--model", ctdet_onnx, "--input", prep, "--output", tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "fixed 512x512 input" in r.stderr and "--dynamic-size" in r.stderr
    assert "says keep-resolution bins" in r.stderr
    assert "ctdet_coco_dla_2x.pth" not in r.stderr  # a checkpoint the user may not have


def test_fixed_size_model_on_bins_of_another_fixed_size_says_so(ctdet_onnx, tmp_path):
    """Bins preprocessed with --input-size 384 384 are not keep-resolution
    bins: the hint is an export at their size, or preprocessing at the model's."""
    import cv2
    from centernet.pipeline.preprocess import preprocess_folder
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.jpg"), np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8))
    preprocess_folder(tmp_path / "images", tmp_path / "prep", input_size=(384, 384), workers=1, progress=False)
    r = run_infer("--model", ctdet_onnx, "--input", tmp_path / "prep", "--output", tmp_path / "out")
    assert_one_line_error(r, "fixed 512x512 input", "is 384x384", "says fixed 384x384 bins",
                          "--input-size 384 384", "preprocess again with --input-size 512 512")
    assert "keep-resolution" not in r.stderr and "ctdet_coco_dla_2x.pth" not in r.stderr


def test_an_output_folder_that_cannot_be_written_fails_before_inference(ctdet_onnx, inputs, tmp_path):
    folder, _ = inputs
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder goes")
    r = run_infer("--model", ctdet_onnx, "--input", folder, "--output", blocker, "--output_dirname", "d")
    assert_one_line_error(r, f"{blocker}/d", "part of its path is a file")
    assert "--skip-existing" not in r.stderr and "resume" not in r.stderr  # nothing ran, nothing to resume


def test_om_model_over_keep_res_bins_runs_once_per_size(keep_res_prep, tmp_path):
    """An .om with dynamic image size gears: ais_bench once per input size,
    with --dymHW H,W and a folder holding only that size's bins."""
    prep, sizes = keep_res_prep
    stub = tmp_path / "stub" / "ais_bench"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    log = tmp_path / "calls.txt"
    (stub / "__main__.py").write_text(
        "import os, sys\n"
        "args = sys.argv[1:]\n"
        "folder = args[args.index('--input') + 1]\n"
        f"open({str(log)!r}, 'a').write(' '.join(args[args.index('--dymHW'):]) + ' ' + "
        "','.join(sorted(os.listdir(folder))) + '\\n')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "stub"))
    r = run_infer("--model", "CenterNet_bs1.om", "--input", prep, "--output", tmp_path / "out",
                  "--output_dirname", "d", env=env)
    assert r.returncode == 0, r.stderr
    expected = []
    for h, w in sorted(set(sizes.values())):
        stems = sorted(f"{s}.bin" for s, hw in sizes.items() if hw == (h, w))
        expected.append(f"--dymHW {h},{w} {','.join(stems)}")
    assert log.read_text().splitlines() == expected
OUTPUT_BYTES = (80 + 2 + 2) * 128 * 128 * 4  # hm, wh, reg of one 512x512 input


@pytest.mark.slow
def test_full_disk_is_one_line_with_the_resume_command(ctdet_onnx, inputs, tmp_path, small_disk_env):
    folder, arrays = inputs
    env = small_disk_env(tmp_path / "out", 1.5 * OUTPUT_BYTES)  # room for one image's outputs
    r = run_infer("--model", ctdet_onnx, "--input", folder, "--output", tmp_path / "out", "--output_dirname", "d",
                  "--threads", 2, "--no-progress", env=env)
    second = sorted(arrays)[1]
    assert_one_line_error(r, f"{tmp_path}/out/d/{second}_0.bin: cannot write (No space left on device)",
                          f"1 of 3 images have complete outputs, kept in {tmp_path}/out/d",
                          f"to resume, run: bash {ROOT}/run_infer.sh --model {ctdet_onnx}", "--skip-existing")
    assert sorted(p.name for p in (tmp_path / "out" / "d").iterdir()) == [f"{sorted(arrays)[0]}_{i}.bin"
                                                                         for i in range(3)]


@pytest.mark.slow
def test_ctrl_c_names_the_command_that_resumes(ctdet_onnx, inputs, reference, tmp_path):
    folder, _ = inputs
    first = sorted(reference)[0]
    proc = start_command(["bash", ROOT / "run_infer.sh", "--model", ctdet_onnx, "--input", folder, "--output",
                          tmp_path, "--output_dirname", "d", "--threads", 2], cwd=ROOT)
    try:
        wait_for(lambda: (tmp_path / "d" / f"{first}_2.bin").exists() or proc.poll() is not None,
                 "first image's outputs")
        ctrl_c(proc)  # while the second image runs
        out, err = proc.communicate(timeout=HANG)
    finally:
        kill_group(proc)
    assert proc.returncode == 130, (out, err)
    message = err.strip().split("\n")[-1]  # after the progress bar, on its own line
    assert "Traceback" not in err
    assert re.fullmatch(rf"interrupted: [12] of 3 images have complete outputs, kept in {tmp_path}/d; to resume, "
                        rf"run: bash {ROOT}/run_infer.sh .* --skip-existing", message), err
    # and that command does resume: only the rest is inferred
    r = subprocess.run(shlex.split(message.split("to resume, run: ")[1]), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert re.search(r"\(([12]) already done, skipped\)", r.stdout), r.stdout
    for stem, ref in reference.items():
        got = np.fromfile(tmp_path / "d" / f"{stem}_0.bin", dtype=np.float32).reshape(80, 128, 128)
        assert_parity(got, ref[0], what=f"{stem}_0")
