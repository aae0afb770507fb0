"""The command-line layer: old flag spellings still work, PyTorch-only
options with ONNX Runtime are one error line naming them, every option's
help ends with its default, and library log lines reach the console plainly."""
import argparse
import importlib
import logging
import re

import pytest

from centernet.cli.args import add_progress_arguments, parse_args, progress_enabled
from centernet.cli.logs import setup_logging

SCRIPTS = ["CenterNet_preprocess", "CenterNet_pth2onnx", "CenterNet_infer", "CenterNet_postprocess_s1",
           "CenterNet_postprocess_s2", "CenterNet_eval", "CenterNet_benchmark", "CenterNet_demo",
           "centernet.cli.check_weights", "centernet.cli.make_demo", "centernet.cli.plots", "centernet.cli.report"]
# "(default: ...)" closing the help, one level of parentheses allowed inside
ENDS_WITH_DEFAULT = re.compile(r"\(default: (?:[^()]|\([^()]*\))*\)$")


def help_text(action):
    return action.help % {**vars(action), "prog": "prog"} if action.help else ""


@pytest.mark.parametrize("module", SCRIPTS)
def test_every_option_says_its_default(module):
    parser = importlib.import_module(module).build_parser()
    undocumented = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        text = help_text(action)
        ok = text.endswith("(required)") if action.required else ENDS_WITH_DEFAULT.search(text)
        if not ok:
            undocumented.append((action.option_strings[0], text[-60:]))
    assert undocumented == []


@pytest.mark.parametrize("module, argv, dest, value", [
    ("CenterNet_postprocess_s1", ["--batch-size", "4"], "batch_size", 4),
    ("CenterNet_postprocess_s1", ["--batchsize", "4"], "batch_size", 4),
    ("CenterNet_benchmark", ["--batchsizes", "1", "2"], "batchsizes", [1, 2]),
    ("CenterNet_benchmark", ["--batchsize", "1", "2"], "batchsizes", [1, 2]),
    ("centernet.cli.make_demo", ["work", "--images", "3"], "num_images", 3),
    ("centernet.cli.make_demo", ["work", "--num-images", "3"], "num_images", 3),
    ("centernet.cli.plots", ["m.json", "--out", "pics"], "output", "pics"),
    ("centernet.cli.plots", ["m.json", "--output", "pics"], "output", "pics"),
    ("CenterNet_infer", ["--model", "m.onnx", "--no-progress"], "progress", False),
    ("CenterNet_eval", ["--no-progress"], "progress", False),
    ("CenterNet_preprocess", ["src", "dst", "--no-progress"], "progress", False),
])
def test_old_spellings_still_work(module, argv, dest, value):
    args = parse_args(importlib.import_module(module).build_parser(), argv)
    assert getattr(args, dest) == value


@pytest.mark.parametrize("module, argv", [
    ("CenterNet_infer", ["--model", "m.onnx", "--loop", "1"]),
    ("CenterNet_eval", ["--model", "m.onnx"]),
    ("CenterNet_demo", ["--model", "m.onnx", "img.jpg"]),
])
def test_torch_only_options_with_onnxruntime_are_one_error_naming_them(module, argv, capsys):
    main = importlib.import_module(module).main
    # --fuse-bn is given at its default value: still refused, it was asked for
    with pytest.raises(SystemExit) as e:
        main(argv + ["--channels-last", "--fuse-bn", "--dcn-kernel", "ours"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --fuse-bn, --channels-last, --dcn-kernel: PyTorch backend options; add --backend torch "
        "(and give the .pth checkpoint as --model)"]


def test_no_torch_option_given_is_not_refused():
    from centernet.cli.args import check_backend_args
    import CenterNet_infer
    args = check_backend_args(CenterNet_infer.parse_args(["--model", "m.onnx"]))
    assert args.backend == "onnxruntime" and args._given == {"model"}
    assert args.fuse_bn is True and args.channels_last is None and args.precision == "fp32"  # defaults filled


def test_progress_follows_the_terminal_unless_forced():
    parser = argparse.ArgumentParser()
    add_progress_arguments(parser)

    class Tty:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    assert progress_enabled(parser.parse_args([]), Tty(True)) is True
    assert progress_enabled(parser.parse_args([]), Tty(False)) is False
    assert progress_enabled(parser.parse_args(["--progress"]), Tty(False)) is True
    assert progress_enabled(parser.parse_args(["--no-progress"]), Tty(True)) is False


def test_log_lines_are_plain_and_split_by_level(capsys):
    logger = logging.getLogger("centernet.some.module")
    setup_logging(info_stream="stdout")
    setup_logging(info_stream="stdout")  # again: still one line per record
    logger.info("plots: a.png")
    logger.warning("warning: no matplotlib")
    out, err = capsys.readouterr()
    assert out == "plots: a.png\n" and err == "warning: no matplotlib\n"
    setup_logging()
    logger.info("exported x")
    assert capsys.readouterr().err == "exported x\n"


def test_report_table_shows_ap50_beside_ap(tmp_path, capsys):
    # Pascal VOC users quote the AP at IoU 0.5: it stands beside AP in run_all.sh's final table
    import json
    from centernet.cli.report import main as report
    (tmp_path / "m.json").write_text(json.dumps({"AP": 0.374, "AP50": 0.551, "per_class": {}}))
    assert report([str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "| test mode | AP here | AP50 here | ctdet_coco_dla_2x's published AP (COCO val2017) |" in out
    assert "| fixed | 37.4 | 55.1 | 36.6 |" in out


def test_report_table_says_when_the_weights_were_random(tmp_path, capsys):
    # run_all.sh ends with this table, from the run's metrics.json
    import json
    from centernet.cli.report import main as report
    from centernet.constants import RANDOM_WEIGHTS_NOTE
    metrics = {"AP": 0.0, "AP50": 0.0, "per_class": {}}
    for name, extra in (("random", {"random_weights": True}), ("ordinary", {"random_weights": False}),
                        ("older", {})):
        (tmp_path / f"{name}.json").write_text(json.dumps({**metrics, **extra}))
    assert report([str(tmp_path / "random.json")]) == 0
    out = capsys.readouterr().out
    assert "| AP | 0.0 |" in out and out.rstrip("\n").splitlines()[-1] == RANDOM_WEIGHTS_NOTE
    for name in ("ordinary", "older"):
        assert report([str(tmp_path / f"{name}.json")]) == 0
        out = capsys.readouterr().out
        assert "| AP | 0.0 |" in out and "RANDOM WEIGHTS" not in out
