"""Export ctdet DLA-34 to ONNX for ONNX Runtime or Ascend ATC, and check it.

Targets:
- onnxruntime: opset 19, each DCN one standard `DeformConv` node (or, with
  dcn="decompose", GridSample + MatMul in standard operators).
- ascend: opset 11, each DCN one `DeformableConv2D` node in ATC's layout.
The graph input is `actual_input` (batch, 3, H, W) with a dynamic batch; the
outputs are `output1` (hm), `output2` (wh), `output3` (reg), raw logits.
"""
import io
import warnings

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from .binio import write_atomic
from dcn_v2 import export_flavour
from .errors import UserError
from .runtime import make_session, run_session

INPUT_NAME = "actual_input"
OUTPUT_NAMES = ("output1", "output2", "output3")
TARGETS = ("onnxruntime", "ascend")
# deformconv is the default because it is the fast one in ONNX Runtime: the
# decomposed graph ran at 0.83x on the CPU (batch 1, 2 threads); its GridSample,
# mask Mul and MatMul take ~1.4x the DeformConv kernel's time (the kernel builds
# each sampling plan once for all channels and fuses the mask into it).
DCN_FORMS = ("deformconv", "decompose")
OPSET = {"onnxruntime": 19, "ascend": 11}
ORT_MAX_IR_VERSION = 9  # what the pinned ONNX Runtime reads for opset 19 graphs


def export_onnx(model, path, target="onnxruntime", dcn="deformconv", input_size=(512, 512),
                dynamic_size=False):
    """Export `model` to `path` (written atomically); returns the ModelProto."""
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    if dcn not in DCN_FORMS:
        raise UserError(f"unknown DCN form {dcn!r}; choose from {', '.join(DCN_FORMS)}")
    if target == "ascend" and dcn != "deformconv":
        raise UserError("the ascend target always uses DeformableConv2D; drop --dcn decompose")
    flavour = "ascend" if target == "ascend" else dcn
    h, w = input_size
    dummy = torch.zeros(1, 3, h, w)
    axes = {0: "batch"}
    out_axes = {0: "batch"}
    if dynamic_size:
        axes.update({2: "height", 3: "width"})
        out_axes.update({2: "out_height", 3: "out_width"})
    buf = io.BytesIO()
    model = model.eval()
    with torch.no_grad(), export_flavour(flavour, static_size=not dynamic_size), warnings.catch_warnings():
        # The TorchScript exporter is the one that maps autograd Functions to
        # custom nodes (DeformConv / DeformableConv2D) directly; it warns that
        # it is deprecated.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), buf, dynamo=False, opset_version=OPSET[target],
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: axes, **{n: out_axes for n in OUTPUT_NAMES}},
            do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = min(proto.ir_version, ORT_MAX_IR_VERSION)
    proto.producer_name = "centernet-deploy"
    write_atomic(path, proto.SerializeToString())
    return proto


def ascend_to_deformconv(proto):
    """A copy of an Ascend-target graph with each DeformableConv2D node replaced by
    the equivalent ONNX DeformConv (unpacking the [x, y, mask] offsets), so the
    ATC graph itself can be checked in ONNX Runtime."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    graph = proto.graph
    weights = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "DeformableConv2D":
            nodes.append(node)
            continue
        x, w, packed, b = node.input
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kh, kw = numpy_helper.to_array(weights[w]).shape[2:]
        taps = kh * kw
        # Packed channel layout: [x shifts (taps), y shifts (taps), mask (taps)];
        # DeformConv wants interleaved (y, x) per tap, and the mask apart.
        interleave = np.empty(2 * taps, dtype=np.int64)
        interleave[0::2] = np.arange(taps, 2 * taps)  # y of tap k
        interleave[1::2] = np.arange(taps)            # x of tap k
        p = node.name or node.output[0]
        idx_off, idx_mask = f"{p}_offset_idx", f"{p}_mask_idx"
        graph.initializer.extend([numpy_helper.from_array(interleave, idx_off),
                                  numpy_helper.from_array(np.arange(2 * taps, 3 * taps), idx_mask)])
        nodes += [
            helper.make_node("Gather", [packed, idx_off], [f"{p}_offset"], axis=1),
            helper.make_node("Gather", [packed, idx_mask], [f"{p}_mask"], axis=1),
            helper.make_node("DeformConv", [x, w, f"{p}_offset", b, f"{p}_mask"], list(node.output),
                             kernel_shape=[kh, kw], strides=attrs["strides"],
                             pads=list(attrs["pads"]) * 2, dilations=attrs["dilations"],
                             group=attrs["groups"], offset_group=attrs["deformable_groups"]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    del proto.opset_import[:]
    proto.opset_import.append(helper.make_opsetid("", 19))
    proto.ir_version = ORT_MAX_IR_VERSION
    return proto


def check_export(model, proto, target="onnxruntime", input_size=(512, 512), batch=2, seed=0, threads=0):
    """Run the exported graph in ONNX Runtime and PyTorch on one random input.
    Returns {output name: max abs difference}."""
    if target == "ascend":
        proto = ascend_to_deformconv(proto)
    session = make_session(proto.SerializeToString(), threads=threads)
    x = np.random.default_rng(seed).standard_normal((batch, 3, *input_size)).astype(np.float32)
    ours = run_session(session, x)
    with torch.no_grad():
        ref = [t.numpy() for t in model.eval()(torch.from_numpy(x))]
    return {name: float(np.abs(a - b).max()) for name, a, b in zip(OUTPUT_NAMES, ours, ref)}


def count_ops(proto):
    counts = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
