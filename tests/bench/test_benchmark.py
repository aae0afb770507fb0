"""CenterNet_benchmark.py: the FLOP counter, the table and JSON, and the lean
decomposed-DCN export it hands to OpenVINO. Speed itself is not asserted here:
the benchmark prints it."""
import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from centernet.bench.benchmark import BACKENDS, TABLE_COLUMNS, backend_unavailable, format_table, run_benchmark, write_json
from centernet.bench.ort_tuning import ORT_VARIANTS, ort_sweep
from centernet.bench.flops import count_flops
from centernet.errors import UserError
from dcn_v2 import DCN, decomposed_deform_conv2d_static, modulated_deform_conv2d
from centernet.convert.export import check_export, count_ops
import CenterNet_benchmark
from conftest import assert_parity

TINY = (64, 64)


class SmallNet(nn.Module):
    """One of each layer kind the counter knows, on a 1x3x10x12 input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)                       # -> 8x10x12
        self.grouped = nn.Conv2d(8, 4, 1, groups=2, bias=False)          # -> 4x10x12
        self.up = nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, groups=4, bias=False)  # -> 4x20x24
        self.dcn = DCN(4, 6, 3, 1, 1)                                    # -> 6x20x24
        self.fc = nn.Linear(6 * 20 * 24, 10)

    def forward(self, x):
        x = self.dcn(self.up(self.grouped(torch.relu(self.conv(x)))))
        return self.fc(x.flatten(1))


def test_flop_counter_against_hand_count():
    hand = {
        "Conv2d": 2 * (8 * 10 * 12) * (3 * 9)            # conv: outputs x MACs per output
        + 2 * (4 * 10 * 12) * (8 // 2)                   # grouped 1x1
        + 2 * (27 * 20 * 24) * (4 * 9),                  # the DCN's conv_offset_mask
        "ConvTranspose2d": 2 * (4 * 10 * 12) * (4 // 4) * 16,  # each input pixel through a 4x4 kernel
        "DCN": 2 * (6 * 20 * 24) * (4 * 9),
        "Linear": 2 * 10 * (6 * 20 * 24),
    }
    counted = count_flops(SmallNet(), (10, 12))
    assert counted["by_type"] == hand
    assert counted["total"] == sum(hand.values())


@pytest.fixture(scope="module")
def tiny_result(random_ctdet, tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    # onnxruntime-cpu-decompose: so that the decomposed export is made (and tested
    # below) even where OpenVINO, its usual client, is not installed.
    backends = ["onnxruntime-cpu", "onnxruntime-cpu-decompose", "pytorch-eager", "openvino-cpu",
                "onnxruntime-cuda"]
    # One thread: the timings are not asserted, and one thread does not stall
    # when other processes hold the CPUs.
    result = run_benchmark(random_ctdet, "random", backends=backends, batchsizes=(1, 2), loop=1,
                           threads=1, input_size=TINY, workdir=work, sgemm_n=128, profile=True)
    return result, backends, work


def test_benchmark_rows_for_every_backend_present(tiny_result):
    result, backends, _ = tiny_result
    measured = {r["backend"] for r in result["rows"]}
    assert measured | set(result["skipped"]) == set(backends) and not measured & set(result["skipped"])
    assert {"onnxruntime-cpu", "onnxruntime-cpu-decompose", "pytorch-eager"} <= measured
    assert [(r["backend"], r["batch"]) for r in result["rows"]] == \
        [(b, n) for n in (1, 2) for b in backends if b in measured]
    for r in result["rows"]:
        assert r["images"] == r["batch"] and r["loops"] == 1  # loop 1 scales to one batch
        assert r["fps"] > 0 and r["latency_ms_p50"] > 0 and r["latency_ms_p99"] >= r["latency_ms_p50"]
        assert r["gflops"] == pytest.approx(result["flops_per_image"] * r["fps"] / 1e9, rel=0.01, abs=0.01)
        assert r["of_sgemm"] == pytest.approx(r["gflops"] / result["sgemm_gflops"]["ceiling"], abs=0.002)
        assert r["x_eager"] is not None
    assert all(r["x_eager"] == 1.0 for r in result["rows"] if r["backend"] == "pytorch-eager")
    assert result["sgemm_gflops"]["ceiling"] > 0 and result["sgemm_gflops"]["n"] == 128
    assert result["flops_per_image"] == sum(result["flops_by_type"].values())


def test_network_flops_match_reference(tiny_result):
    # REFERENCE: ~66 GFLOP per 512x512 image. Sizes divisible by 32 scale
    # exactly, so the 64x64 count is 1/64 of it.
    result, _, _ = tiny_result
    assert result["flops_per_image"] * 64 / 1e9 == pytest.approx(66.2, rel=0.005)
    assert result["flops_per_image"] == pytest.approx(result["reference_flops_per_image"], rel=0.005)


def test_benchmark_table_and_json(tiny_result, tmp_path):
    result, _, _ = tiny_result
    table = format_table(result)
    lines = table.splitlines()
    header = "| " + " | ".join(TABLE_COLUMNS) + " |"
    assert header in lines
    body = []
    for ln in lines[lines.index(header) + 2:]:
        if not ln.startswith("| "):
            break
        body.append(ln)
    assert len(body) == len(result["rows"])
    assert all(len(ln.strip("|").split("|")) == len(TABLE_COLUMNS) for ln in body)
    # Each column holds what its header names, of the row in that line (to the digits shown).
    for ln, r in zip(body, result["rows"]):
        cell = dict(zip(TABLE_COLUMNS, (c.strip() for c in ln.strip("|").split("|"))))
        assert cell["backend"].removesuffix(" *") == r["backend"] and int(cell["batch"]) == r["batch"]
        for column, key, shown in [("fps", "fps", 1e-3), ("ms/image", "ms_per_image", 0.1),
                                   ("p50 ms", "latency_ms_p50", 0.1), ("p99 ms", "latency_ms_p99", 0.1),
                                   ("GFLOP/s", "gflops", 0.1)]:
            assert float(cell[column]) == pytest.approx(r[key], abs=shown / 2 + 1e-9), column
        assert float(cell["of sgemm"].removesuffix("%")) == pytest.approx(100 * r["of_sgemm"], abs=0.5 + 1e-9)
        if r["x_eager"] is None:
            assert cell["x eager"] == "-"
        else:
            assert float(cell["x eager"].removesuffix("x")) == pytest.approx(r["x_eager"], abs=0.005 + 1e-9)
    assert "sgemm ceiling" in table and "weights: random" in table and "GFLOP per image" in table

    path = tmp_path / "b.json"
    write_json(result, path)
    data = json.loads(path.read_text())
    assert data["machine"]["threads"] == 1 and data["machine"]["cpu"]
    assert {"torch", "numpy", "onnx", "onnxruntime"} <= set(data["machine"]["versions"])
    assert data["input_size"] == list(TINY) and data["rows"] == result["rows"]
    assert set(data["rows"][0]) >= {"backend", "batch", "fps", "ms_per_image", "latency_ms_p50",
                                    "latency_ms_p99", "gflops", "of_sgemm", "x_eager", "other_cpu"}


def test_ort_profile_and_sweep(tiny_result):
    result, _, _ = tiny_result
    ops = {r["op"]: r for r in result["ort_profile"]["ops"]}
    assert {"Conv", "DeformConv", "ConvTranspose"} <= set(ops)
    assert all(ops[op]["gflops"] > 0 for op in ("Conv", "DeformConv"))
    assert sum(r["share"] for r in ops.values()) == pytest.approx(1, abs=0.02)
    assert "time per operator type" in format_table(result)

    x = np.zeros((1, 3, *TINY), np.float32)
    rows = ort_sweep({k: result["models"][k] for k in ("deformconv", "decompose")}, 1, x, rounds=1,
                     runs=1, variants=["default (optimization all)", "no spinning"])
    assert [(r["variant"], r["graph"]) for r in rows] == [
        ("default (optimization all)", "deformconv"), ("no spinning", "deformconv"),
        ("default, decomposed DCN graph", "decompose")]
    assert rows[0]["vs_default"] == 1.0 and all(r["ms"] > 0 for r in rows)


def test_every_ort_variant_makes_a_session_that_runs_the_network(tiny_result):
    """Each session-option variant of the sweep is one ONNX Runtime takes, and
    runs the same network: its outputs are the default options' to float32
    rounding."""
    from centernet.runtime.ort_session import make_session
    result, _, _ = tiny_result
    path = result["models"]["deformconv"]
    x = np.random.default_rng(0).standard_normal((1, 3, *TINY), dtype=np.float32)
    outputs = {}
    for name, kw in ORT_VARIANTS.items():
        session = make_session(path, threads=1, **kw)
        outputs[name] = session.run(None, {session.get_inputs()[0].name: x})
    default = outputs.pop("default (optimization all)")
    for name, got in outputs.items():
        for a, b in zip(got, default):
            assert_parity(a, b, what=name)


def test_cli_eager_only(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert CenterNet_benchmark.main([
        "--backends", "pytorch-eager", "--input-size", *map(str, TINY), "--batchsizes", "1",
        "--loop", "1", "--threads", "1", "--sgemm-size", "64", "--workdir", str(tmp_path / "w"),
        "--json", str(out), "--plot"]) == 0
    stdout = capsys.readouterr().out
    assert "weights: random" in stdout
    assert f"plot: {tmp_path / 'w' / 'benchmark.png'}" in stdout and (tmp_path / "w" / "benchmark.png").is_file()
    assert [ln for ln in stdout.splitlines() if ln.startswith("| pytorch-eager") and "| 1 |" in ln]
    assert json.loads(out.read_text())["rows"][0]["backend"] == "pytorch-eager"


def test_cli_missing_weights_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        CenterNet_benchmark.main(["--weights", "missing.pth"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: missing.pth: checkpoint not found"]


def test_every_backend_the_cli_offers_is_one_the_benchmark_knows():
    """A name --backends accepts is run or skipped with a reason, never an
    unknown backend; a name it does not know is refused."""
    for name in BACKENDS:
        assert CenterNet_benchmark.parse_args(["--backends", name]).backends == [name]
        why = backend_unavailable(name)
        assert why is None or (isinstance(why, str) and why), name
    with pytest.raises(SystemExit):
        CenterNet_benchmark.parse_args(["--backends", "onnxruntime-gpu"])
    with pytest.raises(UserError, match="unknown backend 'onnxruntime-gpu'"):
        backend_unavailable("onnxruntime-gpu")


# --- the static-size decomposed DCN export (what OpenVINO runs) ---------------

@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_static_decomposition_equals_reference_forward(stride, dilation):
    rng = np.random.default_rng(stride * 10 + dilation)
    n, c, h, w, o = 2, 5, 11, 14, 4
    ho = (h + 2 - dilation * 2 - 1) // stride + 1
    wo = (w + 2 - dilation * 2 - 1) // stride + 1
    x = torch.from_numpy(rng.standard_normal((n, c, h, w)).astype(np.float32))
    weight = torch.from_numpy(rng.standard_normal((o, c, 3, 3)).astype(np.float32))
    bias = torch.from_numpy(rng.standard_normal(o).astype(np.float32))
    offset = torch.from_numpy((rng.standard_normal((n, 18, ho, wo)) * 2).astype(np.float32))
    mask = torch.from_numpy(rng.uniform(0.05, 1, (n, 9, ho, wo)).astype(np.float32))
    ref = modulated_deform_conv2d(x, offset, mask, weight, bias, stride, 1, dilation)
    ours = decomposed_deform_conv2d_static(x, offset, mask, weight, bias, stride, 1, dilation)
    assert ours.shape == ref.shape and (ours - ref).abs().max() <= 1e-4


def test_static_decompose_export_is_lean_and_matches(tiny_result, random_ctdet):
    # The benchmark's decomposed export: fixed 64x64, dynamic batch.
    result, _, _ = tiny_result
    proto = onnx.load(result["models"]["decompose"])
    ops = count_ops(proto)
    assert ops["GridSample"] == 16 and "DeformConv" not in ops
    # Every shape and base grid is a constant: no shape arithmetic left.
    assert not {"Shape", "Gather", "Range", "Unsqueeze", "ScatterND", "Expand", "Tile", "Cast"} & set(ops)
    assert sum(ops.values()) < 900
    checks = check_export(random_ctdet, proto, input_size=TINY, batch=2, threads=1)
    assert all(c.ok for c in checks), [c.describe() for c in checks]
