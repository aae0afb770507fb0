"""The PyTorch backend (centernet/runtime/torch_session.py) on the CPU: the ONNX Runtime
backend's outputs and detections in fp32, its switches, bf16, the scripts' flags.
Speed is not asserted here: CenterNet_benchmark.py and benchmarks/gpu_torch.py measure it."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from centernet.core.compare import detection_agreement
from centernet.core.decode import decode_ctdet
from centernet.errors import UserError
from centernet.pipeline.staged_infer import run_folder
from centernet.runtime.ort_session import make_session, run_session
from centernet.pipeline.stream import stream_detections
from centernet.runtime.torch_session import TorchOptions, TorchSession
from centernet.runtime.torch_decode import combine_flip_torch, decode_ctdet_torch
from centernet.runtime.torch_model import _Fp32Conv, fuse_batchnorms
from conftest import ROOT, assert_one_line_error, assert_parity, photo_inputs
from conftest import run_infer

SMALL = (128, 128)


@pytest.fixture(scope="module")
def small_batch():
    return photo_inputs(2, SMALL, seed=3)


@pytest.fixture(scope="module")
def plain_outputs(random_ctdet, small_batch):
    """The network as pose_dla_dcn builds it, float32, on small_batch."""
    with torch.no_grad():
        return [o.numpy() for o in random_ctdet(torch.from_numpy(small_batch))]


def as_arrays(results):
    """COCO results of one image -> (scores, category ids, boxes x1 y1 x2 y2), best first."""
    results = sorted(results, key=lambda d: -d["score"])
    boxes = np.array([d["bbox"] for d in results], np.float64)
    boxes[:, 2:] += boxes[:, :2]
    return (np.array([d["score"] for d in results]), np.array([d["category_id"] for d in results]), boxes)


def same_detections(a, b, box_tol, score_tol):
    """How many detections of b (scores, classes, boxes) have their own one in
    a with the same class, every box coordinate within box_tol and the score
    within score_tol."""
    used = np.zeros(len(a[0]), bool)
    count = 0
    for score, cls, box in zip(*b):
        ok = (~used & (a[1] == cls) & (np.abs(a[2] - box).max(1) <= box_tol)
              & (np.abs(a[0] - score) <= score_tol))
        if ok.any():
            used[np.flatnonzero(ok)[0]] = True
            count += 1
    return count


def session(model, input_size=SMALL, **options):
    # One thread: timings are not asserted, and one thread does not stall
    # when other processes hold the CPUs.
    options.setdefault("threads", 1)
    return TorchSession(model, TorchOptions(**options), input_size=input_size)


# --- fp32: the ONNX Runtime backend's outputs and detections -----------------

def test_run_infer_torch_backend_matches_onnxruntime(upstream_checkpoint, ctdet_onnx, tmp_path):
    # run_infer.sh with the .pth: ais_bench's layout, the same tensors as
    # ONNX Runtime on the export.
    from centernet.io.binio import write_bin
    folder = tmp_path / "prep"
    folder.mkdir()
    x = photo_inputs(2, (512, 512), seed=5)
    stems = ["000000000139", "000000000285"]
    for stem, image in zip(stems, x):
        write_bin(folder / f"{stem}.bin", image)
    r = run_infer("--model", upstream_checkpoint, "--input", folder, "--output", tmp_path / "out",
                  "--output_dirname", "dump", "--batchsize", 2, "--threads", 1)
    assert r.returncode == 0, r.stderr
    assert "torch backend: cpu, fp32" in r.stdout and "fps" in r.stdout
    expected = run_session(make_session(ctdet_onnx, threads=2), x)
    shapes = [(80, 128, 128), (2, 128, 128), (2, 128, 128)]
    for j, stem in enumerate(stems):
        for i, shape in enumerate(shapes):
            got = np.fromfile(tmp_path / "out" / "dump" / f"{stem}_{i}.bin", dtype=np.float32).reshape(shape)
            assert_parity(got, expected[i][j], what=f"{stem}_{i}")
    summary = json.loads((tmp_path / "out" / "dump_summary.json").read_text())
    assert summary["images"] == 2 and summary["batches"] == 1
    assert summary["backend"]["backend"] == "torch" and summary["backend"]["precision"] == "fp32"
    assert summary["random_weights"] is True  # the checkpoint's mark, as ONNX Runtime reads it from the export


def test_eval_script_torch_backend_gives_the_onnxruntime_detections(synthetic_coco, upstream_checkpoint,
                                                                    ctdet_onnx, tmp_path, run_script):
    # The streaming evaluation on the demo data: --backend torch (fp32) on the
    # .pth finds the detections ONNX Runtime finds on the export.
    ann = synthetic_coco["annotation_file"]
    r = run_script("CenterNet_eval.py", "--model", upstream_checkpoint, "--dataset", synthetic_coco["root"],
                   "--limit", 2, "--threads", 1, "--workers", 1, "--batchsize", 2, "--output",
                   tmp_path / "res.json", "--resultfolder", tmp_path / "ev", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "torch backend: cpu, fp32" in r.stdout
    ours = json.loads((tmp_path / "res.json").read_text())
    theirs, ids, errors, _ = stream_detections(ctdet_onnx, synthetic_coco["images_dir"], ann, batchsize=2,
                                               threads=2, limit=2, progress=False)
    assert not errors and len(ours) == len(theirs) == 200
    for image_id in ids:
        a, b = (as_arrays([d for d in res if d["image_id"] == image_id]) for res in (ours, theirs))
        # Same detections: each of ONNX Runtime's 100 has its own one here of the
        # same class, box (to 0.01 px: float32 rounding moves wh by ~5e-5 of its
        # ~60 output pixels, 3e-3 px) and score (to 5e-4: rounding moves hm
        # logits by up to ~5e-4, a sigmoid score by a quarter of that). Near-equal
        # scores may come in another order, and at the 100th place such a tie
        # may let another candidate in instead.
        matched = same_detections(a, b, box_tol=1e-2, score_tol=5e-4)
        cut = b[0][-1]
        assert matched >= 100 - np.sum(np.abs(b[0] - cut) <= 5e-4), (image_id, matched)
    stats = json.loads((tmp_path / "ev" / "stream_summary.json").read_text())
    assert stats["backend"]["backend"] == "torch"


def test_session_declares_its_capabilities(random_ctdet, small_batch, plain_outputs):
    from centernet.runtime.session import Capabilities
    s = session(random_ctdet)
    assert s.capabilities == Capabilities(input_size=(128, 128), accepts_warped=True, decodes_on_device=False,
                                          random_weights=True)  # the fixture's weights are random, and marked
    outs = s.run(small_batch)
    assert [o.dtype for o in outs] == [np.float32] * 3
    for name, got, ref in zip("hm wh reg".split(), outs, plain_outputs):
        assert_parity(got, ref, what=name)
    with pytest.raises(ValueError, match="the session takes 128x128"):
        s.run_batch(np.zeros((1, 3, 64, 64), np.float32))
    dynamic = session(random_ctdet, input_size=None)
    assert dynamic.capabilities.input_size is None
    assert dynamic.run_batch(small_batch[:1, :, :96, :64])[0].shape == (1, 80, 24, 16)
    with pytest.raises(ValueError, match="multiples of 32"):
        dynamic.run_batch(np.zeros((1, 3, 100, 64), np.float32))


def test_session_says_whether_the_weights_are_random(random_ctdet, ordinary_checkpoint, upstream_checkpoint):
    assert session(random_ctdet).capabilities.random_weights
    assert TorchSession(str(upstream_checkpoint), TorchOptions(threads=1)).capabilities.random_weights
    assert not TorchSession(str(ordinary_checkpoint), TorchOptions(threads=1)).capabilities.random_weights


def test_session_leaves_the_given_model_alone(random_ctdet):
    before = {k: v.clone() for k, v in random_ctdet.state_dict().items()}
    session(random_ctdet, precision="bf16", cast="model")
    after = random_ctdet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(type(m).__name__ != "KernelDCN" for m in random_ctdet.modules())


# --- the switches ------------------------------------------------------------

def test_fused_batchnorms_give_the_same_outputs(random_ctdet, small_batch, plain_outputs):
    s = session(random_ctdet, fuse_bn=True)
    assert s.info["batchnorms_folded"] == sum(isinstance(m, nn.BatchNorm2d) for m in random_ctdet.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in s.model.modules())
    for name, got, ref in zip("hm wh reg".split(), s.run_batch(small_batch), plain_outputs):
        assert_parity(got, ref, what=name)


def test_fuse_batchnorms_refuses_an_unknown_layout():
    net = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="not after a convolution"):
        fuse_batchnorms(net.eval())


def test_channels_last_gives_the_same_outputs(random_ctdet, small_batch, plain_outputs):
    s = session(random_ctdet, channels_last=True, fuse_bn=False)
    assert s.model.base.base_layer[0].weight.is_contiguous(memory_format=torch.channels_last)
    for name, got, ref in zip("hm wh reg".split(), s.run_batch(small_batch), plain_outputs):
        assert_parity(got, ref, what=name)


def test_compile_traces_the_network(random_ctdet, small_batch, plain_outputs):
    # torch.compile's graph capture (Dynamo) through the whole network, DCN
    # included; the "eager" compiler backend keeps this fast and needs no C++
    # compiler. What Inductor buys is measured on the GPU (benchmarks/gpu_torch.py).
    s = session(random_ctdet, compile=True, compile_backend="eager")
    assert s.module is not s.model
    for name, got, ref in zip("hm wh reg".split(), s.run_batch(small_batch[:1]), plain_outputs):
        assert_parity(got, ref[:1], what=name)


def test_cuda_only_options_are_one_line_errors(random_ctdet):
    with pytest.raises(UserError, match="CUDA graphs need --device cuda"):
        session(random_ctdet, cuda_graphs=True)
    with pytest.raises(UserError, match="tf32 is a CUDA precision"):
        session(random_ctdet, precision="tf32")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="sees no CUDA GPU"):
            session(random_ctdet, device="cuda")


# --- fp16 / bf16 ---------------------------------------------------------------

@pytest.fixture(scope="module")
def bf16_rounded_input_outputs(random_ctdet, small_batch):
    """The float32 network on the input rounded to bf16: the disturbance a bf16
    network starts from before any of its own arithmetic."""
    with torch.no_grad():
        x = torch.from_numpy(small_batch).to(torch.bfloat16).float()
        return [o.numpy() for o in random_ctdet(x)]


def mean_rel(got, ref):
    return [float(np.abs(g - r).mean() / np.abs(r).mean()) for g, r in zip(got, ref)]


@pytest.mark.parametrize("cast", ["autocast", "model"])
def test_bf16_runs_on_cpu_within_bf16_rounding(random_ctdet, small_batch, plain_outputs,
                                               bf16_rounded_input_outputs, cast):
    s = session(random_ctdet, precision="bf16", cast=cast)
    outs = s.run_batch(small_batch)
    assert [o.dtype for o in outs] == [np.float32] * 3 and all(np.isfinite(o).all() for o in outs)
    # The heads' final convolutions are float32; with cast=model the rest is bf16.
    for head in ("hm", "wh", "reg"):
        last = getattr(s.model, head)[-1]
        assert isinstance(last, _Fp32Conv) and last.conv.weight.dtype == torch.float32
    first = s.model.base.base_layer[0].weight.dtype
    assert first == (torch.bfloat16 if cast == "model" else torch.float32)
    # How far bf16 moves the outputs, against how far rounding only the input
    # to bf16 moves them (mean |difference| / mean |output|). The fixture network
    # amplifies any early rounding (an input rounded to bf16 alone moves hm by
    # ~0.5-2% on average), so bf16 arithmetic in all layers may add a few times
    # that, but not more: a wrong cast or a DCN sampling in low precision would.
    yardstick = mean_rel(bf16_rounded_input_outputs, plain_outputs)
    moved = mean_rel(outs, plain_outputs)
    for name, m, y in zip("hm wh reg".split(), moved, yardstick):
        assert m <= 4 * y, f"{name}: bf16 moved it by {m:.2e} of its mean, input rounding alone {y:.2e}"
    # Detections: the measure the GPU script reports (share of the fp32 top 100
    # recovered with IoU >= 0.9 and the same class). On the fixture network it is
    # low for bf16 (see docs/benchmarks.md); here only that it is measured and sane.
    agree = detection_agreement(outs, plain_outputs)
    assert 0 < agree["share"] <= 1 and len(agree["per_image"]) == 2


def test_fp32_session_recovers_every_detection(random_ctdet, small_batch, plain_outputs):
    agree = detection_agreement(session(random_ctdet).run_batch(small_batch), plain_outputs)
    assert agree["share"] == 1.0


def test_without_fp32_heads_the_heads_run_in_low_precision(random_ctdet, small_batch):
    s = session(random_ctdet, precision="bf16", cast="model", fp32_heads=False)
    assert s.model.hm[-1].weight.dtype == torch.bfloat16
    assert all(np.isfinite(o).all() for o in s.run_batch(small_batch[:1]))


# --- the scripts' flags ----------------------------------------------------------

def test_torch_only_flags_on_onnxruntime_are_refused(ctdet_onnx, upstream_checkpoint, tmp_path, run_script):
    r = run_script("CenterNet_infer.py", "--model", ctdet_onnx, "--loop", 1, "--precision", "bf16", cwd=tmp_path)
    assert_one_line_error(r, "--precision", "--backend torch")
    r = run_script("CenterNet_infer.py", "--model", upstream_checkpoint, "--loop", 1, "--cuda-graphs",
                   cwd=tmp_path)
    assert_one_line_error(r, "CUDA graphs need --device cuda")
    from centernet.runtime.backends import open_session
    with pytest.raises(UserError, match="a PyTorch checkpoint; run it with --backend torch"):
        open_session(upstream_checkpoint, "onnxruntime")
    with pytest.raises(UserError, match="takes the .pth checkpoint"):
        open_session(ctdet_onnx, "torch")
    with pytest.raises(UserError, match="runs on cpu or cuda, not tensorrt"):
        open_session(upstream_checkpoint, "torch", device="tensorrt")


def test_run_folder_with_a_torch_session_in_process(random_ctdet, tmp_path):
    from centernet.io.binio import write_bin
    folder = tmp_path / "in"
    folder.mkdir()
    x = photo_inputs(2, SMALL, seed=4)
    for i, image in enumerate(x):
        write_bin(folder / f"{i}.bin", image)
    s = session(random_ctdet, precision="bf16")
    summary = run_folder("model.pth", folder, tmp_path / "out", "d", batchsize=2, session=s, progress=False)
    assert summary["images"] == 2 and summary["backend"]["precision"] == "bf16"
    assert summary["backend"]["dcn_kernel"] in ("ours", "torchvision")
    got = np.fromfile(tmp_path / "out" / "d" / "1_0.bin", dtype=np.float32)
    assert got.size == 80 * 32 * 32 and np.isfinite(got).all()


def test_benchmark_rows_for_the_torch_backend(random_ctdet, tmp_path):
    from centernet.bench.benchmark import format_table, run_benchmark
    result = run_benchmark(random_ctdet, "random", backends=["torch-cpu", "torch-cuda"], batchsizes=(1,), loop=1,
                           threads=1, input_size=(64, 64), workdir=tmp_path, sgemm_n=128,
                           torch_precisions=("fp32", "bf16", "tf32"))
    # torch-cuda has a row per precision where PyTorch sees a GPU, and is skipped elsewhere;
    # tf32 is CUDA's alone.
    cuda = torch.cuda.is_available()
    want = ["torch-cpu-fp32", "torch-cpu-bf16"] + (["torch-cuda-fp32", "torch-cuda-bf16", "torch-cuda-tf32"]
                                                   if cuda else [])
    assert [r["backend"] for r in result["rows"]] == want
    assert "torch-cpu-tf32" in result["skipped"]
    assert ("torch-cuda" in result["skipped"]) == (not cuda)
    ceilings = {(c["device"], c["precision"]): c["gflops"] for c in result["matmul_ceilings"]}
    assert ceilings[("cpu", "fp32")] == result["sgemm_gflops"]["ceiling"] and ceilings[("cpu", "bf16")] > 0
    assert all(ceilings[("cuda", p)] > 0 for p in ("fp32", "bf16", "tf32")) if cuda else \
        not any(d == "cuda" for d, _ in ceilings)
    bf16 = next(r for r in result["rows"] if r["backend"] == "torch-cpu-bf16")
    assert bf16["ceiling_gflops"] == ceilings[("cpu", "bf16")]
    # of_sgemm is round(GFLOP/s / ceiling, 3) of the unrounded GFLOP/s, which the row shows rounded
    # to 0.01: it lies between the bounds that rounding leaves (a bf16 ceiling can be ~1 GFLOP/s on a
    # CPU without bf16 units, so the shown GFLOP/s alone says little more).
    g, c = bf16["gflops"], bf16["ceiling_gflops"]
    assert round((g - 0.005) / c, 3) <= bf16["of_sgemm"] <= round((g + 0.005) / c, 3), (g, c, bf16["of_sgemm"])
    assert result["torch_backend"]["torch-cpu-bf16"]["precision"] == "bf16"
    assert "cpu bf16" in format_table(result)


def test_dcn_v2_py_still_knows_nothing_of_torchvision():
    text = (ROOT / "dcn_v2.py").read_text()
    assert "torchvision" not in text and "centernet" not in text


@pytest.mark.parametrize("mode", [dict(keep_res=True, flip=True), dict(keep_res=True, scales=(0.75, 1.0))])
def test_streamed_test_modes_give_the_onnxruntime_detections(tiny_coco, ctdet_onnx_dynamic, random_ctdet, mode):
    # Keep resolution (many input sizes), flip and multi-scale around a
    # dynamic-size PyTorch session: ONNX Runtime's detections on the
    # dynamic-size export, within the same tolerances as in fixed mode.
    from centernet.core.modes import TestMode
    ann = tiny_coco["annotation_file"]
    kw = dict(batchsize=2, workers=1, progress=False, mode=TestMode(**mode))
    theirs, ids, errors, _ = stream_detections(ctdet_onnx_dynamic, tiny_coco["images_dir"], ann, threads=1, **kw)
    ours, ids2, errors2, stats = stream_detections("model.pth", tiny_coco["images_dir"], ann,
                                                   session=session(random_ctdet, input_size=None), **kw)
    assert ids == ids2 and not errors and not errors2 and stats["input_sizes"] > 1
    for image_id in ids:
        a, b = (as_arrays([d for d in res if d["image_id"] == image_id]) for res in (ours, theirs))
        assert len(a[0]) == len(b[0])
        matched = same_detections(a, b, box_tol=1e-2, score_tol=5e-4)
        cut = b[0][-1]
        assert matched >= len(b[0]) - np.sum(np.abs(b[0] - cut) <= 5e-4), (image_id, matched, len(b[0]))


@pytest.mark.parametrize("channels_last", [False, True])
def test_warped_images_normalise_on_the_device_to_the_cpu_bits(random_ctdet, channels_last):
    from centernet.io.synthetic import synthetic_photo
    from centernet.core.transforms import prepare_input, warp_input
    rng = np.random.default_rng(7)
    images = [synthetic_photo(rng, w, h)[0] for w, h in ((150, 100), (90, 140))]
    warped = np.stack([warp_input(im, SMALL)[0] for im in images])
    expected = np.concatenate([prepare_input(im, SMALL)[0] for im in images])
    s = session(random_ctdet, channels_last=channels_last)
    with torch.no_grad():
        got = s.warped_to_device(warped)
    assert got.dtype == torch.float32 and got.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert np.array_equal(got.numpy(), expected)  # bit for bit
    for a, b in zip(s.run_warped(warped), s.run_batch(expected)):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="expected uint8"):
        s.run_warped(expected)


def test_stream_sends_warped_images_to_the_torch_backend(tiny_coco, random_ctdet, monkeypatch):
    # The workers send uint8 warped images when the session takes them: the
    # same detections as with float32 inputs, bit for bit.
    from centernet.core.modes import TestMode
    sent = []
    kw = dict(batchsize=2, workers=1, progress=False, mode=TestMode(keep_res=True))
    on = session(random_ctdet, input_size=None, warped_input=True)
    off = session(random_ctdet, input_size=None, warped_input=False)
    original = on.run_warped
    monkeypatch.setattr(on, "run_warped", lambda x: sent.append(x.dtype) or original(x))
    a = stream_detections("m.pth", tiny_coco["images_dir"], tiny_coco["annotation_file"], session=on, **kw)[0]
    b = stream_detections("m.pth", tiny_coco["images_dir"], tiny_coco["annotation_file"], session=off, **kw)[0]
    assert sent and set(sent) == {np.dtype(np.uint8)}
    assert a == b


# --- decoding on the device ---------------------------------------------------

def heat_cases():
    """Heatmaps (after the sigmoid) that exercise decode_ctdet's rules, with wh and reg."""
    rng = np.random.default_rng(11)
    logits = rng.standard_normal((4, 80, 24, 40)) * 2 - 4
    heat = (1 / (1 + np.exp(-logits))).astype(np.float32)
    heat[1] = np.round(heat[1] * 20) / 20      # plateaus: equal neighbours, many equal scores
    heat[2] = 0                                 # fewer peaks than K: zeros fill up, lowest index first
    heat[2, 5, 3, 4] = heat[2, 7, 10, 10] = 0.7
    heat[2, 79, 23, 39] = 0.9                   # a peak in the very last position
    heat[3, :, 0, :] = heat[3, :, :, 0] = 0.99  # equal peaks along two borders
    wh = (rng.random((4, 2, 24, 40)) * 60).astype(np.float32)
    reg = rng.random((4, 2, 24, 40)).astype(np.float32)
    return heat, wh, reg


@pytest.mark.parametrize("K", [100, 7, 24 * 40])
def test_device_decode_is_decode_ctdet_on_the_same_heat(K):
    heat, wh, reg = heat_cases()
    expected = decode_ctdet(heat, wh, reg, K=K, hm_is_heat=True)
    got = decode_ctdet_torch(*map(torch.from_numpy, (heat, wh, reg)), K=K, hm_is_heat=True)
    for e, g in zip(expected, got):
        assert np.array_equal(e, g.numpy())  # bit for bit: order and ties included


def one_ulp_same(a, b, K, ulps=1):
    """decode_ctdet results a and b agree but for the sigmoid's last bit: each
    of b's detections is in a (same class, same box, score within `ulps`
    float32 ulps of 1), except where such near-equal scores at the K-th place
    let another in."""
    tol = ulps * float(np.spacing(np.float32(1)))
    matched = same_detections(a, b, box_tol=0, score_tol=tol)
    return matched >= K - np.sum(np.abs(b[0] - b[0][-1]) <= tol)


def test_device_decode_of_logits_is_decode_ctdet_to_the_sigmoids_last_bit(plain_outputs):
    # torch.sigmoid and numpy's 1 / (1 + exp(-x)) round differently in ~1 of 6 values, by one ulp.
    expected = decode_ctdet(*plain_outputs)
    got = [t.numpy() for t in decode_ctdet_torch(*map(torch.from_numpy, plain_outputs))]
    assert got[0].dtype == np.float32 and got[1].dtype == np.int64 and got[2].shape == (2, 100, 4)
    for i in range(2):
        assert one_ulp_same(tuple(e[i] for e in expected), tuple(g[i] for g in got), 100)


def test_flip_combined_on_the_device_is_combine_flip(random_ctdet, small_batch):
    from centernet.core.modes import combine_flip, flip_batch
    with torch.no_grad():
        outputs = [o.numpy() for o in random_ctdet(torch.from_numpy(flip_batch(small_batch)))]
    expected = combine_flip(*outputs)
    got = [t.numpy() for t in combine_flip_torch(*map(torch.from_numpy, outputs))]
    assert np.array_equal(got[1], expected[1]) and np.array_equal(got[2], expected[2])  # wh, reg: bit for bit
    # heat: the average of two sigmoids, each to its last bit (one ulp of 1 at most in all)
    assert np.abs(got[0] - expected[0]).max() <= np.spacing(np.float32(1))


def test_device_decode_is_on_for_cuda_only():
    assert TorchOptions().resolved().device_decode is False
    assert TorchOptions(device_decode=True).resolved().device_decode is True


@pytest.mark.parametrize("mode", [dict(), dict(keep_res=True, scales=(0.5, 1.0)), dict(flip=True),
                                  dict(keep_res=True, flip=True)])
def test_stream_decodes_on_the_device_to_numpys_detections(tiny_coco, random_ctdet, monkeypatch, mode):
    # Decoding on the device gives the numpy decoder's detections (to the
    # sigmoid's last bit) in every mode; with the flip test the device also
    # makes and averages in the mirror, so the workers send warped images then too.
    from centernet.core.modes import TestMode
    calls = []
    kw = dict(batchsize=2, workers=1, progress=False, mode=TestMode(**mode))
    size = SMALL if not mode.get("keep_res") else None
    on = session(random_ctdet, input_size=size, device_decode=True)
    off = session(random_ctdet, input_size=size, device_decode=False)
    original = on.run_decoded
    monkeypatch.setattr(on, "run_decoded", lambda *a, **k: calls.append(k["warped"]) or original(*a, **k))
    ann = tiny_coco["annotation_file"]
    ours, ids, errors, _ = stream_detections("m.pth", tiny_coco["images_dir"], ann, session=on,
                                             input_size=SMALL, **kw)
    theirs, ids2, errors2, _ = stream_detections("m.pth", tiny_coco["images_dir"], ann, session=off,
                                                 input_size=SMALL, **kw)
    assert ids == ids2 and not errors and not errors2
    assert calls and calls == [True] * len(calls)
    for image_id in ids:
        a, b = (as_arrays([d for d in res if d["image_id"] == image_id]) for res in (ours, theirs))
        assert len(a[0]) == len(b[0]) and one_ulp_same(a, b, len(b[0]), ulps=2 if mode.get("flip") else 1), image_id
