"""DCNv2 against ONNX's own reference DeformConv, and its two ONNX exports."""
import io

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, TensorProto
from onnx.reference import ReferenceEvaluator

from dcn_v2 import DCN, export_flavour, modulated_deform_conv2d
from centernet.export import ORT_MAX_IR_VERSION, ascend_to_deformconv
from centernet.runtime import make_session

TOL = 1e-4  # max abs error, float32 sampling + a 27-term sum per channel


def reference_deform_conv(x, weight, offset, bias, mask, stride=1, pad=1, dilation=1):
    """ONNX's reference implementation of DeformConv (opset 19)."""
    names = ["X", "W", "offset", "B", "mask"]
    node = helper.make_node("DeformConv", names, ["Y"], kernel_shape=list(weight.shape[2:]),
                            strides=[stride] * 2, pads=[pad] * 4, dilations=[dilation] * 2)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                                           for n in names],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    return ReferenceEvaluator(model).run(None, dict(zip(names, [x, weight, offset, bias, mask])))[0]


def random_case(rng, n=2, c=5, h=9, w=13, o=4):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weight = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    # Offsets from fractions of a pixel to a few pixels; many taps land
    # beyond the border (at and past -1 / H / W).
    offset = (rng.standard_normal((n, 18, h, w)) * rng.choice([0.3, 1.5, 4.0], (n, 18, 1, 1))).astype(np.float32)
    mask = rng.uniform(0.05, 1.0, (n, 9, h, w)).astype(np.float32)
    return x, weight, offset, bias, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_onnx_reference(seed):
    x, weight, offset, bias, mask = random_case(np.random.default_rng(seed))
    ref = reference_deform_conv(x, weight, offset, bias, mask)
    ours = modulated_deform_conv2d(*map(torch.from_numpy, (x, offset, mask, weight, bias)), 1, 1, 1)
    assert np.abs(ours.numpy() - ref).max() <= TOL


def test_integer_offsets_beyond_border_and_at_minus_one():
    # Sample points exactly at -1 and at H/W read only zero corners: 0.
    rng = np.random.default_rng(3)
    x, weight, offset, bias, mask = random_case(rng, n=1, h=5, w=6)
    offset[:] = rng.choice([-7.0, -2.0, -1.0, 0.0, 1.0, 6.0], offset.shape).astype(np.float32)
    ref = reference_deform_conv(x, weight, offset, bias, mask)
    ours = modulated_deform_conv2d(*map(torch.from_numpy, (x, offset, mask, weight, bias)), 1, 1, 1)
    assert np.abs(ours.numpy() - ref).max() <= TOL


def test_zero_offsets_unit_mask_is_plain_conv():
    rng = np.random.default_rng(4)
    x, weight, offset, bias, mask = map(torch.from_numpy, random_case(rng))
    out = modulated_deform_conv2d(x, torch.zeros_like(offset), torch.ones_like(mask), weight, bias, 1, 1, 1)
    conv = torch.nn.functional.conv2d(x, weight, bias, padding=1)
    assert (out - conv).abs().max() <= TOL


def test_module_splits_offset_and_mask_like_upstream():
    # conv_offset_mask output thirds o1, o2, m: offset = cat(o1, o2), mask = sigmoid(m).
    torch.manual_seed(0)
    dcn = DCN(5, 4, 3, 1, 1)
    with torch.no_grad():
        dcn.conv_offset_mask.weight.normal_(0, 0.3)
        dcn.conv_offset_mask.bias.normal_(0, 1.0)
    x = torch.randn(2, 5, 8, 11)
    om = dcn.conv_offset_mask(x)
    o1, o2, m = om[:, :9], om[:, 9:18], om[:, 18:]
    ref = reference_deform_conv(x.numpy(), dcn.weight.detach().numpy(),
                                torch.cat([o1, o2], 1).detach().numpy(), dcn.bias.detach().numpy(),
                                torch.sigmoid(m).detach().numpy())
    with torch.no_grad():
        assert np.abs(dcn(x).numpy() - ref).max() <= TOL
    assert set(dict(dcn.named_parameters())) == {"weight", "bias", "conv_offset_mask.weight",
                                                 "conv_offset_mask.bias"}


def export_layer(dcn, flavour, opset, shape):
    buf = io.BytesIO()
    with torch.no_grad(), export_flavour(flavour):
        torch.onnx.export(dcn, (torch.zeros(shape),), buf, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}})
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = min(proto.ir_version, ORT_MAX_IR_VERSION)
    return proto


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(1)
    dcn = DCN(6, 7, 3, 1, 1).eval()
    with torch.no_grad():
        dcn.conv_offset_mask.weight.normal_(0, 0.2)
        dcn.conv_offset_mask.bias.normal_(0, 1.5)
    return dcn


def test_export_deformconv_runs_in_onnxruntime(layer):
    proto = export_layer(layer, "deformconv", 19, (1, 6, 10, 12))
    assert [n.op_type for n in proto.graph.node].count("DeformConv") == 1
    x = torch.randn(2, 6, 9, 14)  # other batch and size than exported with
    got = make_session(proto.SerializeToString()).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - layer(x).numpy()).max() <= TOL


def test_export_ascend_layout(layer):
    proto = export_layer(layer, "ascend", 11, (1, 6, 10, 12))
    (node,) = [n for n in proto.graph.node if n.op_type == "DeformableConv2D"]
    assert node.domain == ""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["strides"] == [1, 1] and attrs["pads"] == [1, 1] and attrs["dilations"] == [1, 1]
    assert attrs["groups"] == 1 and attrs["deformable_groups"] == 1 and attrs["modulated"] == 1
    assert attrs["data_format"] == b"NCHW"
    # The 27 packed channels, computed by the graph up to the node's third input:
    # [x shifts of taps 0..8, y shifts of taps 0..8, sigmoid(mask) of taps 0..8].
    packed_name = node.input[2]
    probe = onnx.ModelProto.FromString(proto.SerializeToString())
    kept = [n for n in probe.graph.node if n.op_type != "DeformableConv2D"]
    del probe.graph.node[:], probe.graph.output[:]
    probe.graph.node.extend(kept)
    probe.graph.output.append(helper.make_tensor_value_info(packed_name, TensorProto.FLOAT, None))
    x = torch.randn(1, 6, 10, 12)
    packed = ReferenceEvaluator(probe).run([packed_name], {"x": x.numpy()})[0]
    with torch.no_grad():
        offset, mask = layer.offset_and_mask(x)
    np.testing.assert_allclose(packed[:, 0:9], offset[:, 1::2].numpy(), atol=1e-5)
    np.testing.assert_allclose(packed[:, 9:18], offset[:, 0::2].numpy(), atol=1e-5)
    np.testing.assert_allclose(packed[:, 18:27], mask.numpy(), atol=1e-5)
    # And mapped back to DeformConv, the Ascend graph computes the layer.
    got = make_session(ascend_to_deformconv(proto).SerializeToString()).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - layer(x).numpy()).max() <= TOL


def test_export_decompose_has_no_custom_node(layer):
    proto = export_layer(layer, "decompose", 19, (1, 6, 10, 12))
    ops = {n.op_type for n in proto.graph.node}
    assert "DeformConv" not in ops and "GridSample" in ops
    x = torch.randn(2, 6, 10, 12)
    got = make_session(proto.SerializeToString()).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - layer(x).numpy()).max() <= TOL
