"""A mistyped option is one line naming the closest valid one, for every
script (not argparse's usage block followed by 'unrecognized arguments'),
with exit status 2; other argument mistakes keep argparse's message."""
import argparse
import importlib
import subprocess
import sys

import pytest

from conftest import ROOT
from centernet.cli.args import ArgumentParser, closest_option, parse_args


@pytest.mark.parametrize("module, argv, typo, meant", [
    ("CenterNet_preprocess", ["src", "dst", "--keepres"], "--keepres", "--keep-res"),
    ("CenterNet_pth2onnx", ["w.pth", "m.onnx", "--input_size", "512", "512"], "--input_size", "--input-size"),
    ("CenterNet_infer", ["--model", "m.onnx", "--batch-size", "4"], "--batch-size", "--batchsize"),
    ("CenterNet_postprocess_s1", ["--upstream_rounding"], "--upstream_rounding", "--upstream-rounding"),
    ("CenterNet_postprocess_s2", ["--result-folder", "r"], "--result-folder", "--resultfolder"),
    ("CenterNet_eval", ["--batch-size", "4"], "--batch-size", "--batchsize"),
    ("CenterNet_benchmark", ["--warm-up", "2"], "--warm-up", "--warmup"),
    ("CenterNet_demo", ["--model", "m.onnx", "img.jpg", "--vis_thresh", "0.5"], "--vis_thresh", "--vis-thresh"),
    ("centernet.cli.check_weights", ["w.pth", "--hlep"], "--hlep", "--help"),
    ("centernet.cli.make_demo", ["work", "--num_images", "1"], "--num_images", "--num-images"),
    ("centernet.cli.plots", ["m.json", "--outptu", "pics"], "--outptu", "--output"),
    ("centernet.cli.report", ["m.json", "--Flip"], "--Flip", "--flip"),
])
def test_a_typo_is_one_line_naming_the_closest_option(module, argv, typo, meant, capsys):
    parser = importlib.import_module(module).build_parser()
    with pytest.raises(SystemExit) as e:
        parse_args(parser, argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"error: unknown option {typo}; did you mean {meant}? ({parser.prog} --help lists them)"]
    assert captured.out == ""


def test_the_script_itself_prints_one_line():
    r = subprocess.run([sys.executable, str(ROOT / "CenterNet_infer.py"), "--model", "m.onnx", "--batch-size", "4"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "error: unknown option --batch-size; did you mean --batchsize? (CenterNet_infer.py --help lists them)"]


def test_run_infer_names_itself():
    r = subprocess.run(["bash", "run_infer.sh", "--model", "m.onnx", "--batch-size", "4"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == \
        "error: unknown option --batch-size; did you mean --batchsize? (bash run_infer.sh --help lists them)"
    assert len(r.stderr.splitlines()) == 1, r.stderr


def parser():
    p = ArgumentParser(prog="prog")
    p.add_argument("--batchsize", type=int, default=1)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--pin-memory", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("files", nargs="*")
    return p


@pytest.mark.parametrize("argv, line", [
    (["--batch-size=4"], "error: unknown option --batch-size; did you mean --batchsize? (prog --help lists them)"),
    (["--zzz", "--thread_s", "2"],
     "error: unknown option --zzz; unknown option --thread_s; did you mean --threads? (prog --help lists them)"),
    (["--p"], "error: ambiguous option: --p could match --precision, --pin-memory (prog --help lists them)"),
])
def test_unknown_and_ambiguous_options(argv, line, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [line]


def test_other_mistakes_keep_argparses_message(capsys):
    for argv in (["--batchsize", "x"], ["--threads"]):
        with pytest.raises(SystemExit) as e:
            parser().parse_args(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: prog") and "prog: error: argument" in err
    # negative numbers are values, abbreviations still work, good arguments parse
    args = parser().parse_args(["--thr", "-1", "--batch", "2", "a", "b"])
    assert (args.threads, args.batchsize, args.files) == (-1, 2, ["a", "b"])


def test_closest_option():
    options = ["-h", "--help", "--batchsize", "--output_dirname", "--input-size"]
    assert closest_option("--batch_size", options) == "--batchsize"
    assert closest_option("--output-dirname", options) == "--output_dirname"
    assert closest_option("--INPUT-SIZE=3", options) == "--input-size"
    assert closest_option("--inptu-size", options) == "--input-size"
    assert closest_option("--weights", options) is None
    assert isinstance(ArgumentParser(), argparse.ArgumentParser)
