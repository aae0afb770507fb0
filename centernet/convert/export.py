"""Export a CenterNet network (any of upstream's, ctdet or multi_pose) to ONNX for ONNX Runtime or
Ascend ATC, and check it.

Targets:
- onnxruntime: opset 19, each DCN one standard `DeformConv` node (or, with
  dcn="decompose", GridSample + MatMul in standard operators); networks
  without DCN (res, dlav0, hourglass) are plain convolutions.
- ascend: opset 11, each DCN one `DeformableConv2D` node in ATC's layout.
The graph input is `actual_input` (batch, 3, H, W) with a dynamic batch; the
outputs are `output1` (hm), `output2` (wh), `output3` (reg), raw logits; a
multi_pose network's are output1..6: hm, wh, hps, reg, hm_hp, hp_offset.

With flip=True the graph holds upstream's flip test (detectors/ctdet.py):
the batch runs together with its mirror, and output1 is the average of the
two sigmoid heatmaps (not logits), output2 the average of the two wh maps,
output3 the unflipped reg. Names and shapes are unchanged; the ONNX metadata
records which kind of hm the file outputs (FLIP_KEY, HM_KEY).
"""
import copy
import io
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from dcn_v2 import export_flavour

from centernet.io.binio import write_atomic
from centernet.core.compare import difference
from centernet.errors import Interrupted, UserError, write_error
from centernet.convert.provenance import ExportOptions, provenance_metadata
from centernet.constants import (DCN_FORMS, FLIP_KEY, HM_KEY, INPUT_NAME, OUTPUT_NAMES,  # noqa: F401 (re-exported)
                                 TARGETS)
from centernet.constants import POSE_HEADS, RANDOM_WEIGHTS_KEY, output_names
from centernet.model.checkpoint import is_random
from centernet.model.networks import model_facts
from centernet.runtime.ort_session import make_session, run_session
from centernet.runtime.torch_decode import combine_flip_pose_torch

# deformconv is the default because it is the fast one in ONNX Runtime: the
# decomposed graph ran at 0.83x on the CPU (batch 1, 2 threads); its GridSample,
# mask Mul and MatMul take ~1.4x the DeformConv kernel's time (the kernel builds
# each sampling plan once for all channels and fuses the mask into it).
OPSET = {"onnxruntime": 19, "ascend": 11}
ORT_MAX_IR_VERSION = 9  # what the pinned ONNX Runtime reads for opset 19 graphs

logger = logging.getLogger(__name__)



class FlipTest(nn.Module):
    """A network with upstream's flip test in the forward pass: the batch and
    its mirror along the width in one pass. ctdet: hm = (sigmoid(hm0) +
    flip(sigmoid(hm1))) / 2, wh = (wh0 + flip(wh1)) / 2, reg = reg0;
    multi_pose: combine_flip_pose_torch (hps and hm_hp mirrored with their
    left and right joints swapped)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        n = x.shape[0]
        outputs = self.model(torch.cat([x, x.flip(3)]))
        if len(outputs) == len(POSE_HEADS):
            return combine_flip_pose_torch(*outputs)
        hm, wh, reg = outputs
        hm = hm.sigmoid()
        hm = (hm[:n] + hm[n:].flip(3)) / 2
        wh = (wh[:n] + wh[n:].flip(3)) / 2
        return hm, wh, reg[:n]


def export_onnx(model, path, target="onnxruntime", dcn="deformconv", input_size=(512, 512),
                dynamic_size=False, flip=False, facts=None):
    """Export `model` to `path` (written atomically); returns the ModelProto.
    flip: put the flip test into the graph (FlipTest). The metadata says
    whether the model has random weights (RANDOM_WEIGHTS_KEY, from is_random)
    and records its ModelFacts: `facts`, or the network's own (networks.model_facts)
    with this input size unless dynamic_size."""
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
    random_weights = is_random(model)
    if facts is None:  # a dynamic export's trace size is no fact about the model
        facts = model_facts(model) if dynamic_size else model_facts(model).with_settings(input_size=(h, w))
    names = output_names(len(facts.heads))
    model = (FlipTest(model) if flip else model).eval()
    with torch.no_grad(), export_flavour(flavour, static_size=not dynamic_size), warnings.catch_warnings():
        # The TorchScript exporter is the one that maps autograd Functions to
        # custom nodes (DeformConv / DeformableConv2D) directly; it warns that
        # it is deprecated.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), buf, dynamo=False, opset_version=OPSET[target],
            input_names=[INPUT_NAME], output_names=list(names),
            dynamic_axes={INPUT_NAME: axes, **{n: out_axes for n in names}},
            do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = min(proto.ir_version, ORT_MAX_IR_VERSION)
    proto.producer_name = "centernet-deploy"
    onnx.helper.set_model_props(proto, {FLIP_KEY: "1" if flip else "0", HM_KEY: "sigmoid" if flip else "logits",
                                        RANDOM_WEIGHTS_KEY: "1" if random_weights else "0", **facts.to_metadata()})
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
        if node.op_type in ("Unsqueeze", "Squeeze") and any(a.name == "axes" for a in node.attribute):
            # opset 13 moved `axes` from an attribute to an input (the flip
            # test's batch split has an Unsqueeze).
            axes = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "axes")
            name = f"{node.name or node.output[0]}_axes"
            graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), name))
            nodes.append(helper.make_node(node.op_type, [node.input[0], name], list(node.output), name=node.name))
            continue
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


# The self-check's bound, per output: the exported graph (float32) may differ
# from the exact answer (the PyTorch model in float64) by at most
#   max(REL_TOL * max|exact output|, FLOAT32_FACTOR * |PyTorch float32 - exact|).
# float32 rounding through the network's ~60 layers (sums of up to 4608
# products) moves each output by about 5e-5..8e-5 of its largest magnitude on
# weights at the trained model's scale, in ONNX Runtime and in PyTorch alike;
# REL_TOL is 10-20x that. The second term keeps the check honest for a model
# that amplifies rounding more than that: ONNX Runtime is then allowed 10x
# the error of PyTorch's own float32 run. Real bugs (x/y offsets swapped, no
# sigmoid on the mask, padding off by one, the Ascend packing wrong) move the
# outputs by 1e-2 to 1 of their magnitude; tests/convert/test_export.py holds each to it.
REL_TOL = 1e-3
FLOAT32_FACTOR = 10.0


@dataclass
class OutputCheck:
    """One output of the export self-check."""
    name: str
    abs_diff: float      # max |exported - exact|
    scale: float         # max |exact|
    float32_diff: float  # max |PyTorch float32 - exact|: what rounding does here
    bound: float
    problem: str = None  # set when the output cannot be compared at all

    @property
    def rel_diff(self):
        return self.abs_diff / self.scale if self.scale > 0 else self.abs_diff

    @property
    def ok(self):
        return self.problem is None and self.abs_diff <= self.bound

    def describe(self):
        if self.problem:
            return f"check {self.name}: {self.problem}"
        return (f"check {self.name}: max abs diff vs PyTorch float64 {self.abs_diff:.2e} "
                f"(relative {self.rel_diff:.1e} of max |output| {self.scale:.3g}); "
                f"PyTorch float32 {self.float32_diff:.2e}; bound {self.bound:.2e}")


def check_input(batch=2, input_size=(512, 512), seed=0):
    """The self-check's input: synthetic photos through the test transform,
    so the network runs at the activations it has on real images."""
    from centernet.io.synthetic import synthetic_input_batch
    return synthetic_input_batch(batch, input_size, seed=seed)


def check_export(model, proto, target="onnxruntime", input_size=(512, 512), batch=2, seed=0, threads=0,
                 name="the exported graph"):
    """Run the exported graph (ONNX Runtime, float32) and `model` in float64 and
    float32 on the same input; returns one OutputCheck per output (see REL_TOL).
    An Ascend graph is run with its DeformableConv2D nodes mapped back to
    DeformConv. A graph ONNX Runtime cannot load or run is a UserError naming `name`."""
    if target == "ascend":
        proto = ascend_to_deformconv(proto)
    session = make_session(proto.SerializeToString(), threads=threads, name=name)
    x = check_input(batch, input_size, seed)
    try:
        ours = run_session(session, x)
    except Exception as e:  # ORT's own error types: e.g. shapes that do not fit together
        raise UserError(f"{name}: ONNX Runtime cannot run it ({str(e).splitlines()[0][:300]})") from None
    model = model.eval()
    with torch.no_grad():
        exact = [t.numpy() for t in copy.deepcopy(model).double()(torch.from_numpy(x).double())]
        float32 = [t.numpy() for t in model(torch.from_numpy(x))]
    checks = []
    for name, got, ref, f32 in zip(output_names(len(exact)), ours, exact, float32):
        if got.shape != ref.shape:
            checks.append(OutputCheck(name, math.inf, 0.0, math.nan, 0.0,
                                      problem=f"shape {got.shape} instead of {ref.shape}"))
            continue
        abs_diff, scale, _ = difference(got, ref)
        float32_diff = difference(f32, ref)[0]
        checks.append(OutputCheck(name, abs_diff, scale, float32_diff,
                                  max(REL_TOL * scale, FLOAT32_FACTOR * float32_diff)))
    return checks


def require_passed(checks, name):
    """Raise a UserError naming `name` unless every OutputCheck passed."""
    failed = [c for c in checks if not c.ok]
    if failed:
        worst = failed[0]
        what = worst.problem or (f"differs from PyTorch (float64) by {worst.abs_diff:.2e}, more than "
                                 f"float32 rounding explains (bound {worst.bound:.2e})")
        raise UserError(f"{name}: exported graph is wrong: {worst.name} {what}")


def count_ops(proto):
    counts = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def describe_graph(proto, flip=False):
    """'ascend, opset 11, 16 deformable conv nodes, 700 nodes[, flip test ...]'."""
    ops = count_ops(proto)
    dcn_nodes = ops.get("DeformConv", 0) + ops.get("DeformableConv2D", 0)
    target = "ascend" if "DeformableConv2D" in ops else "onnxruntime"
    return (f"{target}, opset {proto.opset_import[0].version}, {dcn_nodes} deformable conv nodes, "
            f"{sum(ops.values())} nodes"
            f"{', flip test in the graph: output1 is the sigmoid-averaged heatmap' if flip else ''}")


@dataclass
class CheckedExport:
    """What export_checked put in place."""
    path: Path
    proto: object
    checks: list = field(default_factory=list)  # empty when the check was skipped

    @property
    def checked(self):
        return bool(self.checks)


def unchecked_path(path):
    """Where export_checked writes `path`'s export before it is checked: a
    hidden temp file in the same folder (so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.unchecked.tmp")


def export_checked(model, path, options=ExportOptions(), checkpoint_sha256="", checkpoint_name="", check=True,
                   threads=0, batch=2, log_prefix="", log_checks=True, trace_size=None):
    """Export `model` to `path`, so that the file appears under its final name
    only once it is whole, checked against PyTorch (unless check=False) and
    records what it was made from (convert/provenance.py: the checkpoint's
    SHA-256 and name, the options, whether it was checked).

    The export goes to a temp file in the same folder (unchecked_path), is
    checked, gets its metadata, and is renamed into place. A failed check is
    a UserError and leaves `path` as it was; Ctrl-C raises Interrupted saying
    whether it came before anything was written or during the check. The
    temp file is removed in every case. Progress is logged (INFO) with
    `log_prefix`; log_checks: one line per output's check too.
    trace_size: for a dynamic-size export, the (H, W) to trace and check at
    (a dynamic graph is the same whatever size it was traced at); the file
    records options.input_size, the model's fixed-mode size, either way."""
    path = Path(path)
    if trace_size is not None and not options.dynamic_size:
        raise ValueError("trace_size is for dynamic-size exports only")
    size = tuple(trace_size or options.input_size)
    existed = path.exists()
    tmp = unchecked_path(path)
    stage = "export"
    try:
        t0 = time.perf_counter()
        facts = model_facts(model).with_settings(mean=options.mean, std=options.std, input_size=options.input_size,
                                                 class_names=options.class_names)
        proto = export_onnx(model, tmp, target=options.target, dcn=options.dcn, input_size=size,
                            dynamic_size=options.dynamic_size, flip=options.flip, facts=facts)
        stage = "check" if check else "finish"
        logger.info(f"{log_prefix}exported to {tmp} ({describe_graph(proto, options.flip)}) in "
                    f"{time.perf_counter() - t0:.1f}s")
        checks = []
        if check:
            logger.info(f"{log_prefix}checking the export against PyTorch (float64) ...")
            t0 = time.perf_counter()
            reference = FlipTest(model) if options.flip else model  # the flip graph is checked against the flip test
            checks = check_export(reference, proto, target=options.target, input_size=size,
                                  batch=batch, threads=threads, name=str(path))
            if log_checks:
                for c in checks:
                    logger.info(f"{log_prefix}{c.describe()}")
            require_passed(checks, path)
            logger.info(f"{log_prefix}check passed in {time.perf_counter() - t0:.1f}s")
            stage = "finish"
        props = {p.key: p.value for p in proto.metadata_props}
        props.update(provenance_metadata(checkpoint_sha256, checkpoint_name, options, checked=check))
        helper.set_model_props(proto, props)
        write_atomic(tmp, proto.SerializeToString())
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise write_error(path, e) from None
    except KeyboardInterrupt:
        _remove(tmp)
        if stage == "export":
            raise Interrupted("nothing was written", "run the same command again") from None
        what = "the unchecked export" if stage == "check" else "the export"
        raise Interrupted(f"{what} {tmp} was removed; {path} {'was left as it was' if existed else 'was not written'}",
                          "run the same command again") from None
    finally:
        _remove(tmp)
    return CheckedExport(path, proto, checks)


def _remove(path):
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
