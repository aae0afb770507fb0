"""CenterNet_benchmark.py --precisions: the fp16 and int8 files it derives,
their facts, the rows and the table (speed itself is printed, never asserted)."""
import json
import re

import onnx
import pytest

import CenterNet_benchmark
from centernet.bench import precision_benchmark as pb
from centernet.convert.provenance import file_sha256
from centernet.errors import UserError

SIZE = (128, 128)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A 4-class ResNet-18 + DCN at 128x128 saved as the stand-in is, with its facts (not COCO's)."""
    from centernet.io.shapes import SHAPE_CLASSES
    from centernet.model.networks import model_facts
    from centernet.model.random_weights import random_model
    from centernet.train.standin import save_standin
    model = random_model(network="resdcn_18", heads={"hm": 4, "wh": 2, "reg": 2}, head_conv=64,
                         calibration_size=SIZE, calibration_images=2)
    facts = model_facts(model).with_settings(mean=(0.45, 0.5, 0.55), std=(0.2, 0.25, 0.3), input_size=SIZE,
                                             class_names=SHAPE_CLASSES)
    path = tmp_path_factory.mktemp("precision") / "small_shapes.pth"
    save_standin(model, facts, {"recipe": {"steps": 1}}, path)
    return path


@pytest.fixture(scope="module")
def no_bf16(small_checkpoint, tmp_path_factory):
    """One run of every precision on a CPU said to lack the bf16 flags."""
    workdir = tmp_path_factory.mktemp("precision_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pb, "cpu_flags", lambda: {"avx2", "f16c"})
        result = pb.run_precision_benchmark(small_checkpoint, workdir, val_images=2, calibration_images=2,
                                            threads=1, loop=1, rounds=1)
    return result, workdir


def test_a_row_per_precision_with_numbers(no_bf16):
    result, _ = no_bf16
    rows = {r["precision"]: r for r in result["rows"]}
    assert list(rows) == ["fp32", "fp16", "int8", "bf16"]
    for p in ("fp32", "fp16", "int8"):
        r = rows[p]
        assert r["skipped"] is None and r["fps"] > 0 and 0 <= r["AP"] <= 1 and 0 <= r["AP50"] <= 1
        assert r["AP_change"] == pytest.approx((r["AP"] - rows["fp32"]["AP"]) * 100, abs=0.01)
    assert rows["fp32"]["x_fp32"] == 1.0 and rows["fp32"]["AP_change"] == 0
    table = pb.format_precision_table(result)
    lines = table.splitlines()
    assert "| " + " | ".join(pb.PRECISION_COLUMNS) + " |" in lines
    assert sum(line.startswith("| fp") or line.startswith("| int8") or line.startswith("| bf16")
               for line in lines) == 4
    assert result["machine"]["cpu"] in lines[0] and "1 threads" in lines[0]


def test_bf16_is_skipped_without_the_cpu_flag(no_bf16):
    result, _ = no_bf16
    bf16 = result["rows"][-1]
    assert bf16["skipped"] == "this CPU has no AVX512_BF16 / AMX-BF16" and "fps" not in bf16
    assert "| bf16 | torch | skipped: this CPU has no AVX512_BF16 / AMX-BF16 |" in pb.format_precision_table(result)


def test_bf16_runs_by_torch_autocast_when_the_cpu_has_the_flag(small_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(pb, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    opened = []
    from centernet.pipeline import predictor as predictor_module

    def spy(model, **kwargs):
        opened.append((model, kwargs))
        if kwargs.get("backend") == "torch":
            raise _Stop()
        return original(model, **kwargs)
    original = predictor_module.open_predictor
    monkeypatch.setattr(predictor_module, "open_predictor", spy)
    assert pb.bf16_support() == ["avx512_bf16"]
    with pytest.raises(_Stop):  # stop before running bf16 on a CPU that may lack it
        pb.run_precision_benchmark(small_checkpoint, tmp_path, val_images=1, threads=1, loop=1, rounds=1,
                                   precisions=["bf16"])
    (model, kwargs), = opened
    assert model == small_checkpoint and kwargs["torch_options"].precision == "bf16"
    assert kwargs["torch_options"].cast == "autocast"


class _Stop(Exception):
    pass


def test_fp16_keeps_deformconv_float_and_float32_io(no_bf16):
    result, workdir = no_bf16
    row = result["rows"][1]
    proto = onnx.load(row["model"])
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [f32]
    assert [o.type.tensor_type.elem_type for o in proto.graph.output] == [f32] * 3
    assert row["fp16"]["blocked"] == ["DeformConv"]
    initializers = {t.name: t.data_type for t in proto.graph.initializer}
    dcn = [n for n in proto.graph.node if n.op_type == "DeformConv"]
    assert len(dcn) == 3 and all(initializers[n.input[1]] == f32 for n in dcn)  # weights in float32
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert all(initializers[n.input[1]] == f16 for n in convs)  # the rest is float16
    assert "DeformConv" in row["float_text"]


def test_int8_is_qdq_with_the_excluded_nodes_float(no_bf16):
    result, _ = no_bf16
    row = result["rows"][2]
    proto = onnx.load(row["model"])
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    kept = row["int8"]["float_nodes"]
    assert sorted(set(kept.values())) == ["BatchNormalization", "DeformConv", "heads"]
    dequantized = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    heads = [n for n in proto.graph.node if n.name in kept and kept[n.name] == "heads"]
    assert sorted(o for n in heads for o in n.output) == ["output1", "output2", "output3"]
    for n in heads:  # float weights: not fed by a DequantizeLinear
        assert n.input[1] not in dequantized
    quantized_convs = [n for n in proto.graph.node if n.op_type == "Conv" and n.name not in kept]
    assert quantized_convs and all(n.input[1] in dequantized for n in quantized_convs)
    assert "heads x3" in row["float_text"] and "DeformConv x3" in row["float_text"]


def test_int8_groups_choose_the_nodes(no_bf16):
    result, _ = no_bf16
    proto = onnx.load(result["rows"][0]["model"])
    kept = pb.int8_float_nodes(proto, ("offsets", "head-convs", "upsampling", "stem"))
    groups = {}
    for name, why in kept.items():
        groups.setdefault(why, []).append(name)
    assert len(groups["offsets"]) == 3 and all("conv_offset_mask" in n for n in groups["offsets"])
    assert sorted(groups["head-convs"]) == ["/hm/hm.0/Conv", "/reg/reg.0/Conv", "/wh/wh.0/Conv"]
    assert len(groups["upsampling"]) == 3 and len(groups["stem"]) == 1
    with pytest.raises(UserError, match="--int8-float: unknown layer group 'tails'"):
        pb.int8_float_nodes(proto, ("tails",))


def test_every_file_carries_the_checkpoints_facts(no_bf16, small_checkpoint):
    from centernet.model.checkpoint import checkpoint_facts
    from centernet.pipeline.predictor import open_predictor
    result, _ = no_bf16
    facts = checkpoint_facts(small_checkpoint)
    for row in result["rows"][:3]:
        predictor = open_predictor(row["model"], threads=1)
        assert predictor.facts == facts, row["precision"]
        assert predictor.spec.mean == facts.mean and predictor.mode.input_size == SIZE


def test_derived_files_are_reused_until_the_recipe_changes(no_bf16):
    result, workdir = no_bf16
    fp32 = result["rows"][0]["model"]
    int8 = result["rows"][2]["model"]
    before = onnx.load(int8)
    path, _ = pb.make_int8(fp32, workdir, calibration_images=2)
    assert str(path) == int8 and onnx.load(int8) == before
    meta = {p.key: p.value for p in before.metadata_props}
    assert meta[pb.SOURCE_KEY] == file_sha256(fp32)
    pb.make_int8(fp32, workdir, calibration_images=2, groups=())
    after = {p.key: p.value for p in onnx.load(int8).metadata_props}
    assert json.loads(after[pb.RECIPE_KEY])["float_nodes"] != json.loads(meta[pb.RECIPE_KEY])["float_nodes"]


def test_json_is_written(no_bf16, tmp_path):
    result, _ = no_bf16
    pb.write_precision_json(result, tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text())["rows"][0]["precision"] == "fp32"


def test_unknown_precision_is_one_line(small_checkpoint, tmp_path):
    with pytest.raises(UserError, match="--precisions: unknown precision 'fp8'"):
        pb.run_precision_benchmark(small_checkpoint, tmp_path, precisions=["fp8"])


# --- the command line -------------------------------------------------------------------------------

def test_cli_precisions_defaults_and_list():
    args = CenterNet_benchmark.parse_args(["--precisions"])
    assert args.precisions == list(pb.PRECISIONS)
    assert args.weights is None and args.precision_images == 200 and args.calibration_images == 64
    assert args.json.endswith("benchmark_precisions.json")
    assert CenterNet_benchmark.parse_args(["--precisions", "fp32", "int8"]).precisions == ["fp32", "int8"]
    assert CenterNet_benchmark.parse_args([]).precisions is None


@pytest.mark.parametrize("option", [["--networks", "res_18"], ["--modes"], ["--profile"], ["--ort-sweep"],
                                    ["--onnx", "x.onnx"], ["--plot"]])
def test_cli_precisions_refuses_other_benchmarks(option):
    with pytest.raises(UserError, match=f"{option[0]} does not go with --precisions"):
        CenterNet_benchmark.parse_args(["--precisions", *option])


def test_cli_precisions_runs(small_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pb, "cpu_flags", lambda: set())
    out = tmp_path / "p.json"
    assert CenterNet_benchmark.main(["--precisions", "fp32", "bf16", "--weights", str(small_checkpoint),
                                     "--precision-images", "1", "--calibration-images", "1", "--loop", "1",
                                     "--threads", "1", "--workdir", str(tmp_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^\| fp32( \*)? \| onnxruntime \| [0-9.]+ \| 1\.00x \|", printed, re.M)  # * : a busy machine
    assert "skipped: this CPU has no AVX512_BF16" in printed
    assert [r["precision"] for r in json.loads(out.read_text())["rows"]] == ["fp32", "bf16"]
