"""CenterNet_pth2onnx.py: both targets, their layouts, and the self-check."""
import subprocess

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from centernet.core.model_facts import ModelFacts
from centernet.errors import UserError
from centernet.convert.provenance import file_sha256
from centernet.convert.export import REL_TOL, FlipTest, ascend_to_deformconv, check_export, count_ops, export_onnx
from centernet.runtime.ort_session import make_session
from conftest import assert_close_to_reference, hand_flip_test, PYTHON, ROOT, assert_parity, photo_inputs

SMALL = (128, 160)  # H != W, and fast


def run_script(*args):
    return subprocess.run([PYTHON, str(ROOT / "CenterNet_pth2onnx.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_default_target_cli(upstream_checkpoint, tmp_path):
    # The fixture's outputs are at the trained model's scale (hm logits to
    # about +-10, wh tens of pixels; tests/model/test_random_weights.py), where a
    # fixed absolute bound of 1e-3 rejected correct exports.
    out = tmp_path / "CenterNet.onnx"
    r = run_script(upstream_checkpoint, out)
    assert r.returncode == 0, r.stderr
    assert "16 deformable conv nodes" in r.stdout and "check passed" in r.stdout
    assert "checking the export against PyTorch (float64) ..." in r.stdout
    for name in ("output1", "output2", "output3"):
        assert f"check {name}: max abs diff vs PyTorch float64" in r.stdout
    proto = onnx.load(out)
    assert proto.opset_import[0].version == 19
    assert count_ops(proto)["DeformConv"] == 16
    (inp,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "actual_input" and dims == ["batch", 3, 512, 512]
    assert [o.name for o in proto.graph.output] == ["output1", "output2", "output3"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_ascend_target_layout_and_check(random_ctdet, tmp_path):
    proto = export_onnx(random_ctdet, tmp_path / "a.onnx", target="ascend", input_size=SMALL)
    assert proto.opset_import[0].version == 11
    nodes = [n for n in proto.graph.node if n.op_type == "DeformableConv2D"]
    assert len(nodes) == 16 and "DeformConv" not in count_ops(proto)
    for n in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert n.domain == "" and len(n.input) == 4
        assert attrs == {"strides": [1, 1], "pads": [1, 1], "dilations": [1, 1], "groups": 1,
                         "deformable_groups": 1, "data_format": b"NCHW", "modulated": 1}
    assert proto.graph.input[0].name == "actual_input"
    assert [o.name for o in proto.graph.output] == ["output1", "output2", "output3"]
    checks = check_export(random_ctdet, proto, target="ascend", input_size=SMALL, batch=1)
    assert all(c.ok for c in checks), [c.describe() for c in checks]


def test_ascend_target_cli_passes_at_real_scale(upstream_checkpoint, tmp_path):
    r = run_script(upstream_checkpoint, tmp_path / "CenterNet_ascend.onnx", "--target", "ascend")
    assert r.returncode == 0, r.stderr
    assert "ascend, opset 11" in r.stdout and "check passed" in r.stdout


def test_check_reports_relative_differences_within_rounding(random_ctdet, tmp_path):
    proto = export_onnx(random_ctdet, tmp_path / "c.onnx", input_size=SMALL)
    checks = check_export(random_ctdet, proto, input_size=SMALL, batch=1)
    assert [c.name for c in checks] == ["output1", "output2", "output3"]
    for c in checks:
        assert c.ok and c.scale > 0.5
        assert c.bound >= REL_TOL * c.scale
        # float32 rounding, well inside the bound
        assert c.abs_diff <= 0.2 * c.bound and c.float32_diff <= 0.2 * c.bound


def test_dynamic_size_and_decompose(random_ctdet, tmp_path):
    proto = export_onnx(random_ctdet, tmp_path / "d.onnx", dcn="decompose", dynamic_size=True,
                        input_size=SMALL)
    assert "DeformConv" not in count_ops(proto) and count_ops(proto)["GridSample"] == 16
    session = make_session(str(tmp_path / "d.onnx"))
    x = photo_inputs(1, (96, 64))
    got = session.run(None, {"actual_input": x})
    with torch.no_grad():
        ref = random_ctdet(torch.from_numpy(x))
    for a, b in zip(got, ref):
        assert_parity(a, b.numpy())


def test_input_size_option(upstream_checkpoint, tmp_path):
    out = tmp_path / "new" / "sub" / "s.onnx"  # missing folders are created
    r = run_script(upstream_checkpoint, out, "--input-size", 64, 96, "--no-check")
    assert r.returncode == 0, r.stderr
    assert "checking the export" not in r.stdout and "check passed" not in r.stdout
    dims = [d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim][1:]
    assert dims == [3, 64, 96]


def test_ascend_mapping_is_exact_permutation(random_ctdet, tmp_path):
    # The DeformConv graph made from the Ascend export equals the direct DeformConv export.
    a = ascend_to_deformconv(export_onnx(random_ctdet, tmp_path / "a.onnx", target="ascend", input_size=SMALL))
    b = export_onnx(random_ctdet, tmp_path / "b.onnx", input_size=SMALL)
    x = photo_inputs(2, SMALL, seed=1)
    ya = make_session(a.SerializeToString()).run(None, {"actual_input": x})
    yb = make_session(b.SerializeToString()).run(None, {"actual_input": x})
    for p, q in zip(ya, yb):
        assert np.abs(p - q).max() <= 1e-5


@pytest.mark.parametrize("args,message", [
    (("missing.pth", "x.onnx"), "missing.pth: checkpoint not found"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    r = run_script(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {message}"]


def test_cli_wrong_architecture(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"conv.weight": torch.zeros(3)}}, path)
    r = run_script(path, tmp_path / "x.onnx")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "not a CenterNet checkpoint: its keys fit no upstream" in r.stderr


def test_cli_output_path_and_checkpoint_errors_are_one_line(tmp_path):
    def one_line(r, message):
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines() == [f"error: {message}"]
    one_line(run_script("missing.pth", tmp_path), f"{tmp_path}: is a folder; give the ONNX file to write, "
                                                  f"e.g. {tmp_path / 'CenterNet.onnx'}")
    pickled = tmp_path / "m.pth"
    torch.save(torch.nn.Linear(3, 4), pickled)
    r = run_script(pickled, tmp_path / "x.onnx")
    one_line(r, f"{pickled}: holds a pickled torch.nn.modules.linear.Linear object, not a state_dict; upstream "
                "checkpoints are {'epoch': N, 'state_dict': {name: tensor}} (save one with "
                "torch.save({'state_dict': model.state_dict()}, path))")
    assert "\x1b" not in r.stderr  # none of torch's terminal colour codes


# --- the self-check catches real bugs -----------------------------------------
# Each break edits the exported graph the way a bug in the export would, and
# the check must fail on it. The fixture's DCN offsets are a pixel or more and
# its masks spread out, so none of these can hide in rounding.

def _producer(graph, name):
    return next(n for n in graph.node if name in n.output)


def _swap_offset_xy(proto):
    for node in [n for n in proto.graph.node if n.op_type == "DeformConv"]:
        perm = f"{node.name}_xy_perm"
        proto.graph.initializer.append(onnx.numpy_helper.from_array(
            np.array([k ^ 1 for k in range(18)], dtype=np.int64), perm))
        swapped = f"{node.input[2]}_{node.name}_swapped"
        proto.graph.node.append(helper.make_node("Gather", [node.input[2], perm], [swapped], axis=1))
        node.input[2] = swapped
    onnx_sort(proto)


def _mask_without_sigmoid(proto):
    for node in [n for n in proto.graph.node if n.op_type == "DeformConv"]:
        sigmoid = _producer(proto.graph, node.input[4])
        assert sigmoid.op_type == "Sigmoid"
        node.input[4] = sigmoid.input[0]


def _padding_off_by_one(proto):
    # begin 2, end 0: the output keeps its size, but every sample moves one pixel.
    for node in [n for n in proto.graph.node if n.op_type == "DeformConv"]:
        for a in node.attribute:
            if a.name == "pads":
                a.ints[:] = [2, 2, 0, 0]


def _ascend_packing_y_first(proto):
    # ATC wants [x shifts, y shifts, mask]; pack y first instead.
    for node in [n for n in proto.graph.node if n.op_type == "DeformableConv2D"]:
        concat = _producer(proto.graph, node.input[2])
        gather = _producer(proto.graph, concat.input[0])
        const = _producer(proto.graph, gather.input[1])
        order = onnx.numpy_helper.to_array(const.attribute[0].t)
        assert list(order[:9]) == [1, 3, 5, 7, 9, 11, 13, 15, 17]
        const.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(
            np.concatenate([order[9:], order[:9]]), const.attribute[0].t.name))


def onnx_sort(proto):
    """Re-order nodes topologically after appending some."""
    graph = proto.graph
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    todo, done = list(graph.node), []
    while todo:
        ready = [n for n in todo if all(not i or i in known for i in n.input)]
        assert ready, "cycle"
        for n in ready:
            known.update(n.output)
            done.append(n)
            todo.remove(n)
    del graph.node[:]
    graph.node.extend(done)


@pytest.fixture(scope="module")
def exports(random_ctdet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("breaks")
    return {target: export_onnx(random_ctdet, tmp / f"{target}.onnx", target=target, input_size=SMALL)
            for target in ("onnxruntime", "ascend")}


@pytest.mark.parametrize("target,break_graph", [
    ("onnxruntime", _swap_offset_xy),
    ("onnxruntime", _mask_without_sigmoid),
    ("onnxruntime", _padding_off_by_one),
    ("ascend", _ascend_packing_y_first),
])
def test_check_catches_deliberate_breaks(random_ctdet, exports, target, break_graph):
    intact = check_export(random_ctdet, exports[target], target=target, input_size=SMALL, batch=1)
    assert all(c.ok for c in intact)
    broken = onnx.ModelProto.FromString(exports[target].SerializeToString())
    break_graph(broken)
    checks = check_export(random_ctdet, broken, target=target, input_size=SMALL, batch=1)
    assert not all(c.ok for c in checks), [c.describe() for c in checks]
    # Not a near miss: the worst output is far outside float32 rounding.
    assert max(c.abs_diff / c.bound for c in checks) > 5


def test_check_reports_a_graph_onnxruntime_cannot_run(random_ctdet, exports):
    broken = onnx.ModelProto.FromString(exports["onnxruntime"].SerializeToString())
    for node in [n for n in broken.graph.node if n.op_type == "DeformConv"][:1]:
        for a in node.attribute:
            if a.name == "pads":
                a.ints[:] = [2, 2, 2, 2]  # the output grows by 2 and no longer adds up
    with pytest.raises(UserError, match="^broken.onnx: ONNX Runtime cannot (load|run) it"):
        check_export(random_ctdet, broken, input_size=SMALL, batch=1, name="broken.onnx")


# --- the flip test in the graph (--flip) -------------------------------------


@pytest.mark.parametrize("target", ["onnxruntime", "ascend"])
def test_flip_export_equals_hand_flip_test(random_ctdet, ctdet_onnx, tmp_path, target):
    from centernet.runtime.ort_session import metadata_flip_test
    proto = export_onnx(random_ctdet, tmp_path / "f.onnx", target=target, input_size=SMALL, dynamic_size=True,
                        flip=True)
    meta = lambda m: {p.key: p.value for p in m.metadata_props}  # noqa: E731
    assert metadata_flip_test(meta(proto)) and not metadata_flip_test(meta(onnx.load(ctdet_onnx)))
    assert [o.name for o in proto.graph.output] == ["output1", "output2", "output3"]
    # the export's own self-check, with the flip test as its reference
    checks = check_export(FlipTest(random_ctdet), proto, target=target, input_size=(64, 96), batch=1)
    assert all(c.ok for c in checks), [c.describe() for c in checks]
    if target == "ascend":
        assert proto.opset_import[0].version == 11 and count_ops(proto)["DeformableConv2D"] == 16
        proto = ascend_to_deformconv(proto)
    session = make_session(proto.SerializeToString(), threads=2)
    x = photo_inputs(1, (64, 96), seed=3)
    got = session.run(None, {"actual_input": x})
    assert [a.shape for a in got] == [(1, 80, 16, 24), (1, 2, 16, 24), (1, 2, 16, 24)]
    assert_close_to_reference(got, *hand_flip_test(random_ctdet, x))


def test_flip_cli_checks_the_flip_graph(upstream_checkpoint, tmp_path):
    out = tmp_path / "CenterNet_flip.onnx"
    r = run_script(upstream_checkpoint, out, "--flip", "--input-size", 64, 96, "--threads", 2)
    assert r.returncode == 0, r.stderr
    assert "flip test in the graph" in r.stdout and "check passed" in r.stdout
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    # what output1 holds, and what the file was made from (tests/convert/test_provenance.py)
    assert meta == {"centernet.flip_test": "1", "centernet.hm": "sigmoid",
                    "centernet.checkpoint_sha256": file_sha256(upstream_checkpoint),
                    "centernet.checkpoint": upstream_checkpoint.name, "centernet.target": "onnxruntime",
                    "centernet.dcn": "deformconv", "centernet.input": "64x96", "centernet.checked": "yes",
                    # the fixture's weights are random, and the export says so as the checkpoint does
                    "centernet.random_weights": "1",
                    # and what the model is (core/model_facts.py): ctdet DLA-34 on COCO's settings
                    **ModelFacts(input_size=(64, 96)).to_metadata()}


def test_the_export_says_whether_the_weights_are_random(ctdet_onnx, ordinary_checkpoint, tmp_path):
    from centernet.runtime.ort_session import metadata_random_weights
    meta = lambda path: {p.key: p.value for p in onnx.load(path).metadata_props}  # noqa: E731
    assert meta(ctdet_onnx)["centernet.random_weights"] == "1"  # random_model's weights
    out = tmp_path / "ordinary.onnx"
    r = run_script(ordinary_checkpoint, out, "--input-size", 64, 64, "--no-check")
    assert r.returncode == 0, r.stderr
    assert meta(out)["centernet.random_weights"] == "0"  # a checkpoint without the mark
    assert metadata_random_weights(meta(ctdet_onnx)) and not metadata_random_weights(meta(out))
    assert not metadata_random_weights({})  # a file exported before the key existed
