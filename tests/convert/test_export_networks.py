"""Every upstream network exports for every target, and the file computes what
the network computes: parity with the float64 model (the export self-check's
bound), DCN layers against ONNX's reference DeformConv, the PyTorch backend
on each network."""
import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from onnx.reference import ReferenceEvaluator

from conftest import POSE, assert_parity, calibrated_network, calibrated_pose_network, photo_inputs
from centernet.convert.export import REL_TOL, check_export, export_onnx, require_passed
from centernet.core.model_facts import ModelFacts
from centernet.runtime.ort_session import make_session, open_ort_session
from centernet.runtime.torch_session import TorchOptions, TorchSession

SIZE = (96, 128)


@pytest.mark.parametrize("network,target,dcn", [
    ("res_18", "onnxruntime", "deformconv"),
    ("dlav0_34", "onnxruntime", "deformconv"),
    ("resdcn_18", "onnxruntime", "deformconv"),
    ("resdcn_18", "onnxruntime", "decompose"),
    ("resdcn_18", "ascend", "deformconv"),
])
def test_each_network_exports_and_matches_its_float64_model(network, target, dcn, tmp_path):
    model = calibrated_network(network)
    proto = export_onnx(model, tmp_path / "m.onnx", target=target, dcn=dcn, input_size=SIZE)
    ops = {n.op_type for n in proto.graph.node}
    dcn_op = {"ascend": "DeformableConv2D"}.get(target, "DeformConv" if dcn == "deformconv" else None)
    if network.startswith("resdcn"):
        assert dcn_op is None or sum(n.op_type == dcn_op for n in proto.graph.node) == 3
    else:
        assert not ops & {"DeformConv", "DeformableConv2D", "GridSample"}  # plain convolutions
    checks = check_export(model, proto, target=target, input_size=SIZE, batch=2)
    require_passed(checks, network)
    assert all(c.rel_diff <= REL_TOL for c in checks), [c.describe() for c in checks]
    facts = ModelFacts.from_metadata({p.key: p.value for p in proto.metadata_props})
    assert facts == model.facts.with_settings(input_size=SIZE)


@pytest.mark.parametrize("network,target,dcn,flip", [
    ("dla_34", "onnxruntime", "deformconv", False),
    ("resdcn_18", "onnxruntime", "deformconv", True),
    ("resdcn_18", "onnxruntime", "decompose", False),
    ("resdcn_18", "ascend", "deformconv", True),
])
def test_a_multi_pose_network_exports_its_six_heads_and_matches_its_float64_model(network, target, dcn, flip,
                                                                                  tmp_path):
    from centernet.convert.export import FlipTest
    model = calibrated_pose_network(network)
    proto = export_onnx(model, tmp_path / "m.onnx", target=target, dcn=dcn, input_size=SIZE, flip=flip)
    assert [o.name for o in proto.graph.output] == [f"output{i}" for i in range(1, 7)]
    reference = FlipTest(model) if flip else model
    checks = check_export(reference, proto, target=target, input_size=SIZE, batch=2)
    require_passed(checks, network)
    assert len(checks) == 6 and all(c.rel_diff <= REL_TOL for c in checks), [c.describe() for c in checks]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["centernet.task"] == "multi_pose"
    assert meta["centernet.heads"] == "hm:1,wh:2,hps:34,reg:2,hm_hp:17,hp_offset:2"
    facts = ModelFacts.from_metadata(meta)
    assert facts == model.facts.with_settings(input_size=SIZE) and facts.task == "multi_pose"
    if target == "onnxruntime":
        session = open_ort_session(proto.SerializeToString())
        caps = session.capabilities
        assert caps.heads == tuple(POSE.items()) and caps.flip_in_graph == flip and caps.facts.task == "multi_pose"


def _dcn_inputs_and_outputs(proto):
    """A copy of `proto` whose outputs also include every DeformConv node's
    inputs and output."""
    proto = copy.deepcopy(proto)
    nodes = [n for n in proto.graph.node if n.op_type == "DeformConv"]
    names = [name for n in nodes for name in (*n.input, n.output[0])]
    known = {o.name for o in proto.graph.output}
    for name in dict.fromkeys(names):
        if name not in known and name not in {i.name for i in proto.graph.initializer}:
            proto.graph.output.append(helper.make_empty_tensor_value_info(name))
    return proto, nodes


def _single_deformconv(node):
    """A model of one DeformConv node with `node`'s attributes."""
    inputs = [f"i{k}" for k in range(5)]
    graph = helper.make_graph(
        [helper.make_node("DeformConv", inputs, ["y"], **{a.name: helper.get_attribute_value(a) for a in node.attribute})],
        "dcn", [helper.make_tensor_value_info(i, onnx.TensorProto.FLOAT, None) for i in inputs],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def test_resdcn_deform_convs_equal_onnx_reference_deformconv(tmp_path):
    """Each DCN layer of the exported network, on the activations ONNX Runtime
    feeds it inside the network (offsets of a pixel or more): its output
    equals the exact deformable convolution (float64), and ONNX Runtime's
    DeformConv equals ONNX's reference operator on those inputs (a few
    channels of them: the reference is a Python loop)."""
    from dcn_v2 import modulated_deform_conv2d
    model = calibrated_network("resdcn_18")
    proto, nodes = _dcn_inputs_and_outputs(export_onnx(model, tmp_path / "resdcn.onnx", input_size=SIZE))
    session = make_session(proto.SerializeToString())
    x = photo_inputs(1, SIZE, seed=4)
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"actual_input": x})))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert len(nodes) == 3
    for node in nodes:
        x_, w, offset, b, mask = (np.asarray(values.get(n, weights.get(n)), np.float32) for n in node.input)
        assert np.abs(offset).max() >= 1.0  # the calibration's offsets: a pixel or more
        exact = modulated_deform_conv2d(*(torch.from_numpy(t).double() for t in (x_, offset, mask, w, b)),
                                        stride=1, padding=1).numpy()
        assert_parity(values[node.output[0]], exact, rel=1e-5, what=f"{node.output[0]} vs float64")
        crop = (x_[:, :4], w[:2, :4], offset, b[:2], mask)
        feeds = {f"i{k}": np.ascontiguousarray(t) for k, t in enumerate(crop)}
        single = _single_deformconv(node)
        ref = ReferenceEvaluator(single).run(None, feeds)[0]
        got = make_session(single.SerializeToString()).run(None, feeds)[0]
        assert_parity(got, ref, rel=1e-5, what=f"{node.output[0]} vs ONNX's reference DeformConv")


@pytest.mark.parametrize("network", ["res_18", "resdcn_18", "dlav0_34"])
def test_the_pytorch_backend_runs_each_network(network):
    model = calibrated_network(network)
    x = photo_inputs(2, SIZE, seed=2)
    session = TorchSession(model, TorchOptions(), input_size=None)
    assert session.capabilities.facts == model.facts and session.capabilities.num_classes == 3
    got = session.run(x)
    with torch.no_grad():
        exact = [t.numpy() for t in copy.deepcopy(model).double()(torch.from_numpy(x).double())]
    for name, g, e in zip(("hm", "wh", "reg"), got, exact):
        assert_parity(g, e, what=f"{network} {name}")
    assert session.info["batchnorms_folded"] > 0


def test_hourglass_exports_runs_in_pytorch_and_pads_to_128(tmp_path):
    # Hourglass-104 (190 M parameters): once, at its smallest input.
    from centernet.core.modes import TestMode
    from centernet.pipeline.predictor import Predictor
    model = calibrated_network("hourglass", num_classes=2)
    size = (128, 128)
    proto = export_onnx(model, tmp_path / "hg.onnx", input_size=size)
    checks = check_export(model, proto, input_size=size, batch=1)
    require_passed(checks, "hourglass")
    facts = open_ort_session(tmp_path / "hg.onnx").capabilities.facts
    assert facts.network == "hourglass" and facts.pad == 127 and facts.head_conv == 256
    session = TorchSession(model, TorchOptions(), input_size=None)
    x = photo_inputs(1, size, seed=1)
    ort = open_ort_session(tmp_path / "hg.onnx").run(x)
    for name, a, b in zip(("hm", "wh", "reg"), session.run(x), ort):
        assert_parity(a, b, what=f"hourglass {name}")
    # Keep resolution rounds each side up to a multiple of 128: a 150x200 image runs at 256x256.
    predictor = Predictor(session, TestMode(keep_res=True))
    assert predictor.spec.pad == 127 and predictor.spec.input_hw(150, 200) == (256, 256)
    with pytest.raises(ValueError, match="multiples of 128"):
        session.run(np.zeros((1, 3, 160, 160), np.float32))
