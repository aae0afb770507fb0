"""CenterNet_benchmark.py --modes: FLOP ratios, rows and table (speed itself
is printed, never asserted)."""

import pytest

import CenterNet_benchmark
from centernet.bench.flops import count_flops
from centernet.errors import UserError
from centernet.bench.mode_benchmark import MODE_COLUMNS, flop_ratio, format_mode_table, run_mode_benchmark
from centernet.core.modes import TestMode


def test_flops_are_proportional_to_the_input_area(random_ctdet):
    # keep-resolution inputs are multiples of 32: every layer scales exactly
    small = count_flops(random_ctdet, (64, 64))["total"]
    assert count_flops(random_ctdet, (96, 160))["total"] * 64 * 64 == small * 96 * 160


def test_flop_ratio_by_hand():
    images = [{"width": 640, "height": 480}, {"width": 480, "height": 640}]
    assert flop_ratio(images, TestMode()) == 1.0
    keep = 512 * 672 / 512 ** 2  # both images have a 512x672 or 672x512 input
    assert flop_ratio(images, TestMode(keep_res=True)) == pytest.approx(keep)
    assert flop_ratio(images, TestMode(keep_res=True, flip=True)) == pytest.approx(2 * keep)
    # (n|31)+1 is the next multiple of 32 ABOVE n: scale 0.5 makes 320x240,
    # a 256x352 input; 1.5 makes 960x720, a 736x992 input
    ms = 2 * (256 * 352 + 512 * 672 + 736 * 992) / 512 ** 2
    assert flop_ratio(images, TestMode(keep_res=True, flip=True, scales=(0.5, 1.0, 1.5))) == pytest.approx(ms)
    assert flop_ratio(images, TestMode(flip=True, scales=(0.5, 1.0))) == 4.0  # fixed: always 512x512


def test_mode_rows_on_the_same_images(random_ctdet, tiny_coco, tmp_path):
    result = run_mode_benchmark(random_ctdet, "random", modes=["keep-res", "keep-res-flip", "keep-res-flip-ms"],
                                num_images=2, dataset=tiny_coco["root"], threads=1, warmup=0,
                                workdir=tmp_path)
    rows = result["rows"]
    assert [r["test_mode"] for r in rows] == ["keep-res", "keep-res + flip",
                                              "keep-res + flip + scales 0.5,0.75,1,1.25,1.5"]
    assert [r["inputs"] for r in rows] == [2, 2, 10] and all(r["images"] == 2 for r in rows)
    assert rows[1]["flop_ratio"] == pytest.approx(2 * rows[0]["flop_ratio"], abs=0.002)  # rounded to 3 places
    assert rows[0]["time_ratio"] == 1.0 and rows[0]["time_per_flop"] == 1.0
    for r in rows:
        assert r["infer_fps"] > 0 and r["end_to_end_fps"] > 0
        assert r["time_per_flop"] == pytest.approx(r["time_ratio"] / (r["flop_ratio"] / rows[0]["flop_ratio"]),
                                                   rel=0.01)
    table = format_mode_table(result)
    assert "| " + " | ".join(MODE_COLUMNS) + " |" in table
    assert sum(ln.startswith("| keep-res") for ln in table.splitlines()) == 3


def test_cli_modes_errors(capsys):
    with pytest.raises(SystemExit):
        CenterNet_benchmark.main(["--modes", "warp-speed"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(UserError, match="annotation file not found"):
        run_mode_benchmark(None, "none", dataset="nowhere", workdir="/tmp")
