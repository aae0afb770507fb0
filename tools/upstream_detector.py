#!/usr/bin/env python3
"""Run UPSTREAM CenterNet's own detector code on a checkpoint and photos.

A developer tool for checking our re-implementation against upstream
(github.com/xingyizhou/CenterNet): it imports upstream's src/lib and runs
upstream's detector class (detectors/multi_pose.py MultiPoseDetector or
detectors/ctdet.py CtdetDetector, from detector_factory) the way upstream's
src/test.py does, image by image with `detector.run(path)`, and saves what
`run()` returns in ret['results'].

    python tools/upstream_detector.py --upstream DIR --checkpoint X.pth \
        --images PHOTOS --task multi_pose --arch dla_34 [--flip] [--keep-res] \
        [--scales 0.5,1,1.5] [--nms] --out OUT.npz
    python tools/upstream_detector.py ours --checkpoint X.pth --images PHOTOS \
        [--backend torch|onnxruntime] [--flip] [--keep-res] [--scales ...] --out OURS.npz
    python tools/upstream_detector.py compare OURS.npz UPSTREAM.npz [OURS2.npz UPSTREAM2.npz ...]

--upstream is a checkout of the upstream repository (the folder holding
src/lib) or a bare git mirror of it (HEAD is exported). Either way src/lib
and src/_init_paths.py are copied into a temporary folder, so the checkout
itself is never written to; the substitutions below are made in that copy
or in this process only.

Options: upstream's own opts().parse(...) with the task, --arch,
--dataset coco_hp (multi_pose) or coco (ctdet), --load_model, --gpus -1
(CPU), --K 100, --test_scales, and --flip_test / --keep_res / --nms when
given; then opts().update_dataset_info_and_set_heads(opt, Dataset) with
upstream's dataset class (datasets/dataset_factory.py COCOHP or COCO), as
src/test.py does. The dataset class supplies the heads, the number of
classes and the normalisation (COCO's mean 0.40789654, ... rather than the
rounded 0.408, ... that src/demo.py's opts().init() uses).

OUT.npz holds, for each photo (key: the file name's stem; photos are taken in
sorted file-name order), a float32 array of upstream's rows, in upstream's
order:
- multi_pose: (N, 39) rows [x1, y1, x2, y2, score, 17 x (x, y)], exactly
  results[1]: upstream's top-K order per scale, the scales concatenated; after
  soft-NMS (--nms or several scales) the rows as soft_nms_39 left them in
  place, which includes the rows past its final count (upstream returns them
  all, re-scored or stale).
- ctdet: (N, 6) rows [x1, y1, x2, y2, score, class] (class 1..80, the
  results dict's key): class by class in ascending order, each class's rows
  in upstream's order (top-K order; after soft-NMS the in-place order; after
  the top-100 cut the survivors in that order).
and "__options__": a JSON string (the options used, upstream's opt values
that are JSON-able, the upstream commit when known, the substitutions).

Substitutions (the fewest that let upstream's code run here, on Python 3.11,
current numpy and a CPU-only torch, without compiling anything):
1. models/networks/DCNv2/dcn_v2.py (the compiled DCNv2 extension's wrapper)
   is replaced, in the copy, by a module re-exporting DCN and DCNv2 from our
   top-level dcn_v2.py: the same constructor (in_channels, out_channels,
   kernel_size, stride, padding, dilation, deformable_groups), the same
   parameters (weight, bias, conv_offset_mask.weight/.bias) and the same
   computation (offsets from chunks 1 and 2 of conv_offset_mask, mask =
   sigmoid of chunk 3, bilinear sampling with zeros outside), in plain
   PyTorch.
2. external.nms (the Cython src/lib/external/nms.pyx, not compiled): a module
   whose soft_nms and soft_nms_39 are the line-by-line Python transcriptions
   in this file (same loops, in place on the float32 array, quirks kept; every
   C float a numpy float32 scalar so the arithmetic rounds the same).
3. The ImageNet backbone download at model construction (DLA's
   load_pretrained_model; the ResNets' model_zoo.load_url) is skipped: DLA
   gets its 1000-class `fc` layer as it would from the ImageNet file, with
   untrained values; the ResNets keep PyTorch's initial values. Every
   parameter is then overwritten by the checkpoint: the tool checks that each
   of the model's parameters and buffers (but num_batches_tracked) equals the
   checkpoint's, and stops if one does not.
4. torch.cuda.synchronize (called by upstream's run() for its timings) is a
   no-op when torch has no CUDA.
5. Only when not installed: `progress` (progress.bar.Bar, imported but not
   used by the detectors) and `torchvision` (models/model.py imports
   torchvision.models and never uses it) are empty stand-in modules.
Nothing else of upstream is changed: its opts, model construction, load_model
(torch.load with the current default weights_only=True reads upstream's
{'epoch', 'state_dict'[, 'optimizer']} files), pre-processing (cv2), decoding
and post-processing run as they are.

The compare subcommand matches rows by position (upstream's order above):
run our code so that it writes the same layout in the same order.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
OUR_DCN = REPO_ROOT / "dcn_v2.py"
IMAGE_EXT = ("jpg", "jpeg", "png", "webp")  # upstream's src/demo.py image_ext
OPTIONS_KEY = "__options__"
TIME_STATS = ("tot", "load", "pre", "net", "dec", "post", "merge")  # upstream's src/demo.py time_stats
TASK_DATASET = {"multi_pose": "coco_hp", "ctdet": "coco"}
SUBSTITUTIONS = [
    "models/networks/DCNv2/dcn_v2.py re-exports DCN, DCNv2 of our pure-PyTorch dcn_v2.py",
    "external.nms: soft_nms, soft_nms_39 transcribed line by line from nms.pyx into Python",
    "ImageNet backbone download skipped (checkpoint overwrites every parameter; checked)",
    "torch.cuda.synchronize is a no-op without CUDA",
    "progress / torchvision: empty stand-ins only when not installed (imported, unused)",
]


class ToolError(Exception):
    """A one-line error for the user."""


# --------------------------------------------------------------------------
# soft_nms and soft_nms_39: src/lib/external/nms.pyx, line by line.
# Every `cdef float` there is a numpy float32 scalar here (boxes is a float32
# array, so boxes[r, c] already is one). nms.pyx adds the C int 1 to C floats,
# a float32 operation: ONE. float(...) converts to double, which a float
# variable then rounds back (exactly; a no-op). np.exp receives a Python float
# (the float32 value as a double) and its double result is rounded to float
# when assigned to `weight`. `for i in range(N)` evaluates N once, as Cython's
# C loop does; once N has shrunk below i the body changes nothing.

F32 = np.float32
ONE = F32(1)


def _max(a, b):  # cdef inline np.float32_t max(...)
    return a if a >= b else b


def _min(a, b):  # cdef inline np.float32_t min(...)
    return a if a <= b else b


def _check_boxes(boxes, width):
    # Cython's np.ndarray[float, ndim=2] buffer: float32, two dimensions.
    if not isinstance(boxes, np.ndarray) or boxes.dtype != np.float32 or boxes.ndim != 2:
        raise ValueError("Buffer dtype mismatch: soft_nms needs a float32 2-D array")
    if boxes.shape[0] and boxes.shape[1] < width:
        raise IndexError(f"soft_nms needs at least {width} columns")


def soft_nms(boxes, sigma=0.5, Nt=0.3, threshold=0.001, method=0):
    _check_boxes(boxes, 5)
    sigma, Nt, threshold = F32(sigma), F32(Nt), F32(threshold)
    N = boxes.shape[0]

    for i in range(N):
        maxscore = boxes[i, 4]
        maxpos = i

        tx1 = boxes[i, 0]
        ty1 = boxes[i, 1]
        tx2 = boxes[i, 2]
        ty2 = boxes[i, 3]
        ts = boxes[i, 4]

        pos = i + 1
        # get max box
        while pos < N:
            if maxscore < boxes[pos, 4]:
                maxscore = boxes[pos, 4]
                maxpos = pos
            pos = pos + 1

        # add max box as a detection
        boxes[i, 0] = boxes[maxpos, 0]
        boxes[i, 1] = boxes[maxpos, 1]
        boxes[i, 2] = boxes[maxpos, 2]
        boxes[i, 3] = boxes[maxpos, 3]
        boxes[i, 4] = boxes[maxpos, 4]

        # swap ith box with position of max box
        boxes[maxpos, 0] = tx1
        boxes[maxpos, 1] = ty1
        boxes[maxpos, 2] = tx2
        boxes[maxpos, 3] = ty2
        boxes[maxpos, 4] = ts

        tx1 = boxes[i, 0]
        ty1 = boxes[i, 1]
        tx2 = boxes[i, 2]
        ty2 = boxes[i, 3]
        ts = boxes[i, 4]

        pos = i + 1
        # NMS iterations, note that N changes if detection boxes fall below threshold
        while pos < N:
            x1 = boxes[pos, 0]
            y1 = boxes[pos, 1]
            x2 = boxes[pos, 2]
            y2 = boxes[pos, 3]

            area = (x2 - x1 + ONE) * (y2 - y1 + ONE)
            iw = (_min(tx2, x2) - _max(tx1, x1) + ONE)
            if iw > 0:
                ih = (_min(ty2, y2) - _max(ty1, y1) + ONE)
                if ih > 0:
                    ua = F32(float((tx2 - tx1 + ONE) * (ty2 - ty1 + ONE) + area - iw * ih))
                    ov = iw * ih / ua  # iou between max box and detection box

                    if method == 1:  # linear
                        if ov > Nt:
                            weight = ONE - ov
                        else:
                            weight = F32(1)
                    elif method == 2:  # gaussian
                        weight = F32(np.exp(float(-(ov * ov) / sigma)))
                    else:  # original NMS
                        if ov > Nt:
                            weight = F32(0)
                        else:
                            weight = F32(1)

                    boxes[pos, 4] = weight * boxes[pos, 4]

                    # if box score falls below threshold, discard the box by swapping with last box
                    # update N
                    if boxes[pos, 4] < threshold:
                        boxes[pos, 0] = boxes[N - 1, 0]
                        boxes[pos, 1] = boxes[N - 1, 1]
                        boxes[pos, 2] = boxes[N - 1, 2]
                        boxes[pos, 3] = boxes[N - 1, 3]
                        boxes[pos, 4] = boxes[N - 1, 4]
                        N = N - 1
                        pos = pos - 1

            pos = pos + 1

    keep = [i for i in range(N)]
    return keep


def soft_nms_39(boxes, sigma=0.5, Nt=0.3, threshold=0.001, method=0):
    _check_boxes(boxes, 39)
    sigma, Nt, threshold = F32(sigma), F32(Nt), F32(threshold)
    N = boxes.shape[0]

    for i in range(N):
        maxscore = boxes[i, 4]
        maxpos = i

        tx1 = boxes[i, 0]
        ty1 = boxes[i, 1]
        tx2 = boxes[i, 2]
        ty2 = boxes[i, 3]
        ts = boxes[i, 4]

        pos = i + 1
        # get max box
        while pos < N:
            if maxscore < boxes[pos, 4]:
                maxscore = boxes[pos, 4]
                maxpos = pos
            pos = pos + 1

        # add max box as a detection
        boxes[i, 0] = boxes[maxpos, 0]
        boxes[i, 1] = boxes[maxpos, 1]
        boxes[i, 2] = boxes[maxpos, 2]
        boxes[i, 3] = boxes[maxpos, 3]
        boxes[i, 4] = boxes[maxpos, 4]

        # swap ith box with position of max box
        boxes[maxpos, 0] = tx1
        boxes[maxpos, 1] = ty1
        boxes[maxpos, 2] = tx2
        boxes[maxpos, 3] = ty2
        boxes[maxpos, 4] = ts

        for j in range(5, 39):
            tmp = boxes[i, j]
            boxes[i, j] = boxes[maxpos, j]
            boxes[maxpos, j] = tmp

        tx1 = boxes[i, 0]
        ty1 = boxes[i, 1]
        tx2 = boxes[i, 2]
        ty2 = boxes[i, 3]
        ts = boxes[i, 4]

        pos = i + 1
        # NMS iterations, note that N changes if detection boxes fall below threshold
        while pos < N:
            x1 = boxes[pos, 0]
            y1 = boxes[pos, 1]
            x2 = boxes[pos, 2]
            y2 = boxes[pos, 3]

            area = (x2 - x1 + ONE) * (y2 - y1 + ONE)
            iw = (_min(tx2, x2) - _max(tx1, x1) + ONE)
            if iw > 0:
                ih = (_min(ty2, y2) - _max(ty1, y1) + ONE)
                if ih > 0:
                    ua = F32(float((tx2 - tx1 + ONE) * (ty2 - ty1 + ONE) + area - iw * ih))
                    ov = iw * ih / ua  # iou between max box and detection box

                    if method == 1:  # linear
                        if ov > Nt:
                            weight = ONE - ov
                        else:
                            weight = F32(1)
                    elif method == 2:  # gaussian
                        weight = F32(np.exp(float(-(ov * ov) / sigma)))
                    else:  # original NMS
                        if ov > Nt:
                            weight = F32(0)
                        else:
                            weight = F32(1)

                    boxes[pos, 4] = weight * boxes[pos, 4]

                    # if box score falls below threshold, discard the box by swapping with last box
                    # update N
                    if boxes[pos, 4] < threshold:
                        boxes[pos, 0] = boxes[N - 1, 0]
                        boxes[pos, 1] = boxes[N - 1, 1]
                        boxes[pos, 2] = boxes[N - 1, 2]
                        boxes[pos, 3] = boxes[N - 1, 3]
                        boxes[pos, 4] = boxes[N - 1, 4]
                        for j in range(5, 39):
                            tmp = boxes[pos, j]
                            boxes[pos, j] = boxes[N - 1, j]
                            boxes[N - 1, j] = tmp
                        N = N - 1
                        pos = pos - 1

            pos = pos + 1

    keep = [i for i in range(N)]
    return keep


# --------------------------------------------------------------------------
# Making upstream's src/lib importable here.

def _git(args, cwd):
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout


def export_upstream(upstream, dest):
    """Copy upstream's src/lib and src/_init_paths.py into dest/src (from a
    checkout folder, or HEAD of a bare git mirror). Returns (lib dir, commit or None)."""
    upstream = Path(upstream)
    src = Path(dest) / "src"
    if (upstream / "src" / "lib" / "opts.py").is_file():
        shutil.copytree(upstream / "src" / "lib", src / "lib",
                        ignore=shutil.ignore_patterns("*.so", "build", "__pycache__"))
        shutil.copy2(upstream / "src" / "_init_paths.py", src / "_init_paths.py")
        top = _git(["rev-parse", "--show-toplevel"], upstream)
        same = top is not None and Path(top.decode().strip()).resolve() == upstream.resolve()
        commit = _git(["rev-parse", "HEAD"], upstream) if same else None  # not another repository's
    elif _git(["rev-parse", "--is-bare-repository"], upstream) == b"true\n":
        tar = _git(["archive", "HEAD", "src/lib", "src/_init_paths.py"], upstream)
        if tar is None:
            raise ToolError(f"--upstream {upstream}: git archive of src/lib failed")
        subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
        commit = _git(["rev-parse", "HEAD"], upstream)
    else:
        raise ToolError(f"--upstream {upstream}: neither a CenterNet checkout (no src/lib/opts.py) "
                        "nor a bare git mirror of one")
    return src / "lib", (commit.decode().strip() if commit else None)


DCN_SHIM = '''"""Substituted by tools/upstream_detector.py for the compiled DCNv2 extension:
DCN and DCNv2 of the pure-PyTorch {path} (upstream's constructor, parameter
names and computation)."""
import importlib.util as _util

_spec = _util.spec_from_file_location("_centernet_dcn_v2", {path!r})
_module = _util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
DCN = _module.DCN
DCNv2 = _module.DCNv2
'''


def _stand_in(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__doc__ = "stand-in made by tools/upstream_detector.py (imported by upstream, unused)"
    sys.modules[name] = module
    return module


def prepare_imports(lib):
    """Put lib on sys.path and make the substitutions listed in the module docstring."""
    import torch

    (lib / "models" / "networks" / "DCNv2" / "dcn_v2.py").write_text(DCN_SHIM.format(path=str(OUR_DCN)))
    # as when upstream's scripts run from src/: src (for upstream's _init_paths,
    # which exdet.py imports; only it is copied there) and src/lib, first
    sys.path[:0] = [str(lib), str(lib.parent)]

    if importlib.util.find_spec("progress") is None:
        class Bar:  # progress.bar.Bar, never used by the detectors
            def __init__(self, *args, **kwargs):
                pass
        _stand_in("progress", bar=_stand_in("progress.bar", Bar=Bar))
    if importlib.util.find_spec("torchvision") is None:
        _stand_in("torchvision", models=_stand_in("torchvision.models"))

    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda device=None: None

    import external
    nms = _stand_in("external.nms", soft_nms=soft_nms, soft_nms_39=soft_nms_39)
    nms.__doc__ = "tools/upstream_detector.py's transcription of soft_nms, soft_nms_39 (nms.pyx)"
    external.nms = nms

    from models.networks import dlav0, msra_resnet, pose_dla_dcn, resnet_dcn

    def imagenet_layout_only(self, data="imagenet", name="dla34", hash="ba72cf86"):
        # upstream's load_pretrained_model without the download: the 1000-class fc as the file has it
        self.fc = torch.nn.Conv2d(self.channels[-1], 1000, kernel_size=1, stride=1, padding=0, bias=True)

    pose_dla_dcn.DLA.load_pretrained_model = imagenet_layout_only
    dlav0.DLA.load_pretrained_model = imagenet_layout_only
    no_download = types.SimpleNamespace(load_url=lambda url, *args, **kwargs: {})  # strict=False: loads nothing
    msra_resnet.model_zoo = no_download
    resnet_dcn.model_zoo = no_download

    # upstream's models/ has no __init__.py: a namespace package, which would
    # merge any other models/ folder on sys.path
    import models
    strays = [p for p in models.__path__ if not Path(p).resolve().is_relative_to(lib.resolve())]
    if strays:
        raise ToolError(f"a `models` package outside upstream's src/lib is on the Python path ({strays[0]})")


def build_options(args):
    from datasets.dataset_factory import dataset_factory
    from opts import opts

    argv = [args.task, "--arch", args.arch, "--dataset", TASK_DATASET[args.task],
            "--load_model", str(Path(args.checkpoint).resolve()), "--gpus", "-1", "--K", "100",
            "--test_scales", args.scales]
    if args.flip:
        argv.append("--flip_test")
    if args.keep_res:
        argv.append("--keep_res")
    if args.nms:
        argv.append("--nms")
    opt = opts().parse(argv)
    opt = opts().update_dataset_info_and_set_heads(opt, dataset_factory[opt.dataset])
    return opt, argv


def _state_dict(path):
    import torch
    obj = torch.load(path, map_location="cpu")
    state = obj["state_dict"]
    return {(k[7:] if k.startswith("module") and not k.startswith("module_list") else k): v
            for k, v in state.items()}


def check_every_weight_from_checkpoint(model, checkpoint):
    import torch
    loaded = _state_dict(checkpoint)
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key not in loaded or loaded[key].shape != value.shape or not torch.equal(loaded[key].to(value.dtype), value):
            raise ToolError(f"{checkpoint}: model parameter {key} does not come from the checkpoint "
                            "(missing or another shape); upstream's run would not be reproducible here")


def _json_able(value):
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def list_images(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise ToolError(f"--images {folder}: not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix[1:].lower() in IMAGE_EXT)
    if not paths:
        raise ToolError(f"--images {folder}: no {'/'.join(IMAGE_EXT)} photos")
    stems = [p.stem for p in paths]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ToolError(f"--images {folder}: several photos named {dupes[0]}.*")
    return paths


def rows_of(task, results):
    """Upstream's ret['results'] as one float32 array (layout in the module docstring)."""
    if task == "multi_pose":
        return np.asarray(results[1], dtype=np.float32).reshape(-1, 39)
    parts = [np.concatenate([np.asarray(results[c], np.float32).reshape(-1, 5),
                             np.full((len(results[c]), 1), c, np.float32)], axis=1)
             for c in sorted(results)]
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, 6), np.float32)


def write_npz(path, arrays):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def run(args):
    for name, value in (("--checkpoint", args.checkpoint), ("--upstream", args.upstream)):
        if not Path(value).exists():
            raise ToolError(f"{name} {value}: not found")
    images = list_images(args.images)
    try:
        [float(s) for s in args.scales.split(",")]
    except ValueError:
        raise ToolError(f"--scales {args.scales}: not a comma-separated list of numbers") from None
    with tempfile.TemporaryDirectory(prefix="upstream-centernet-") as tmp:
        lib, commit = export_upstream(args.upstream, tmp)
        prepare_imports(lib)
        opt, argv = build_options(args)
        from detectors.detector_factory import detector_factory
        detector = detector_factory[opt.task](opt)
        check_every_weight_from_checkpoint(detector.model, args.checkpoint)
        arrays, seconds = {}, {}
        start = time.perf_counter()
        for path in images:
            ret = detector.run(str(path))
            arrays[path.stem] = rows_of(opt.task, ret["results"])
            seconds[path.stem] = {k: round(ret[k], 3) for k in TIME_STATS}
            stages = ", ".join(f"{k} {ret[k]:.2f}" for k in TIME_STATS[1:])
            print(f"upstream_detector: {path.name}: {len(arrays[path.stem])} rows, {ret['tot']:.2f} s ({stages})",
                  file=sys.stderr)
        elapsed = time.perf_counter() - start
    sha = hashlib.sha256(Path(args.checkpoint).read_bytes()).hexdigest()
    record = {
        "task": args.task, "arch": args.arch, "flip_test": bool(args.flip), "keep_res": bool(args.keep_res),
        "test_scales": [float(s) for s in args.scales.split(",")], "nms": bool(args.nms), "K": 100,
        "checkpoint": str(Path(args.checkpoint).resolve()), "checkpoint_sha256": sha,
        "images": [p.name for p in images], "upstream": str(Path(args.upstream).resolve()),
        "upstream_commit": commit, "opts_argv": argv,
        "opt": {k: v for k, v in sorted(vars(opt).items()) if _json_able(v)},
        "seconds_per_image": seconds,  # upstream run()'s own timings
        "substitutions": SUBSTITUTIONS,
        "row_layout": ("(N, 39) [x1, y1, x2, y2, score, 17 x (x, y)]" if args.task == "multi_pose"
                       else "(N, 6) [x1, y1, x2, y2, score, class]"),
    }
    arrays[OPTIONS_KEY] = np.array(json.dumps(record))
    write_npz(args.out, arrays)
    print(f"upstream_detector: wrote {args.out} ({len(images)} photos, {elapsed:.1f} s)", file=sys.stderr)


# --------------------------------------------------------------------------
# random-checkpoint: a checkpoint in upstream's layout for trying the tool

# multi_pose head <- ctdet head whose trained-like output it imitates, and the
# ctdet output channels it takes (tiled to the head's width)
_LIKE = {"hm": ("hm", [0]), "wh": ("wh", None), "reg": ("reg", None),
         "hm_hp": ("hm", list(range(1, 18))), "hps": ("wh", None), "hp_offset": ("reg", None)}


def random_checkpoint(args):
    """upstream's create_model(arch, heads, head_conv) with upstream's opts'
    heads for the task, saved as {'epoch': 1, 'state_dict': ...}. With --like
    (a ctdet checkpoint of the same arch, e.g. our calibrated random weights)
    its weights are taken where the shapes match, and a head of another shape
    is derived from the ctdet head in _LIKE (channels picked or tiled, scaled
    by seeded factors), so the outputs have trained-like peaks and spreads."""
    import torch
    if args.like and not Path(args.like).is_file():
        raise ToolError(f"--like {args.like}: not found")
    with tempfile.TemporaryDirectory(prefix="upstream-centernet-") as tmp:
        lib, _ = export_upstream(args.upstream, tmp)
        prepare_imports(lib)
        args.checkpoint, args.flip, args.keep_res, args.nms, args.scales = "unused.pth", False, False, False, "1"
        opt, _ = build_options(args)
        from models.model import create_model
        torch.manual_seed(args.seed)
        model = create_model(opt.arch, opt.heads, opt.head_conv)
    state = model.state_dict()
    if args.like:
        gen = torch.Generator().manual_seed(args.seed)
        like = _state_dict(args.like)
        for key, value in state.items():
            head, _, rest = key.partition(".")
            source = key
            if head in opt.heads and head in _LIKE:
                source = f"{_LIKE[head][0]}.{rest}"
            if source not in like:
                continue
            got = like[source]
            if got.shape != value.shape and head in _LIKE and rest.startswith("2."):
                channels = _LIKE[head][1] or list(range(got.shape[0]))
                picked = got[channels]
                reps = -(-value.shape[0] // picked.shape[0])
                got = picked.repeat(reps, *([1] * (picked.dim() - 1)))[:value.shape[0]]
                if _LIKE[head][1] is None and value.shape[0] != picked.shape[0]:
                    factor = 1 + 0.5 * torch.randn(value.shape[0], generator=gen)
                    got = got * factor.view(-1, *([1] * (got.dim() - 1)))
            if got.shape == value.shape:
                state[key] = got.clone()
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    torch.save({"epoch": 1, "state_dict": state}, tmp)
    os.replace(tmp, out)
    print(f"upstream_detector: wrote {out} ({opt.arch}, heads {opt.heads})", file=sys.stderr)


# --------------------------------------------------------------------------
# ours: the toolkit's predictor on the same checkpoint and photos, in this layout

def run_ours(args):
    """Our one path (centernet.pipeline.predictor) on the photos, written in
    upstream's layout and order: multi_pose rows as our Decoder merges them
    (upstream's order already); ctdet rows sorted by class, stably (upstream
    groups its results by class, each class in top-K order)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import cv2
    from centernet.core.modes import TestMode, parse_scales
    from centernet.core.pose import pose_rows
    from centernet.pipeline.predictor import open_predictor
    from centernet.runtime.torch_model import TorchOptions
    photos = list_images(args.images)
    mode = TestMode(keep_res=args.keep_res, flip=args.flip, scales=parse_scales(args.scales),
                    input_size=None if args.keep_res else (512, 512))
    # fuse_bn off: upstream runs BatchNorm as it is, and so the network's float32 arithmetic is the same
    options = TorchOptions(fuse_bn=False, warped_input=False, dcn=args.dcn, channels_last=args.channels_last)
    predictor = open_predictor(args.checkpoint, mode, backend=args.backend, torch_options=options)
    arrays = {}
    for path in photos:
        found, errors = predictor.detect([cv2.imread(str(path))], sources=[str(path)])
        if errors:
            raise ToolError(errors[0])
        d = found[0]
        if d.joints is not None:
            arrays[path.stem] = pose_rows(d.scores, d.boxes, d.joints)
        else:
            order = np.argsort(d.classes, kind="stable")
            arrays[path.stem] = np.column_stack([d.boxes[order], d.scores[order],
                                                 d.classes[order] + 1]).astype(np.float32)
    options_record = {"task": predictor.decoder.task, "keep_res": args.keep_res, "flip_test": args.flip,
                      "test_scales": list(mode.scales), "backend": args.backend, "ours": True}
    out = Path(args.out)
    with open(out, "wb") as f:
        np.savez(f, **arrays, **{OPTIONS_KEY: np.array(json.dumps(options_record))})
    print(f"upstream_detector: our predictor ({args.backend}) on {len(photos)} photos -> {out}", file=sys.stderr)


# --------------------------------------------------------------------------
# compare

def _load(path):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    options = json.loads(str(arrays.pop(OPTIONS_KEY))) if OPTIONS_KEY in arrays else {}
    return arrays, options


def mode_name(options):
    if not options:
        return "?"
    parts = ["keep_res" if options.get("keep_res") else "fixed " + str(options.get("opt", {}).get("input_h", 512))]
    scales = options.get("test_scales", [1.0])
    if scales != [1.0]:
        parts.append("scales " + ",".join(f"{s:g}" for s in scales))
    if options.get("flip_test"):
        parts.append("flip")
    if options.get("nms"):
        parts.append("nms")
    return f"{options.get('task', '?')} " + " + ".join(parts)


def compare(ours_npz, upstream_npz, atol=1e-4, out=sys.stdout):
    """Compare two npz files of this layout, rows matched by position (upstream's order);
    prints one line and returns a dict of the figures."""
    ours, _ = _load(ours_npz)
    theirs, options = _load(upstream_npz)
    missing = sorted(set(theirs) ^ set(ours))
    worst = {"box": 0.0, "score": 0.0, "joint": 0.0, "class": 0.0}
    rows = differing = count_mismatch = 0
    for key in sorted(set(theirs) & set(ours)):
        a, b = ours[key].astype(np.float64), theirs[key].astype(np.float64)
        if a.ndim != 2 or a.shape[1] != b.shape[1]:
            raise ToolError(f"{ours_npz}: {key} has shape {a.shape}, {upstream_npz} has {b.shape}")
        n = min(len(a), len(b))
        count_mismatch += len(a) != len(b)
        rows += len(b)
        differing += abs(len(a) - len(b))
        if not n:
            continue
        d = np.abs(a[:n] - b[:n])
        worst["box"] = max(worst["box"], float(d[:, :4].max()))
        worst["score"] = max(worst["score"], float(d[:, 4].max()))
        if b.shape[1] == 39:
            worst["joint"] = max(worst["joint"], float(d[:, 5:].max()))
        elif b.shape[1] == 6:
            worst["class"] = max(worst["class"], float(d[:, 5].max()))
        differing += int((d > atol).any(axis=1).sum())
    figures = {"mode": mode_name(options), "images": len(set(theirs) & set(ours)), "rows": rows,
               "rows_differing": differing, "images_with_other_row_count": count_mismatch,
               "images_in_one_file_only": missing, **{f"max_abs_{k}": v for k, v in worst.items()}}
    extra = f"joint {worst['joint']:.3g}" if worst["joint"] or "multi_pose" in figures["mode"] \
        else f"class {worst['class']:.3g}"
    print(f"{figures['mode']}: {figures['images']} images, {rows} rows, max |diff| box {worst['box']:.3g} "
          f"score {worst['score']:.3g} {extra}; {differing} rows differ by more than {atol:g}"
          + (f"; {count_mismatch} images with another row count" if count_mismatch else "")
          + (f"; only in one file: {', '.join(missing)}" if missing else ""), file=out)
    return figures


# --------------------------------------------------------------------------

def parse_run_args(argv):
    p = argparse.ArgumentParser(
        prog="upstream_detector.py",
        description="Run upstream CenterNet's own detector on a checkpoint and photos; "
                    "'upstream_detector.py compare OURS.npz UPSTREAM.npz ...' compares results.")
    p.add_argument("--upstream", required=True, help="upstream CenterNet checkout folder, or a bare git mirror of it")
    p.add_argument("--checkpoint", required=True, help="checkpoint in upstream's layout (.pth)")
    p.add_argument("--images", required=True, help="folder of photos (jpg, jpeg, png, webp), run in sorted name order")
    p.add_argument("--task", required=True, choices=sorted(TASK_DATASET))
    p.add_argument("--arch", default="dla_34", help="upstream's --arch (default dla_34)")
    p.add_argument("--flip", action="store_true", help="upstream's --flip_test")
    p.add_argument("--keep-res", action="store_true", help="upstream's --keep_res")
    p.add_argument("--scales", default="1", help="upstream's --test_scales, e.g. 0.5,1,1.5 (default 1)")
    p.add_argument("--nms", action="store_true", help="upstream's --nms (soft-NMS even at one scale)")
    p.add_argument("--out", required=True, help="output .npz")
    return p.parse_args(argv)


def parse_compare_args(argv):
    p = argparse.ArgumentParser(prog="upstream_detector.py compare",
                                description="Compare npz files pairwise (ours, upstream), rows by position.")
    p.add_argument("files", nargs="+", help="OURS.npz UPSTREAM.npz [OURS2.npz UPSTREAM2.npz ...]")
    p.add_argument("--atol", type=float, default=1e-4, help="a row differs when any value differs by more (1e-4)")
    args = p.parse_args(argv)
    if len(args.files) % 2:
        p.error("files come in pairs: OURS.npz UPSTREAM.npz")
    return args


def parse_ours_args(argv):
    p = argparse.ArgumentParser(prog="upstream_detector.py ours",
                                description="Run the toolkit's own predictor on a checkpoint and photos and write "
                                            "the results in this tool's layout, for compare.")
    p.add_argument("--checkpoint", required=True, help="checkpoint in upstream's layout (.pth)")
    p.add_argument("--images", required=True, help="folder of photos, run in sorted name order")
    p.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"),
                   help="torch: the checkpoint in PyTorch; onnxruntime: its cached ONNX export (default torch)")
    p.add_argument("--dcn", default="ours", help="the torch backend's DCN kernel (default ours)")
    p.add_argument("--flip", action="store_true", help="the flip test")
    p.add_argument("--keep-res", action="store_true", help="keep resolution")
    p.add_argument("--scales", default="1", help="test scales, e.g. 0.5,1,1.5 (default 1)")
    p.add_argument("--channels-last", action="store_true",
                   help="the torch backend in channels-last memory: upstream's flip test feeds its network such "
                        "a tensor (np.concatenate of the image and its mirror keeps the HWC layout), whose "
                        "convolutions round differently (default off)")
    p.add_argument("--out", required=True, help="output .npz")
    return p.parse_args(argv)


def parse_random_args(argv):
    p = argparse.ArgumentParser(prog="upstream_detector.py random-checkpoint",
                                description="Write a random checkpoint in upstream's layout with upstream's "
                                            "create_model (for trying the tool; the weights mean nothing).")
    p.add_argument("--upstream", required=True, help="upstream CenterNet checkout folder, or a bare git mirror of it")
    p.add_argument("--task", required=True, choices=sorted(TASK_DATASET))
    p.add_argument("--arch", default="dla_34", help="upstream's --arch (default dla_34)")
    p.add_argument("--like", help="a ctdet checkpoint of the same arch to take trained-like weights from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .pth")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["random-checkpoint"]:
            random_checkpoint(parse_random_args(argv[1:]))
        elif argv[:1] == ["ours"]:
            run_ours(parse_ours_args(argv[1:]))
        elif argv[:1] == ["compare"]:
            args = parse_compare_args(argv[1:])
            for ours, theirs in zip(args.files[::2], args.files[1::2]):
                for path in (ours, theirs):
                    if not Path(path).is_file():
                        raise ToolError(f"{path}: not found")
                compare(ours, theirs, args.atol)
        else:
            run(parse_run_args(argv))
    except ToolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
