"""The streaming evaluation on Ray Data: one machine or a cluster, same results.

The stages of stream.py become Ray Data operators: the image list is the
dataset; preprocessing runs as CPU tasks; inference runs in a pool of actors
that each hold one ONNX Runtime session (one GPU each with device cuda);
decoding runs as CPU tasks; the driver writes the results. Every stage calls
the functions the one-machine path uses (preprocess_array, run_session,
decode_to_image, detections_to_coco, and the demo's detections_entry), so the
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
import re
import shutil
import sys
import time
import warnings
from collections import namedtuple
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .binio import write_atomic, write_atomic_chunks
from .coco import class_category_ids, default_category_ids, load_annotations, stable_image_id, COCO_CATEGORIES
from .decode import decode_to_image, detections_to_coco
from .detect import DEMO_IMAGE_EXTENSIONS, VIS_THRESH, detections_entry, detections_header, write_detections_json
from .errors import UserError
from .infer import latency_stats
from .preprocess import preprocess_array
from .runtime import PROVIDERS, make_session, run_session
from .transforms import DOWN_RATIO, INPUT_SIZE

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

def _preprocess(batch, input_size):
    """Task: image files -> network inputs and geometry. An unreadable image
    keeps its row, with a zero input and its error line."""
    cv2.setNumThreads(1)  # Ray runs one task per reserved CPU
    n = len(batch["index"])
    in_h, in_w = input_size
    inputs = np.zeros((n, 3, in_h, in_w), np.float32)
    centers, scales = np.zeros((n, 2), np.float64), np.zeros(n, np.float64)
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
            errors[i] = f"{location}: cannot read or decode the image (corrupt, empty or not an image)"
            continue
        try:
            _, meta = preprocess_array(image, input_size, out=inputs[i:i + 1])
        except cv2.error as e:
            errors[i] = f"{location}: OpenCV cannot process the image ({e.err})"
            continue
        centers[i], scales[i] = meta["center"], meta["scale"]
        sizes[i] = meta["height"], meta["width"]
    return {"index": batch["index"], "input": inputs, "center": centers, "scale": scales, "size": sizes,
            "error": np.array(errors, dtype=object)}


class _Infer:
    """Actor: one ONNX Runtime session, kept for the whole run."""

    def __init__(self, model, device, threads, model_name):
        import ray
        self.session = make_session(ray.get(model[0]), device=device, threads=threads, name=model_name)
        self.pid = os.getpid()
        self.calls = 0

    def __call__(self, batch):
        ok = np.flatnonzero(batch["error"] == "")
        n = len(batch["index"])
        t0 = time.perf_counter()
        if ok.size:
            outputs = run_session(self.session, batch["input"] if ok.size == n else batch["input"][ok])
        else:
            outputs = None
        seconds = time.perf_counter() - t0
        self.calls += 1
        out = {key: batch[key] for key in ("index", "center", "scale", "size", "error")}
        if outputs is None:  # every image of the batch failed to load: placeholders
            h, w = (d // DOWN_RATIO for d in batch["input"].shape[2:])
            classes = self.session.get_outputs()[0].shape[1]
            outputs = [np.zeros((0, c, h, w), np.float32) for c in (classes if isinstance(classes, int) else 1, 2, 2)]
        for name, result in zip(("hm", "wh", "reg"), outputs):
            full = np.zeros((n,) + result.shape[1:], np.float32)
            full[ok] = result
            out[name] = full
        out["pid"] = np.full(n, self.pid)
        out["batch"] = np.full(n, self.calls)  # (pid, batch) names one inference call
        out["batch_seconds"] = np.full(n, seconds if ok.size else 0.0)
        return out


def _decode(batch, k):
    """Task: raw outputs -> the top k detections on each image (boxes in
    image pixels); the heatmaps go no further."""
    n = len(batch["index"])
    out_h, out_w = batch["hm"].shape[2:]
    k = min(k, out_h * out_w)
    scores, classes = np.zeros((n, k), np.float32), np.zeros((n, k), np.int64)
    boxes = np.zeros((n, k, 4), np.float64)
    ok = np.flatnonzero(batch["error"] == "")
    if ok.size:
        geometries = [((float(batch["center"][i][0]), float(batch["center"][i][1])), float(batch["scale"][i]),
                       (out_h, out_w)) for i in ok]
        decoded = decode_to_image(batch["hm"][ok], batch["wh"][ok], batch["reg"][ok], geometries, K=k)
        for i, (s, c, b) in zip(ok, decoded):
            scores[i], classes[i], boxes[i] = s, c, b
    keep = ("index", "size", "error", "pid", "batch", "batch_seconds")
    return {**{key: batch[key] for key in keep}, "scores": scores, "classes": classes, "boxes": boxes}


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
    """The message of a UserError raised inside a Ray task or actor, or None.
    Ray keeps the exception itself for a task, only its traceback text for an
    actor's __init__ (e.g. ONNX Runtime refusing the model)."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if type(e) is UserError:
            return str(e)
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    found = re.findall(r"centernet\.errors\.UserError: ([^\n]+)", str(exc))
    return found[-1].strip() if found else None


def _model_bytes(model):
    path = Path(model)
    if not path.is_file():
        raise UserError(f"{model}: model file not found")
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def model_input_size(data, input_size, name="model"):
    """The (H, W) a serialized ONNX model runs at: its own where fixed, else
    `input_size` (as the one-process evaluation)."""
    import onnx
    try:
        proto = onnx.load_model_from_string(data)
    except Exception:  # protobuf's DecodeError and friends
        raise UserError(f"{name}: not an ONNX model") from None
    dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
    if len(dims) == 4 and dims[2].dim_value > 0 and dims[3].dim_value > 0:
        return dims[2].dim_value, dims[3].dim_value
    return tuple(input_size)


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


def build_pipeline(ray, locations, model_ref, model_name, input_size, batchsize, device, threads, actors,
                   actor_reservation):
    """The Ray Data dataset: (index, location) rows -> preprocess tasks ->
    inference actors -> decode tasks -> one row per image with its index,
    size, error line, top-K scores, classes and boxes on the image."""
    rows = [{"index": index, "location": location} for index, location in locations]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // PREPROCESS_BATCH)))
    # A task whose process dies is run again (Ray Data's default, without limit).
    ds = ds.map_batches(_preprocess, fn_kwargs={"input_size": tuple(input_size)}, batch_size=PREPROCESS_BATCH,
                        batch_format="numpy", num_cpus=1)
    with warnings.catch_warnings():
        # Ray 2.60 calls these "ray_remote_args" deprecated (removal in 2.64)
        # but names no replacement; its default restarts without bound.
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(_Infer, fn_constructor_kwargs={"model": [model_ref], "device": device,
                                                           "threads": threads, "model_name": model_name},
                            compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batchsize,
                            batch_format="numpy", max_restarts=ACTOR_MAX_RESTARTS,
                            max_task_retries=ACTOR_TASK_RETRIES, **actor_reservation)
    return ds.map_batches(_decode, fn_kwargs={"k": K}, batch_size=DECODE_BATCH, batch_format="numpy", num_cpus=1)


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
            self.arrived[b][pos] = (error, out["scores"][j], out["classes"][j], out["boxes"][j], height, width)
            new += 1
            if len(self.arrived[b]) == len(self.blocks[b]):
                self._write(b)
        return new

    def _write(self, b):
        images, rows = self.blocks[b], self.arrived.pop(b)
        entries, errors = [], []
        for pos, im in enumerate(images):
            error, scores, classes, boxes, height, width = rows[pos]
            if error:
                errors.append(error)
                self.log(f"error: {error}")
            else:
                entries += self.to_entries(im, scores, classes, boxes, height, width)
        self.store.write(b, images, entries, errors)
        self.images += len(images)

    @property
    def complete(self):
        return not self.arrived


def _run_blocks(plan, model, to_entries, key, output, batchsize, device, threads, actors, input_size,
                block_size, address, num_cpus, progress, log):
    """Run the pipeline over the planned images whose blocks are not done yet,
    writing each block when its last image arrives. Returns (store, blocks,
    stats)."""
    if batchsize < 1 or actors < 1 or block_size < 1:
        raise UserError("--batchsize, --actors and --block-size must be >= 1")
    if device not in PROVIDERS:
        raise UserError(f"unknown device {device!r}; choose from {', '.join(PROVIDERS)}")
    data, digest = _model_bytes(model)
    input_size = model_input_size(data, input_size, str(model))
    store = BlockStore(output, {"model_sha256": digest, "input_size": list(input_size), "k": K, **key}, log)
    blocks = [plan[i:i + block_size] for i in range(0, len(plan), block_size)]
    todo = [b for b, images in enumerate(blocks) if not store.is_done(b, images)]
    if len(todo) < len(blocks):
        log(f"resuming: {len(blocks) - len(todo)} of {len(blocks)} block(s) already done in {store.folder}")
    stats = {"images": 0, "input_size": list(input_size), "blocks": len(blocks),
             "blocks_resumed": len(blocks) - len(todo), "batchsize": batchsize, "actors": actors,
             "threads": threads, "device": device, "block_size": block_size}
    if not todo:
        return store, blocks, stats

    locations = [(b * block_size + j, im.location) for b in todo for j, im in enumerate(blocks[b])]
    collector = BlockCollector(blocks, todo, block_size, store, to_entries, log)
    t_ray = time.perf_counter()
    with ray_session(address, num_cpus, log) as ray:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours instead, over images
        ctx.print_on_execution_start = False
        _quiet_ray_data_logs()
        reservation = actor_resources(device, threads, _largest_node_cpus(ray))
        local = (address or os.environ.get("RAY_ADDRESS") or "local") == "local"
        check_resources(ray.cluster_resources(), reservation, actors, strict=local, log=log)
        model_ref = ray.put(data)  # held here for the whole run: restarted actors read it again
        del data
        stats["ray_start_seconds"] = round(time.perf_counter() - t_ray, 3)
        start = time.perf_counter()
        ds = build_pipeline(ray, locations, model_ref, str(model), input_size, batchsize, device, threads, actors,
                            reservation)
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            with tqdm(total=len(plan), initial=len(plan) - len(locations), desc="ray", unit="img",
                      disable=not progress, file=sys.stderr) as bar:
                for out in batches:
                    stats.setdefault("first_result_seconds", round(time.perf_counter() - start, 3))
                    bar.update(collector.add(out))
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
    return store, blocks, stats


def evaluate_on_ray(model, images_dir, annotation_file, output, batchsize=1, device="cpu", threads=0, actors=1,
                    limit=None, input_size=(INPUT_SIZE, INPUT_SIZE), block_size=BLOCK_SIZE, address=None,
                    num_cpus=None, progress=True, log=_log_stderr):
    """Detect on every annotated image (the first `limit` by file name) on
    Ray and write the COCO results JSON `output` (the same as
    stream_detections' results, in the same order).

    Returns (ids of the images attempted, errors list, stats dict), as
    stream_detections does; an unreadable image is in the ids (scored as
    missed) and its error line in the errors."""
    data = load_annotations(annotation_file)
    category_ids = class_category_ids(data, source=str(annotation_file))
    images = sorted(data["images"], key=lambda img: Path(img["file_name"]).stem)[:limit]
    if not images:
        raise UserError(f"{annotation_file}: no images to evaluate")
    plan = [PlannedImage(img["file_name"], join_location(images_dir, img["file_name"]), img["id"])
            for img in images]

    def to_entries(im, scores, classes, boxes, height, width):
        return detections_to_coco(im.image_id, scores, classes, boxes, category_ids)

    store, blocks, stats = _run_blocks(plan, model, to_entries, {"task": "evaluate", "category_ids": category_ids},
                                       output, batchsize, device, threads, actors, input_size, block_size,
                                       address, num_cpus, progress, log)
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
    return [im.image_id for im in plan], errors, stats


def annotate_on_ray(model, images_dir, output, vis_thresh=VIS_THRESH, batchsize=1, device="cpu", threads=0,
                    actors=1, limit=None, input_size=(INPUT_SIZE, INPUT_SIZE), block_size=BLOCK_SIZE, address=None,
                    num_cpus=None, progress=True, log=_log_stderr):
    """Detect on every image of a folder (or URI prefix) with no ground truth,
    on Ray, and write `output` in CenterNet_demo.py's detections.json format:
    per image its file, width, height and detections at or above
    `vis_thresh` (box x1, y1, x2, y2 in pixels, clipped; class name; COCO
    category id; score), in file name order. Returns (number of images,
    errors list, stats dict)."""
    if not 0.0 <= vis_thresh <= 1.0:
        raise UserError(f"--vis-thresh {vis_thresh}: must be between 0 and 1")
    files = list_image_files(images_dir, limit)
    plan = [PlannedImage(name, location, stable_image_id(Path(name).stem)) for name, location in files]
    labels = Labels([name for _, name, _ in COCO_CATEGORIES], default_category_ids())
    thresh = float(vis_thresh)

    def to_entries(im, scores, classes, boxes, height, width):
        dets, _ = detections_entry(scores, classes, boxes, labels, thresh, height, width)
        return [{"file": im.location, "width": width, "height": height, "detections": dets}]

    store, blocks, stats = _run_blocks(plan, model, to_entries, {"task": "annotate", "vis_thresh": thresh},
                                       output, batchsize, device, threads, actors, input_size, block_size,
                                       address, num_cpus, progress, log)
    mode = "fixed {}x{}".format(*stats["input_size"])
    errors = []

    def entries():
        for b in range(len(blocks)):
            part = store.read(b)
            errors.extend(part["errors"])
            yield from part["entries"]

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_detections_json(output, detections_header(model, mode, thresh), entries())
    store.remove()
    return len(plan), errors, stats
