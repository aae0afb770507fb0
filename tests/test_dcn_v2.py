"""DCNv2 against ONNX's own reference DeformConv, and its two ONNX exports."""
import io

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, TensorProto
from onnx.reference import ReferenceEvaluator

from dcn_v2 import DCN, export_flavour, modulated_deform_conv2d
from centernet.convert.export import ORT_MAX_IR_VERSION, ascend_to_deformconv
from centernet.runtime.ort_session import make_session

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


# --- dcn_v2.py on its own: exact in float64, differentiable, torch only ------

def brute_force_dcn(x, offset, mask, weight, bias, stride=1, pad=1, dilation=1):
    """DCNv2 as its definition reads, one sample at a time, in float64: tap
    k = kw*i + j of output pixel (h, w) reads the input at
    (h*stride - pad + i*dilation + offset[2k], w*stride - pad + j*dilation + offset[2k+1])
    bilinearly, every corner outside the image counting as 0."""
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    out = np.zeros((n, o, ho, wo))

    def pixel(b, ch, yy, xx):
        return x[b, ch, yy, xx] if 0 <= yy < h and 0 <= xx < w else 0.0

    for b in range(n):
        for oy in range(ho):
            for ox in range(wo):
                cols = np.zeros((c, kh, kw))
                for i in range(kh):
                    for j in range(kw):
                        k = kw * i + j
                        py = oy * stride - pad + i * dilation + offset[b, 2 * k, oy, ox]
                        px = ox * stride - pad + j * dilation + offset[b, 2 * k + 1, oy, ox]
                        y0, x0 = int(np.floor(py)), int(np.floor(px))
                        fy, fx = py - y0, px - x0
                        for ch in range(c):
                            v = ((1 - fy) * (1 - fx) * pixel(b, ch, y0, x0) + (1 - fy) * fx * pixel(b, ch, y0, x0 + 1)
                                 + fy * (1 - fx) * pixel(b, ch, y0 + 1, x0) + fy * fx * pixel(b, ch, y0 + 1, x0 + 1))
                            cols[ch, i, j] = v * mask[b, k, oy, ox]
                out[b, :, oy, ox] = (weight * cols).sum(axis=(1, 2, 3)) + bias
    return out


@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_float64_forward_exact_to_brute_force(stride, dilation):
    rng = np.random.default_rng(10 + stride + dilation)
    n, c, h, w, o = 2, 3, 7, 9, 4
    ho = (h + 2 - dilation * 2 - 1) // stride + 1
    wo = (w + 2 - dilation * 2 - 1) // stride + 1
    x = rng.standard_normal((n, c, h, w))
    weight, bias = rng.standard_normal((o, c, 3, 3)), rng.standard_normal(o)
    offset = rng.standard_normal((n, 18, ho, wo)) * 2.5  # many samples beyond the border
    mask = rng.uniform(0, 1, (n, 9, ho, wo))
    ref = brute_force_dcn(x, offset, mask, weight, bias, stride, 1, dilation)
    ours = modulated_deform_conv2d(*map(torch.from_numpy, (x, offset, mask, weight, bias)), stride, 1, dilation)
    assert ours.dtype == torch.float64
    assert np.abs(ours.numpy() - ref).max() <= 1e-9


def test_gradients_pass_gradcheck():
    # Training through DCN: input, weights and the offset/mask conv all get
    # gradients, checked against finite differences in float64 with offsets of
    # a pixel or more (none near an integer sample position, where bilinear
    # interpolation has a kink).
    torch.manual_seed(0)
    layer = DCN(2, 3, 3, 1, 1).double()
    with torch.no_grad():
        layer.conv_offset_mask.weight.normal_(0, 0.3)
        layer.conv_offset_mask.bias.normal_(0, 1.5)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    params = [layer.weight, layer.bias, layer.conv_offset_mask.weight, layer.conv_offset_mask.bias]
    with torch.no_grad():
        offset, _ = layer.offset_and_mask(x)
    assert offset.abs().mean() > 1.0

    def f(x, *p):
        layer.weight, layer.bias = p[0], p[1]
        layer.conv_offset_mask.weight, layer.conv_offset_mask.bias = p[2], p[3]
        return layer(x)

    inputs = [x] + [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p in inputs:
        p.requires_grad_(True)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_dcn_v2_py_drops_into_upstream_alone(tmp_path):
    # Copied alone to upstream's src/lib/models/networks/DCNv2/dcn_v2.py, it
    # imports as upstream's pose_dla_dcn does and runs forward and backward,
    # with nothing of this repository on the path and nothing compiled.
    import shutil
    import subprocess
    from conftest import PYTHON, ROOT
    pkg = tmp_path / "networks" / "DCNv2"
    pkg.mkdir(parents=True)
    (tmp_path / "networks" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    shutil.copy(ROOT / "dcn_v2.py", pkg / "dcn_v2.py")
    code = (
        "import sys; sys.modules['numpy'] = None; sys.modules['onnx'] = None\n"  # torch only
        "import torch\n"
        "from networks.DCNv2.dcn_v2 import DCN, DCNv2\n"
        "layer = DCN(4, 8, kernel_size=(3, 3), stride=1, padding=1, dilation=1, deformable_groups=1)\n"
        "assert sorted(n for n, _ in layer.named_parameters()) == "
        "['bias', 'conv_offset_mask.bias', 'conv_offset_mask.weight', 'weight']\n"
        "x = torch.randn(2, 4, 10, 12, requires_grad=True)\n"
        "y = layer(x); y.sum().backward()\n"
        "assert y.shape == (2, 8, 10, 12) and x.grad is not None and layer.conv_offset_mask.weight.grad is not None\n"
        "print('ok')\n")
    r = subprocess.run([PYTHON, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
