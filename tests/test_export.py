"""CenterNet_pth2onnx.py: both targets, their layouts, and the self-check."""
import subprocess

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from centernet.export import ascend_to_deformconv, check_export, count_ops, export_onnx
from centernet.runtime import make_session
from conftest import PYTHON, ROOT

SMALL = (128, 160)  # H != W, and fast


def run_script(*args):
    return subprocess.run([PYTHON, str(ROOT / "CenterNet_pth2onnx.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_default_target_cli(upstream_checkpoint, tmp_path):
    out = tmp_path / "CenterNet.onnx"
    r = run_script(upstream_checkpoint, out)
    assert r.returncode == 0, r.stderr
    assert "16 deformable conv nodes" in r.stdout and "check passed" in r.stdout
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
    diffs = check_export(random_ctdet, proto, target="ascend", input_size=SMALL, batch=1)
    assert max(diffs.values()) <= 1e-3


def test_dynamic_size_and_decompose(random_ctdet, tmp_path):
    proto = export_onnx(random_ctdet, tmp_path / "d.onnx", dcn="decompose", dynamic_size=True,
                        input_size=SMALL)
    assert "DeformConv" not in count_ops(proto) and count_ops(proto)["GridSample"] == 16
    session = make_session(str(tmp_path / "d.onnx"))
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 64)).astype(np.float32)
    got = session.run(None, {"actual_input": x})
    with torch.no_grad():
        ref = random_ctdet(torch.from_numpy(x))
    for a, b in zip(got, ref):
        assert a.shape == tuple(b.shape) and np.abs(a - b.numpy()).max() <= 1e-3


def test_input_size_option(upstream_checkpoint, tmp_path):
    out = tmp_path / "new" / "sub" / "s.onnx"  # missing folders are created
    r = run_script(upstream_checkpoint, out, "--input-size", 64, 96, "--no-check")
    assert r.returncode == 0, r.stderr and "check" not in r.stdout
    dims = [d.dim_value for d in onnx.load(out).graph.input[0].type.tensor_type.shape.dim][1:]
    assert dims == [3, 64, 96]


def test_ascend_mapping_is_exact_permutation(random_ctdet, tmp_path):
    # The DeformConv graph made from the Ascend export equals the direct DeformConv export.
    a = ascend_to_deformconv(export_onnx(random_ctdet, tmp_path / "a.onnx", target="ascend", input_size=SMALL))
    b = export_onnx(random_ctdet, tmp_path / "b.onnx", input_size=SMALL)
    x = np.random.default_rng(1).standard_normal((2, 3, *SMALL)).astype(np.float32)
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
    assert len(r.stderr.strip().splitlines()) == 1 and "not a ctdet DLA-34 checkpoint" in r.stderr


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
