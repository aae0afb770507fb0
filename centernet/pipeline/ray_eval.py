"""The streaming evaluation on Ray Data: one machine or a cluster, same results.

The stages of stream.py become Ray Data operators: the image list is the
dataset; preprocessing runs as CPU tasks; inference runs in a pool of actors
that each hold one ONNX Runtime session (one GPU each with device cuda);
decoding runs as CPU tasks; the driver writes the results. Every stage calls
the functions the one-machine path uses, in every test mode (stream's
resolve_mode, load_input, decode_inputs and merge_scales, modes.flip_batch,
run_session, detections_to_coco, and the demo's detections_entry), so the
detections are the same.

Resumable: the images are split into blocks of `block_size` (in file name
order); each finished block is written to OUTPUT.parts/block-NNNNNN.json, and
a re-run with the same model and settings skips those. The final file is
assembled from the blocks in order, each image exactly once, and the parts
are then removed.

Fault tolerant: Ray restarts an inference actor that dies (ACTOR_MAX_RESTARTS)
and retries its unfinished batches (ACTOR_TASK_RETRIES); an image that arrives twice
is kept once.

Ray is imported only here, and only when a function of this module runs.
"""
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections import namedtuple
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from centernet.io.binio import write_atomic, write_atomic_chunks
from centernet.io.coco import class_category_ids, default_category_ids, load_annotations, stable_image_id, COCO_CATEGORIES
from centernet.core.decode import detections_to_coco
from centernet.pipeline.demo import DEMO_IMAGE_EXTENSIONS, VIS_THRESH, detections_entry, detections_header, write_detections_json
from centernet.errors import Interrupted, UserError
from centernet.pipeline.staged_infer import latency_stats
from centernet.core.modes import TestMode, flip_batch
from centernet.runtime.ort_session import PROVIDERS, make_session, run_session
from centernet.pipeline.stream import UNREADABLE, decode_inputs, load_input, merge_scales, resolve_mode
from centernet.core.transforms import INPUT_SIZE

BLOCK_SIZE = 256          # images per resumable block (one part file each)
ACTOR_MAX_RESTARTS = 8    # an inference actor that dies is started again up to this many times
ACTOR_TASK_RETRIES = 3    # and each batch it held is given to an actor again up to this many times
PREPROCESS_BATCH = 4      # images per preprocessing task (small: keeps the actors fed from the start)
DECODE_BATCH = 4          # images per decoding task
K = 100                   # detections decoded per image, as in the evaluation

PlannedImage = namedtuple("PlannedImage", "name location image_id")
Labels = namedtuple("Labels", "names category_ids")  # what detections_entry needs of a detector


def _log_stderr(line):
    tqdm.write(line, file=sys.stderr)


# --- where the images are ----------------------------------------------------

def is_uri(location):
    """An object-store or other pyarrow filesystem URI (s3://, gs://, file://...)."""
    return "://" in str(location)


_filesystems = {}


def _filesystem(uri):
    """(pyarrow filesystem, path inside it) for a URI; one filesystem per
    bucket or host per process."""
    from pyarrow import fs
    scheme_host = uri.split("://", 1)[0] + "://" + uri.split("://", 1)[1].split("/", 1)[0]
    if scheme_host not in _filesystems:
        _filesystems[scheme_host] = fs.FileSystem.from_uri(uri)[0]
    return _filesystems[scheme_host], fs.FileSystem.from_uri(uri)[1]


def read_image_bytes(location):
    """The bytes of a local file or of a URI's object."""
    if is_uri(location):
        filesystem, path = _filesystem(location)
        with filesystem.open_input_stream(path) as f:
            return f.read()
    with open(location, "rb") as f:
        return f.read()


def join_location(folder, name):
    return f"{str(folder).rstrip('/')}/{name}" if is_uri(folder) else str(Path(folder) / name)


def list_image_files(folder, limit=None):
    """Image files (the demo's extensions) directly in a local folder or under
    a URI prefix, in name order; the first `limit`. Returns [(name, location)]."""
    if is_uri(folder):
        from pyarrow import fs
        try:
            filesystem, path = fs.FileSystem.from_uri(str(folder))
            infos = filesystem.get_file_info(fs.FileSelector(path, recursive=False))
        except (OSError, ValueError) as e:
            raise UserError(f"{folder}: cannot list the images ({str(e).splitlines()[0]})") from None
        names = [i.base_name for i in infos if i.type == fs.FileType.File]
    else:
        if not Path(folder).is_dir():
            raise UserError(f"{folder}: image folder not found")
        names = [p.name for p in Path(folder).iterdir() if p.is_file()]
    names = sorted(n for n in names if Path(n).suffix.lower() in DEMO_IMAGE_EXTENSIONS)[:limit]
    if not names:
        raise UserError(f"{folder}: no images ({', '.join(DEMO_IMAGE_EXTENSIONS)}) in this folder")
    return [(n, join_location(folder, n)) for n in names]


# --- the stages (run in Ray workers) ------------------------------------------
#
# A row is an image. In a multi-scale test it carries one network input per
# scale (columns input_0, input_1, ...), so that decoding can merge its
# scales; in keep-resolution mode the inputs differ in size from row to row.

@dataclass(frozen=True)
class Plan:
    """How every image is run (the test mode as resolve_mode settled it)."""
    input_size: tuple
    keep_res: bool
    scales: tuple
    numpy_flip: bool    # the flip test mirrored here (not in the model's graph)
    hm_is_heat: bool    # a flip test: the heatmap has had its sigmoid
    num_classes: int
    k: int = K


def _column(arrays):
    """A batch column from per-row arrays: stacked where they have one shape,
    else an object array (Ray Data stores it as a variable-shaped tensor)."""
    if len({a.shape for a in arrays}) <= 1:
        return np.stack(arrays) if arrays else np.zeros((0,))
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def _preprocess(batch, plan):
    """Task: image files -> the network input at each test scale and its
    geometry (stream.load_input, as the one-process path). An unreadable
    image keeps its row, with placeholder inputs and its error line."""
    cv2.setNumThreads(1)  # Ray runs one task per reserved CPU
    n = len(batch["index"])
    placeholder = np.zeros((3,) + (tuple(plan.input_size) if not plan.keep_res else (32, 32)), np.float32)
    inputs = [[placeholder] * n for _ in plan.scales]
    centers = np.zeros((len(plan.scales), n, 2))
    scales = np.zeros((len(plan.scales), n))  # only its width matters (get_affine_transform)
    sizes = np.zeros((n, 2), np.int64)
    errors = [""] * n
    for i, location in enumerate(batch["location"]):
        try:
            data = read_image_bytes(location)
        except OSError as e:
            errors[i] = f"{location}: cannot read ({e.strerror or e})"
            continue
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if image is None:
            errors[i] = f"{location}: {UNREADABLE}"
            continue
        sizes[i] = image.shape[:2]
        for s, t in enumerate(plan.scales):
            loaded, errors[i] = load_input(image, location, plan.input_size, plan.keep_res, t)
            if errors[i]:
                break
            tensor, center, scale, _ = loaded
            inputs[s][i], centers[s, i], scales[s, i] = tensor[0], center, np.ravel(scale)[0]
        errors[i] = errors[i] or ""
    out = {"index": batch["index"], "size": sizes, "error": np.array(errors, dtype=object)}
    for s in range(len(plan.scales)):
        out[f"input_{s}"], out[f"center_{s}"], out[f"scale_{s}"] = _column(inputs[s]), centers[s], scales[s]
    return out


def _groups(arrays, rows):
    """The given rows grouped by the shape of their array: [(shape, rows)]."""
    groups = {}
    for i in rows:
        groups.setdefault(arrays[i].shape, []).append(i)
    return list(groups.items())


class _Infer:
    """Actor: one ONNX Runtime session, kept for the whole run. Inputs of
    one size run together (keep resolution: each size on its own); in a
    flip test run here, each with its mirror (modes.flip_batch)."""

    def __init__(self, model, device, threads, model_name, plan):
        self.plan = plan
        self.pid = os.getpid()
        self.calls = 0
        # A UserError here (ONNX Runtime refusing the model on this worker's
        # device) is raised from the first call instead: Ray keeps an exception
        # of an actor's method whole (RayTaskError.cause), but one of its
        # constructor only as text (ActorDiedError, Ray 2.60).
        self.error = None
        try:
            self._start(model, device, threads, model_name)
        except UserError as e:
            self.error = e

    def _start(self, model, device, threads, model_name):
        import ray
        self.session = make_session(ray.get(model[0]), device=device, threads=threads, name=model_name)

    def __call__(self, batch):
        if self.error is not None:
            raise self.error
        ok = [i for i, e in enumerate(batch["error"]) if not e]
        n, flips = len(batch["index"]), 2 if self.plan.numpy_flip else 1
        out = {key: batch[key] for key in batch if not key.startswith("input_")}
        seconds = 0.0
        for s in range(len(self.plan.scales)):
            inputs = batch[f"input_{s}"]
            results = [None] * n
            for (_, h, w), rows in _groups(inputs, ok):
                x = np.stack([inputs[i] for i in rows])
                t0 = time.perf_counter()
                outputs = run_session(self.session, flip_batch(x) if self.plan.numpy_flip else x)
                seconds += time.perf_counter() - t0
                for j, i in enumerate(rows):  # per image: (flips, C, h, w), the mirrored pass second
                    results[i] = [np.stack([o[j + f * len(rows)] for f in range(flips)]) for o in outputs]
            for i in set(range(n)) - set(ok):  # placeholders, never decoded
                results[i] = [np.zeros((flips, 1, 1, 1), np.float32)] * 3
            for name, r in zip(("hm", "wh", "reg"), range(3)):
                out[f"{name}_{s}"] = _column([results[i][r] for i in range(n)])
        self.calls += 1
        out["pid"] = np.full(n, self.pid)
        out["batch"] = np.full(n, self.calls)  # (pid, batch) names one inference call
        out["batch_seconds"] = np.full(n, seconds)
        return out


def _decode(batch, plan):
    """Task: raw outputs -> each image's detections on the image, as rows
    [x1, y1, x2, y2, score, class] (stream.decode_inputs; in a multi-scale
    test merged with stream.merge_scales, class by class as upstream writes
    them). The heatmaps go no further."""
    n, flips = len(batch["index"]), 2 if plan.numpy_flip else 1
    ok = [i for i, e in enumerate(batch["error"]) if not e]
    per_scale = [[None] * n for _ in plan.scales]
    for s in range(len(plan.scales)):
        hm, wh, reg = batch[f"hm_{s}"], batch[f"wh_{s}"], batch[f"reg_{s}"]
        for (_, _, h, w), rows in _groups(hm, ok):
            # back into a batch's layout: every image, then (flip test) every mirror
            outputs = [np.concatenate([arr[i][f:f + 1] for f in range(flips) for i in rows]) if flips > 1
                       else np.stack([arr[i][0] for i in rows]) for arr in (hm, wh, reg)]
            geometries = [(batch[f"center_{s}"][i], float(batch[f"scale_{s}"][i]), (h, w)) for i in rows]
            for i, found in zip(rows, decode_inputs(outputs, geometries, plan.k, plan.numpy_flip, plan.hm_is_heat)):
                per_scale[s][i] = found
    dets = [np.zeros((0, 6))] * n
    for i in ok:
        if len(plan.scales) == 1:
            scores, classes, boxes = per_scale[0][i]
            dets[i] = np.column_stack([boxes, scores, classes])
        else:
            merged = merge_scales([per_scale[s][i] for s in range(len(plan.scales))], plan.scales,
                                  plan.num_classes)
            dets[i] = np.concatenate([np.column_stack([merged[j], np.full(len(merged[j]), j)])
                                      for j in sorted(merged)] or [np.zeros((0, 6))])
    keep = ("index", "size", "error", "pid", "batch", "batch_seconds")
    return {**{key: batch[key] for key in keep}, "dets": _column(dets)}


def detections_of(dets, multi_scale):
    """(scores float32, classes int64, boxes) of a row's detections as the
    one-process path has them: boxes float64 from the inverse affine, or
    float32 after a multi-scale merge (each value exact in the float64 row)."""
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 6)
    boxes = dets[:, :4].astype(np.float32) if multi_scale else dets[:, :4]
    return dets[:, 4].astype(np.float32), dets[:, 5].astype(np.int64), boxes


# --- finished blocks on disk ----------------------------------------------------

class BlockStore:
    """The finished blocks of one output: OUTPUT.parts/block-NNNNNN.json, each
    with its images (names and ids), error lines and entries, and run.json
    with what the blocks depend on (model, task, settings). Blocks from
    another model or other settings are discarded, not reused."""

    def __init__(self, output, key, log=_log_stderr):
        self.folder = Path(str(output) + ".parts")
        self.folder.mkdir(parents=True, exist_ok=True)
        run_file = self.folder / "run.json"
        try:
            old = json.loads(run_file.read_text())
        except (OSError, ValueError):
            old = None
        if old != key:
            stale = sorted(self.folder.glob("block-*.json"))
            if stale:
                log(f"{self.folder}: {len(stale)} finished block(s) are from another model or other settings; "
                    "starting over")
            for p in stale:
                p.unlink()
            write_atomic(run_file, json.dumps(key, indent=1).encode("utf-8"))

    def path(self, index):
        return self.folder / f"block-{index:06d}.json"

    def read(self, index):
        try:
            return json.loads(self.path(index).read_text())
        except (OSError, ValueError):
            return None

    def is_done(self, index, images):
        part = self.read(index)
        return (part is not None and part.get("images") == [im.name for im in images]
                and part.get("ids") == [im.image_id for im in images])

    def write(self, index, images, entries, errors):
        part = {"images": [im.name for im in images], "ids": [im.image_id for im in images],
                "errors": errors, "entries": entries}
        write_atomic(self.path(index), json.dumps(part, separators=(",", ":")).encode("utf-8"))

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)


# --- the run -----------------------------------------------------------------

def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError("Ray Data is not installed: pip install -r requirements.txt (it pins ray[data])") from None
    return ray


def init_ray(address=None, num_cpus=None, object_store_memory=None):
    """ray.init for this package: the cluster at `address` ("auto",
    "ray://host:10001", "host:6379"), or with no address the one in
    $RAY_ADDRESS, else a new local Ray (also address "local"; limited to
    num_cpus CPUs and object_store_memory bytes). Returns the ray module."""
    ray = import_ray()
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    # Workers' output stays in Ray's log files: errors reach the driver as
    # exceptions, and a UserError among them is shown as its one line.
    kwargs = dict(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    saved_path = os.environ.get("PYTHONPATH")
    if address == "local":
        # A local Ray's workers inherit this environment: they import the
        # package from here, and the workers Ray starts in advance can be used.
        package_root = str(Path(__file__).resolve().parents[1])
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, saved_path]))
        kwargs.update({k: v for k, v in (("num_cpus", num_cpus), ("object_store_memory", object_store_memory)) if v})
    else:
        # Cluster nodes get the package shipped with the job, so they need
        # only the requirements installed.
        kwargs["runtime_env"] = {"py_modules": [str(Path(__file__).resolve().parent)]}
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UserError(f"Ray at {address}: cannot connect ({str(e).splitlines()[0][:300]})") from None
    finally:
        if saved_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_path
    return ray


@contextmanager
def ray_session(address=None, num_cpus=None, log=_log_stderr):
    """Ray for the length of a run: the caller's if ray.init() already ran,
    else init_ray(address, num_cpus), shut down afterwards."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    init_ray(address, num_cpus)
    try:
        resources = ray.cluster_resources()
        log(f"ray: {address or os.environ.get('RAY_ADDRESS') or 'local'}, {len(ray.nodes())} node(s), "
            f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
        yield ray
    finally:
        ray.shutdown()


def _largest_node_cpus(ray):
    cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return max(cpus or [1])


def actor_resources(device, threads, node_cpus):
    """What each inference actor reserves: one GPU (and one CPU) on a GPU;
    on CPUs, its ONNX Runtime threads (all of a node for threads 0), leaving
    at least one CPU of a node to the preprocessing and decoding tasks."""
    if device != "cpu":
        return {"num_cpus": 1, "num_gpus": 1}
    want = threads if threads > 0 else node_cpus
    return {"num_cpus": max(1, min(want, node_cpus - 1))}


def check_resources(available, per_actor, actors, strict=True, log=_log_stderr):
    """Can the cluster hold `actors` actors of `per_actor` and still run a
    preprocessing or decoding task? Otherwise Ray Data would wait for
    resources: a UserError where none can come (strict: a local Ray), a
    warning on a cluster (its autoscaler may add nodes)."""
    problem = None
    if per_actor.get("num_gpus", 0) * actors > available.get("GPU", 0):
        problem = (f"--device needs one GPU per actor: {actors} actor(s), but Ray sees "
                   f"{available.get('GPU', 0):g} GPU(s)")
    elif per_actor["num_cpus"] * actors + 1 > available.get("CPU", 0):
        problem = (f"{actors} actor(s) reserving {per_actor['num_cpus']:g} CPU(s) each, plus one for "
                   f"preprocessing and decoding, need {per_actor['num_cpus'] * actors + 1:g} CPUs; Ray sees "
                   f"{available.get('CPU', 0):g} (use fewer --actors or --threads)")
    if problem and strict:
        raise UserError(problem)
    if problem:
        log(f"warning: {problem}; waiting for the cluster to grow")


def _user_error(exc):
    """The message line of a UserError raised inside a Ray task or actor
    method, found in the exception Ray Data raised, or None. Ray re-raises
    such an exception as a RayTaskError holding the original as `cause` (its
    class also derives from the original's, but its text is the worker's
    traceback); Ray Data may chain that as __cause__, and appends lines about
    its retries to the original's message (a UserError's is one line)."""
    from ray.exceptions import RayTaskError
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, RayTaskError):
            stack.append(e.cause)
        elif isinstance(e, UserError):
            return (str(e).splitlines() or [""])[0]
        stack += [e.__cause__, e.__context__]
    return None


def _model_bytes(model):
    path = Path(model)
    if not path.is_file():
        raise UserError(f"{model}: model file not found")
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def inspect_model(data, name="model"):
    """A CPU session of the serialized model, without graph optimisation (it
    loads fast), for what resolve_mode and the plan read of it (input shape,
    metadata, classes); it also shows here, in one line, a model ONNX
    Runtime refuses, before any Ray worker starts."""
    return make_session(data, device="cpu", threads=1, optimization="disable", name=name)


def _quiet_ray_data_logs():
    """Ray Data's log lines that a run does not need: per-run INFO lines, the
    notice that its progress bars are off (ours count images), and its
    copies of an error this module raises itself (a UserError as one line,
    anything else with its traceback)."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray.data.exceptions").setLevel(logging.CRITICAL)
    pool = logging.getLogger("ray.data._internal.execution.operators.actor_pool_map_operator")
    if not any(isinstance(f, _DropActorInitDeath) for f in pool.filters):
        pool.addFilter(_DropActorInitDeath())


class _DropActorInitDeath(logging.Filter):
    def filter(self, record):
        return "died during initialization" not in record.getMessage()


def build_pipeline(ray, locations, model_ref, model_name, plan, batchsize, device, threads, actors,
                   actor_reservation):
    """The Ray Data dataset: (index, location) rows -> preprocess tasks ->
    inference actors -> decode tasks -> one row per image with its index,
    size, error line and detections on the image."""
    rows = [{"index": index, "location": location} for index, location in locations]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // PREPROCESS_BATCH)))
    # A task whose process dies is run again (Ray Data's default, without limit).
    ds = ds.map_batches(_preprocess, fn_kwargs={"plan": plan}, batch_size=PREPROCESS_BATCH, batch_format="numpy",
                        num_cpus=1)
    with warnings.catch_warnings():
        # Ray 2.60 calls these "ray_remote_args" deprecated (removal in 2.64)
        # but names no replacement; its default restarts without bound.
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(_Infer, fn_constructor_kwargs={"model": [model_ref], "device": device,
                                                           "threads": threads, "model_name": model_name,
                                                           "plan": plan},
                            compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batchsize,
                            batch_format="numpy", max_restarts=ACTOR_MAX_RESTARTS,
                            max_task_retries=ACTOR_TASK_RETRIES, **actor_reservation)
    return ds.map_batches(_decode, fn_kwargs={"plan": plan}, batch_size=DECODE_BATCH, batch_format="numpy",
                          num_cpus=1)


class BlockCollector:
    """Gathers the pipeline's rows (in any order, possibly twice after a
    retry) into blocks; a block is written once, when its last image arrives."""

    def __init__(self, blocks, todo, block_size, store, to_entries, log):
        self.blocks, self.block_size, self.store = blocks, block_size, store
        self.to_entries, self.log = to_entries, log
        self.arrived = {b: {} for b in todo}
        self.images = self.duplicates = 0
        self.batch_seconds, self.pids = {}, set()

    def add(self, out):
        """Take one batch of pipeline rows; returns how many images were new."""
        new = 0
        for j, index in enumerate(out["index"].tolist()):
            b, pos = divmod(index, self.block_size)
            if b not in self.arrived or pos in self.arrived[b]:  # a retried batch's image, already here
                self.duplicates += 1
                continue
            error = str(out["error"][j])
            if not error:
                pid = int(out["pid"][j])
                self.pids.add(pid)
                self.batch_seconds[(pid, int(out["batch"][j]))] = float(out["batch_seconds"][j])
            height, width = out["size"][j].tolist()
            self.arrived[b][pos] = (error, out["dets"][j], height, width)
            new += 1
            if len(self.arrived[b]) == len(self.blocks[b]):
                self._write(b)
        return new

    def _write(self, b):
        images, rows = self.blocks[b], self.arrived.pop(b)
        entries, errors = [], []
        for pos, im in enumerate(images):
            error, dets, height, width = rows[pos]
            if error:
                errors.append(error)
                self.log(f"error: {error}")
            else:
                entries += self.to_entries(im, dets, height, width)
        self.store.write(b, images, entries, errors)
        self.images += len(images)

    @property
    def complete(self):
        return not self.arrived


def _run_blocks(planned, model, to_entries, key, output, batchsize, device, threads, actors, mode, input_size,
                num_classes, block_size, address, num_cpus, progress, log):
    """Run the pipeline over the planned images whose blocks are not done yet,
    writing each block when its last image arrives. Returns (store, blocks,
    stats, plan)."""
    if batchsize < 1 or actors < 1 or block_size < 1:
        raise UserError("--batchsize, --actors and --block-size must be >= 1")
    if device not in PROVIDERS:
        raise UserError(f"unknown device {device!r}; choose from {', '.join(PROVIDERS)}")
    data, digest = _model_bytes(model)
    session = inspect_model(data, str(model))
    mode, input_size, numpy_flip = resolve_mode(session, model, mode, input_size, log)
    model_classes = session.get_outputs()[0].shape[1]
    del session
    if isinstance(model_classes, int) and model_classes != num_classes:
        raise UserError(f"{model}: {model_classes} classes, but {num_classes} are expected")
    plan = Plan(tuple(input_size), mode.keep_res, tuple(mode.scales), numpy_flip, mode.flip, num_classes)
    store = BlockStore(output, {"model_sha256": digest, "mode": mode.name, "flip_in_graph": mode.flip and not numpy_flip,
                                "k": K, **key}, log)
    blocks = [planned[i:i + block_size] for i in range(0, len(planned), block_size)]
    todo = [b for b, images in enumerate(blocks) if not store.is_done(b, images)]
    if len(todo) < len(blocks):
        log(f"resuming: {len(blocks) - len(todo)} of {len(blocks)} block(s) already done in {store.folder}")
    stats = {"images": 0, "mode": mode.name, "blocks": len(blocks), "blocks_resumed": len(blocks) - len(todo),
             "batchsize": batchsize, "actors": actors, "threads": threads, "device": device,
             "block_size": block_size}
    if not todo:
        return store, blocks, stats, plan

    locations = [(b * block_size + j, im.location) for b in todo for j, im in enumerate(blocks[b])]
    collector = BlockCollector(blocks, todo, block_size, store, to_entries, log)
    t_ray = time.perf_counter()
    with ray_session(address, num_cpus, log) as ray:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours instead, over images
        ctx.print_on_execution_start = False
        # A stage's exception as raised, not wrapped in Ray Data's UserCodeException (whose
        # cause does not survive the trip to the driver): _user_error finds a UserError in it.
        ctx.raise_original_map_exception = True
        _quiet_ray_data_logs()
        reservation = actor_resources(device, threads, _largest_node_cpus(ray))
        local = (address or os.environ.get("RAY_ADDRESS") or "local") == "local"
        check_resources(ray.cluster_resources(), reservation, actors, strict=local, log=log)
        model_ref = ray.put(data)  # held here for the whole run: restarted actors read it again
        del data
        stats["ray_start_seconds"] = round(time.perf_counter() - t_ray, 3)
        start = time.perf_counter()
        ds = build_pipeline(ray, locations, model_ref, str(model), plan, batchsize, device, threads, actors,
                            reservation)
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            with tqdm(total=len(planned), initial=len(planned) - len(locations), desc="ray", unit="img",
                      disable=not progress, file=sys.stderr) as bar:
                for out in batches:
                    stats.setdefault("first_result_seconds", round(time.perf_counter() - start, 3))
                    bar.update(collector.add(out))
        except KeyboardInterrupt:
            kept = len(blocks) - len(collector.arrived)
            raise Interrupted(f"{kept} of {len(blocks)} block(s) finished, kept in {store.folder}; run the same "
                              "command again to go on from there") from None
        except Exception as e:
            message = _user_error(e)
            if message is not None:
                raise UserError(message) from None
            raise
        finally:
            batches.close()  # also on Ctrl-C: Ray Data stops its tasks and actors now
        wall = time.perf_counter() - start
    if not collector.complete:  # Ray Data ended without an error but without some images
        raise RuntimeError(f"Ray Data returned no results for {len(collector.arrived)} block(s)")
    stats.update(latency_stats(list(collector.batch_seconds.values()), collector.images))
    # Inference alone with every actor busy at once: the pipeline's ceiling.
    stats["fps_per_actor"] = stats["fps"]
    stats["fps"] = round(stats["fps"] * actors, 3) if stats["fps"] else None
    stats.update(wall_seconds=round(wall, 3), end_to_end_fps=round(collector.images / wall, 3),
                 actor_processes=len(collector.pids), duplicates_dropped=collector.duplicates)
    return store, blocks, stats, plan


def evaluate_on_ray(model, images_dir, annotation_file, output, batchsize=1, device="cpu", threads=0, actors=1,
                    limit=None, input_size=(INPUT_SIZE, INPUT_SIZE), mode=TestMode(), upstream_rounding=False,
                    block_size=BLOCK_SIZE, address=None, num_cpus=None, progress=True, log=_log_stderr):
    """Detect on every annotated image (the first `limit` by file name) on
    Ray in test mode `mode` and write the COCO results JSON `output`: the
    same as stream_detections' results, in the same order.

    Returns (ids of the images attempted, errors list, stats dict), as
    stream_detections does; an unreadable image is in the ids (scored as
    missed) and its error line in the errors."""
    data = load_annotations(annotation_file)
    category_ids = class_category_ids(data, source=str(annotation_file))
    images = sorted(data["images"], key=lambda img: Path(img["file_name"]).stem)[:limit]
    if not images:
        raise UserError(f"{annotation_file}: no images to evaluate")
    planned = [PlannedImage(img["file_name"], join_location(images_dir, img["file_name"]), img["id"])
               for img in images]
    multi_scale = len(mode.scales) > 1

    def to_entries(im, dets, height, width):
        return detections_to_coco(im.image_id, *detections_of(dets, multi_scale), category_ids, upstream_rounding)

    store, blocks, stats, _ = _run_blocks(
        planned, model, to_entries, {"task": "evaluate", "category_ids": category_ids,
                                     "upstream_rounding": bool(upstream_rounding)},
        output, batchsize, device, threads, actors, mode, input_size, len(category_ids), block_size, address,
        num_cpus, progress, log)
    errors = []

    def chunks():
        yield b"["
        first = True
        for b in range(len(blocks)):
            part = store.read(b)
            errors.extend(part["errors"])
            if part["entries"]:
                text = json.dumps(part["entries"], separators=(",", ":"))[1:-1]
                yield (text if first else "," + text).encode("utf-8")
                first = False
        yield b"]"

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_atomic_chunks(output, chunks())
    store.remove()
    return [im.image_id for im in planned], errors, stats


def annotate_on_ray(model, images_dir, output, vis_thresh=VIS_THRESH, batchsize=1, device="cpu", threads=0,
                    actors=1, limit=None, input_size=(INPUT_SIZE, INPUT_SIZE), mode=TestMode(),
                    block_size=BLOCK_SIZE, address=None, num_cpus=None, progress=True, log=_log_stderr):
    """Detect on every image of a folder (or URI prefix) with no ground truth,
    on Ray in test mode `mode`, and write `output` in CenterNet_demo.py's
    detections.json format: per image its file, width, height and
    detections at or above `vis_thresh` (box x1, y1, x2, y2 in pixels,
    clipped; class name; COCO category id; score), best first, in file name
    order. Returns (number of images, errors list, stats dict)."""
    if not 0.0 <= vis_thresh <= 1.0:
        raise UserError(f"--vis-thresh {vis_thresh}: must be between 0 and 1")
    files = list_image_files(images_dir, limit)
    planned = [PlannedImage(name, location, stable_image_id(Path(name).stem)) for name, location in files]
    labels = Labels([name for _, name, _ in COCO_CATEGORIES], default_category_ids())
    thresh = float(vis_thresh)
    multi_scale = len(mode.scales) > 1

    def to_entries(im, dets, height, width):
        scores, classes, boxes = detections_of(dets, multi_scale)
        best_first = np.argsort(-scores, kind="stable")  # a multi-scale merge lists them class by class
        found, _ = detections_entry(scores[best_first], classes[best_first], boxes[best_first], labels, thresh,
                                    height, width)
        return [{"file": im.location, "width": width, "height": height, "detections": found}]

    store, blocks, stats, plan = _run_blocks(
        planned, model, to_entries, {"task": "annotate", "vis_thresh": thresh}, output, batchsize, device,
        threads, actors, mode, input_size, len(COCO_CATEGORIES), block_size, address, num_cpus, progress, log)
    errors = []

    def entries():
        for b in range(len(blocks)):
            part = store.read(b)
            errors.extend(part["errors"])
            yield from part["entries"]

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_detections_json(output, detections_header(model, mode_text(plan), thresh), entries())
    store.remove()
    return len(planned), errors, stats


def mode_text(plan):
    """The mode as detections.json names it: CenterNet_demo.py's words
    ("fixed 512x512", "keep resolution"), then the flip test and scales."""
    parts = ["keep resolution" if plan.keep_res else "fixed {}x{}".format(*plan.input_size)]
    if plan.hm_is_heat:
        parts.append("flip")
    if plan.scales != (1.0,):
        parts.append("scales " + ",".join(f"{t:g}" for t in plan.scales))
    return " + ".join(parts)
