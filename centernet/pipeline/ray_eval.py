"""The streaming evaluation on Ray Data: one machine or a cluster, same results.

The job (jobs.EvaluationJob or AnnotationJob) is the same as the one-machine
path's; so is the predictor. The image list is the dataset; preparing the
inputs runs as CPU tasks (InputSpec.prepare); inference and decoding run in
a pool of actors that each hold one Predictor on a session of any backend
(ONNX Runtime, or the PyTorch backend on a .pth; one GPU each with device
cuda); the driver gathers each image's detections into blocks and writes
them. The detections are the stream's, in every test mode.

Resumable: finished blocks are kept (io.blocks.BlockStore), as in the
one-machine path. Fault tolerant: Ray restarts an inference actor that dies
(ACTOR_MAX_RESTARTS) and retries its unfinished batches
(ACTOR_TASK_RETRIES); an image that arrives twice is kept once.

Ray is imported only here, and only when a function of this module runs.
"""
import hashlib
import logging
import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from centernet.constants import K, VIS_THRESH
from centernet.core.modes import TestMode
from centernet.core.timing import latency_stats
from centernet.errors import Interrupted, UserError
from centernet.io.blocks import BLOCK_SIZE, BlockStore
from centernet.io.media import read_image_bytes
from centernet.pipeline.jobs import AnnotationJob, EvaluationJob, blocks_of, fit_job, mode_text, run_key
from centernet.pipeline.predictor import UNREADABLE, Detections, Predictor, Prepared, batches_by_shape
from centernet.runtime.ort_session import PROVIDERS

logger = logging.getLogger(__name__)

ACTOR_MAX_RESTARTS = 8    # an inference actor that dies is started again up to this many times
ACTOR_TASK_RETRIES = 3    # and each batch it held is given to an actor again up to this many times
PREPROCESS_BATCH = 4      # images per preprocessing task (small: keeps the actors fed from the start)


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
def ray_session(address=None, num_cpus=None):
    """Ray for the length of a run: the caller's if ray.init() already ran,
    else init_ray(address, num_cpus), shut down afterwards."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    init_ray(address, num_cpus)
    try:
        resources = ray.cluster_resources()
        logger.info(f"ray: {address or os.environ.get('RAY_ADDRESS') or 'local'}, {len(ray.nodes())} node(s), "
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


def check_resources(available, per_actor, actors, strict=True):
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
        logger.warning(f"warning: {problem}; waiting for the cluster to grow")


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


@dataclass(frozen=True)
class SessionSource:
    """What an inference actor opens: the model's bytes (shipped once through
    Ray's object store, so cluster nodes need no shared disk) and how to run them."""
    backend: str
    name: str
    suffix: str
    device: str = "cpu"
    threads: int = 0
    torch_options: object = None

    def open(self, data):
        from centernet.runtime.backends import open_session
        if self.backend == "onnxruntime":
            from centernet.runtime.ort_session import open_ort_session
            return open_ort_session(data, device=self.device, threads=self.threads, name=self.name)
        # PyTorch reads a checkpoint from a file: a private copy for this actor.
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"model{self.suffix}"
            path.write_bytes(data)
            session = open_session(path, self.backend, device=self.device, threads=self.threads, input_size=None,
                                   torch_options=self.torch_options)
        session.name = self.name
        return session


# --- the stages (run in Ray workers) ------------------------------------------
#
# A row is an image. In a multi-scale test it carries one network input per
# scale (columns input_0, input_1, ...), so that the actor can merge its
# scales; in keep-resolution mode the inputs differ in size from row to row.

def _column(arrays):
    """A batch column from per-row arrays: stacked where they have one shape,
    else an object array (Ray Data stores it as a variable-shaped tensor)."""
    if len({a.shape for a in arrays}) <= 1:
        return np.stack(arrays) if arrays else np.zeros((0,))
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def _prepare(batch, spec):
    """Task: image files -> the network input at each test scale and its
    geometry (InputSpec.prepare, as the one-machine path). An unreadable
    image keeps its row, with placeholder inputs and its error line."""
    cv2.setNumThreads(1)  # Ray runs one task per reserved CPU
    n, scales = len(batch["index"]), range(len(spec.scales))
    placeholder = (np.zeros((32, 32, 3), np.uint8) if spec.warped else np.zeros((3, 32, 32), np.float32))
    inputs = [[placeholder] * n for _ in scales]
    centers = np.zeros((len(scales), n, 2))
    widths = np.zeros((len(scales), n))  # the scale's width: all get_affine_transform uses of it
    out_hw = np.ones((len(scales), n, 2), np.int64)
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
        for s in scales:
            prepared, error = spec.prepare(image, location, s)
            if error:
                errors[i] = error
                break
            inputs[s][i], centers[s, i], widths[s, i] = prepared.tensor, prepared.center, np.ravel(prepared.scale)[0]
            out_hw[s, i] = prepared.out_hw
    out = {"index": batch["index"], "size": sizes, "error": np.array(errors, dtype=object)}
    for s in scales:
        out[f"input_{s}"], out[f"center_{s}"], out[f"scale_{s}"] = _column(inputs[s]), centers[s], widths[s]
        out[f"out_hw_{s}"] = out_hw[s]
    return out


class _Infer:
    """Actor: one Predictor, kept for the whole run: inputs of one shape run
    together, are decoded, and each image's scales merged; only the
    detections leave the actor."""

    def __init__(self, model, source, mode, k):
        self.pid = os.getpid()
        self.calls = 0
        # A UserError here (the backend refusing the model on this worker's
        # device) is raised from the first call instead: Ray keeps an exception
        # of an actor's method whole (RayTaskError.cause), but one of its
        # constructor only as text (ActorDiedError, Ray 2.60).
        self.error = None
        try:
            self._start(model, source, mode, k)
        except UserError as e:
            self.error = e

    def _start(self, model, source, mode, k):
        import ray
        self.predictor = Predictor(source.open(ray.get(model[0])), mode, K=k)

    def __call__(self, batch):
        if self.error is not None:
            raise self.error
        ok = [i for i, e in enumerate(batch["error"]) if not e]
        n, scales = len(batch["index"]), range(len(self.predictor.spec.scales))
        found = {}
        seconds = 0.0
        for s in scales:
            prepared = {i: Prepared(batch[f"input_{s}"][i], batch[f"center_{s}"][i], float(batch[f"scale_{s}"][i]),
                                    tuple(int(v) for v in batch[f"out_hw_{s}"][i])) for i in ok}
            rows = sorted(ok, key=lambda i: (prepared[i].tensor.shape, i))
            for group in batches_by_shape(rows, lambda i: prepared[i].tensor.shape, len(rows)):
                t0 = time.perf_counter()
                outputs = self.predictor.run([prepared[i] for i in group])
                seconds += time.perf_counter() - t0
                for i, dets in zip(group, self.predictor.decode([prepared[i] for i in group], outputs)):
                    found[(i, s)] = dets
        readable = set(ok)
        dets = [self.predictor.decoder.merge([found[(i, s)] for s in scales]).to_rows() if i in readable
                else np.zeros((0, 6)) for i in range(n)]
        self.calls += 1
        keep = ("index", "size", "error")
        return {**{key: batch[key] for key in keep}, "dets": _column(dets), "pid": np.full(n, self.pid),
                "batch": np.full(n, self.calls),  # (pid, batch) names one inference call
                "batch_seconds": np.full(n, seconds)}


def build_pipeline(ray, locations, model_ref, source, predictor, batchsize, actors, actor_reservation):
    """The Ray Data dataset: (index, location) rows -> prepare tasks ->
    inference actors (predict and merge) -> one row per image with its
    index, size, error line and detections on the image."""
    rows = [{"index": index, "location": location} for index, location in locations]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // PREPROCESS_BATCH)))
    # A task whose process dies is run again (Ray Data's default, without limit).
    ds = ds.map_batches(_prepare, fn_kwargs={"spec": predictor.spec}, batch_size=PREPROCESS_BATCH,
                        batch_format="numpy", num_cpus=1)
    with warnings.catch_warnings():
        # Ray 2.60 calls these "ray_remote_args" deprecated (removal in 2.64)
        # but names no replacement; its default restarts without bound.
        warnings.simplefilter("ignore", DeprecationWarning)
        return ds.map_batches(_Infer, fn_constructor_kwargs={"model": [model_ref], "source": source,
                                                             "mode": predictor.mode, "k": predictor.decoder.K},
                              compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batchsize,
                              batch_format="numpy", max_restarts=ACTOR_MAX_RESTARTS,
                              max_task_retries=ACTOR_TASK_RETRIES, **actor_reservation)


class BlockCollector:
    """Gathers the pipeline's rows (in any order, possibly twice after a
    retry) into blocks; a block is written once, when its last image arrives."""

    def __init__(self, blocks, todo, block_size, store, job, merged):
        self.blocks, self.block_size, self.store, self.job, self.merged = blocks, block_size, store, job, merged
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
                logger.error(f"error: {error}")
            else:
                entries += self.job.to_entries(im, Detections.from_rows(dets, self.merged), height, width)
        self.store.write(b, images, entries, errors)
        self.images += len(images)

    @property
    def complete(self):
        return not self.arrived


def _model_bytes(model):
    path = Path(model)
    if not path.is_file():
        raise UserError(f"{model}: model file not found")
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def run_on_ray(job, model, output, mode=TestMode(), backend=None, batchsize=1, device="cpu", threads=0, actors=1,
               torch_options=None, K=K, block_size=BLOCK_SIZE, address=None, num_cpus=None, progress=True):
    """Run every image of `job` on Ray and write its output file. Returns (parts, stats)."""
    from centernet.runtime.backends import default_backend, open_session
    if batchsize < 1 or actors < 1 or block_size < 1:
        raise UserError("--batchsize, --actors and --block-size must be >= 1")
    backend = backend or default_backend(model)
    if backend == "onnxruntime" and device not in PROVIDERS:
        raise UserError(f"unknown device {device!r}; choose from {', '.join(PROVIDERS)}")
    data, digest = _model_bytes(model)
    source = SessionSource(backend, str(model), Path(model).suffix, device, threads, torch_options)
    # The driver's own look at the model: it settles the mode (and shows a
    # model the backend refuses, in one line, before any Ray worker starts).
    if backend == "onnxruntime":
        from centernet.runtime.ort_session import open_ort_session
        session = open_ort_session(data, device="cpu", threads=1, optimization="disable", name=str(model))
    else:
        session = open_session(model, backend, device="cpu", threads=1, input_size=None,
                               torch_options=torch_options)
    predictor = Predictor(session, mode, K=K)
    del session
    fit_job(job, predictor, model)  # the class check and labels, before any Ray worker starts
    store = BlockStore(output, run_key(model, backend, predictor, K, job.key, digest))
    blocks = blocks_of(job.images, block_size)
    todo = [b for b, images in enumerate(blocks) if not store.is_done(b, images)]
    if len(todo) < len(blocks):
        logger.info(f"resuming: {len(blocks) - len(todo)} of {len(blocks)} block(s) already done in {store.folder}")
    stats = {"images": 0, "mode": predictor.mode.name, "blocks": len(blocks),
             "blocks_resumed": len(blocks) - len(todo), "batchsize": batchsize, "actors": actors, "threads": threads,
             "device": device, "block_size": block_size, "random_weights": predictor.random_weights}
    if todo:
        _run_blocks(job, blocks, todo, store, data, source, predictor, batchsize, device, threads, actors,
                    block_size, address, num_cpus, progress, stats)
    parts = [store.read(b) for b in range(len(blocks))]
    job.write(output, parts, model, mode_text(predictor.mode), predictor.random_weights)
    store.remove()
    return parts, stats


def _run_blocks(job, blocks, todo, store, data, source, predictor, batchsize, device, threads, actors, block_size,
                address, num_cpus, progress, stats):
    locations = [(b * block_size + j, im.location) for b in todo for j, im in enumerate(blocks[b])]
    collector = BlockCollector(blocks, todo, block_size, store, job, len(predictor.spec.scales) > 1)
    total = sum(len(images) for images in blocks)
    t_ray = time.perf_counter()
    with ray_session(address, num_cpus) as ray:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours instead, over images
        ctx.print_on_execution_start = False
        # A stage's exception as raised, not wrapped in Ray Data's UserCodeException (whose
        # cause does not survive the trip to the driver): _user_error finds a UserError in it.
        ctx.raise_original_map_exception = True
        _quiet_ray_data_logs()
        reservation = actor_resources(device, threads, _largest_node_cpus(ray))
        local = (address or os.environ.get("RAY_ADDRESS") or "local") == "local"
        check_resources(ray.cluster_resources(), reservation, actors, strict=local)
        model_ref = ray.put(data)  # held here for the whole run: restarted actors read it again
        stats["ray_start_seconds"] = round(time.perf_counter() - t_ray, 3)
        start = time.perf_counter()
        ds = build_pipeline(ray, locations, model_ref, source, predictor, batchsize, actors, reservation)
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            with tqdm(total=total, initial=total - len(locations), desc="ray", unit="img",
                      disable=not progress) as bar:
                for out in batches:
                    stats.setdefault("first_result_seconds", round(time.perf_counter() - start, 3))
                    bar.update(collector.add(out))
        except KeyboardInterrupt:
            kept = len(blocks) - len(collector.arrived)
            raise Interrupted(f"{kept} of {len(blocks)} block(s) finished, kept in {store.folder}",
                              "run the same command again to go on from there") from None
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


def evaluate_on_ray(model, images_dir, annotation_file, output, batchsize=1, device="cpu", threads=0, actors=1,
                    limit=None, input_size=None, mode=TestMode(), upstream_rounding=False,
                    block_size=BLOCK_SIZE, address=None, num_cpus=None, progress=True, backend=None,
                    torch_options=None):
    """Detect on every annotated image (the first `limit` by file name) on
    Ray in test mode `mode` and write the COCO results JSON `output`: the
    same as stream_detections' results, in the same order. Returns (ids of
    the images attempted, errors list, stats dict)."""
    job = EvaluationJob(annotation_file, images_dir, limit, upstream_rounding)
    mode = TestMode(mode.keep_res, mode.flip, tuple(mode.scales), tuple(input_size) if input_size else mode.input_size)
    parts, stats = run_on_ray(job, model, output, mode, backend, batchsize, device, threads, actors, torch_options,
                              block_size=block_size, address=address, num_cpus=num_cpus, progress=progress)
    return [im.image_id for im in job.images], [e for p in parts for e in p["errors"]], stats


def annotate_on_ray(model, images_dir, output, vis_thresh=VIS_THRESH, batchsize=1, device="cpu", threads=0,
                    actors=1, limit=None, input_size=None, mode=TestMode(),
                    block_size=BLOCK_SIZE, address=None, num_cpus=None, progress=True, backend=None,
                    torch_options=None, num_classes=None, names=None):
    """Detect on every image of a folder (or URI prefix) with no ground truth,
    on Ray, and write `output` in CenterNet_demo.py's detections.json
    format. Returns (number of images, errors list, stats dict)."""
    job = AnnotationJob(images_dir, num_classes, vis_thresh, limit, names)
    mode = TestMode(mode.keep_res, mode.flip, tuple(mode.scales), tuple(input_size) if input_size else mode.input_size)
    parts, stats = run_on_ray(job, model, output, mode, backend, batchsize, device, threads, actors, torch_options,
                              block_size=block_size, address=address, num_cpus=num_cpus, progress=progress)
    return len(job.images), [e for p in parts for e in p["errors"]], stats
