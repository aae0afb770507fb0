"""ONNX Runtime sessions: one place that picks providers, threads and options
(make_session), and OrtSession, the Session interface over one."""
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from centernet.constants import FLIP_KEY, RANDOM_WEIGHTS_KEY
from centernet.core.model_facts import ModelFacts
from centernet.errors import UserError, sigint_deferred
from centernet.runtime.session import Capabilities, Session, heads_from_channels

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def make_session(model, device="cpu", threads=0, optimization="all", profile_prefix=None, options=None,
                 name=None):
    """An ONNX Runtime InferenceSession for a path or serialized model.

    device: cpu | cuda | tensorrt (the GPU ones need the onnxruntime-gpu package).
    threads: intra-op threads, 0 = ONNX Runtime's default (all physical cores).
    optimization: disable | basic | extended | all (graph optimisation level).
    name: what to call the model in error messages (default: its path, or "model").
    profile_prefix: turn on ONNX Runtime's profiler, writing PREFIX_<date>.json
    (session.end_profiling() returns the path).
    options: further SessionOptions, {attribute: value} (e.g. enable_mem_pattern:
    False, execution_mode: "parallel") or {config key with dots: str} (e.g.
    "session.intra_op.allow_spinning": "0"); for experiments like
    CenterNet_benchmark.py --ort-sweep.

    The other options stay at ONNX Runtime's defaults on purpose. Measured on
    ctdet DLA-34, batch 1, 2 threads (CenterNet_benchmark.py --ort-sweep; each
    variant's best of 3 interleaved rounds), every change was slower: graph
    optimisation "extended" 0.90x and "basic" 0.88x (no NCHWc convolution
    layout), no memory arena 0.81x, no memory pattern 0.92x, parallel
    execution 0.96x, denormals-as-zero 0.93x, and no spinning 0.95x on an idle
    machine, though 1.25-1.9x *faster* while other processes hold the cores
    (spinning threads then wait on descheduled peers): pass
    options={"session.intra_op.allow_spinning": "0"} on a busy machine.
    """
    import onnxruntime as ort

    if device not in PROVIDERS:
        raise UserError(f"unknown device {device!r}; choose from {', '.join(PROVIDERS)}")
    available = ort.get_available_providers()
    if PROVIDERS[device][0] not in available:
        raise UserError(f"device {device!r} needs {PROVIDERS[device][0]}, which this onnxruntime "
                        f"does not have (available: {', '.join(available)}); "
                        "install onnxruntime-gpu for cuda/tensorrt")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    for key, value in (options or {}).items():
        if "." in key:
            opts.add_session_config_entry(key, str(value))
        elif key == "execution_mode":
            opts.execution_mode = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
                                   "parallel": ort.ExecutionMode.ORT_PARALLEL}[value]
        else:
            setattr(opts, key, value)
    if isinstance(model, (str, os.PathLike)):
        if not Path(model).is_file():
            raise UserError(f"{model}: model file not found")
        model = str(model)
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=PROVIDERS[device])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        name = name or (model if isinstance(model, str) else "model")
        raise UserError(f"{name}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:300]})") from None




def graph_flip_test(session):
    """Whether the model of an ONNX Runtime InferenceSession has the flip test
    in its graph (hm averaged after the sigmoid), from its metadata. Files
    without the key have none."""
    return metadata_flip_test(session.get_modelmeta().custom_metadata_map)


def metadata_flip_test(metadata):
    """The same from a {key: value} dict of ONNX metadata_props."""
    return metadata.get(FLIP_KEY) == "1"


def metadata_random_weights(metadata):
    """Whether a {key: value} dict of ONNX metadata_props says the model has
    random weights (RANDOM_WEIGHTS_KEY); files without the key do not."""
    return metadata.get(RANDOM_WEIGHTS_KEY) == "1"


def metadata_facts(metadata, heads=None, name="model"):
    """The ModelFacts a {key: value} dict of ONNX metadata_props records
    (heads: the graph's outputs, where it says); one line naming `name` if
    they are malformed."""
    try:
        return ModelFacts.from_metadata(metadata, heads)
    except ValueError as e:
        raise UserError(f"{name}: {e}") from None


def run_session(session, batch):
    """Run an ONNX Runtime InferenceSession on one input batch; returns the
    outputs in graph order. In the main thread a run stops at Ctrl-C
    (run_interruptible)."""
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(batch, dtype=np.float32)}
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return session.run(None, feed)
    return run_interruptible(session, feed)


_runner = None


def run_interruptible(session, feed):
    """session.run(None, feed) of an ONNX Runtime session, stopped by Ctrl-C.

    A run holds its calling thread in C++ until the whole batch is done
    (seconds for a large batch on a CPU), and Python raises the
    KeyboardInterrupt only after it. So the run goes to a helper thread while
    the main thread waits, interruptibly; on Ctrl-C the run's terminate flag
    stops ONNX Runtime at its next operator and the KeyboardInterrupt goes on."""
    import onnxruntime as ort
    global _runner
    if _runner is None:
        runner = ThreadPoolExecutor(1, thread_name_prefix="onnxruntime-run")
        # The executor starts its thread on the first submit, then registers it
        # for the interpreter's exit to stop; a Ctrl-C between the two would
        # leave a thread that nothing stops and that the exit waits for forever.
        with sigint_deferred():
            runner.submit(int).result()
        _runner = runner
    options = ort.RunOptions()
    future = _runner.submit(session.run, None, feed, options)
    try:
        return future.result()
    except KeyboardInterrupt:
        options.terminate = True
        wait([future])  # ONNX Runtime fails the run at its next operator
        raise


class OrtSession(Session):
    """An ONNX Runtime InferenceSession behind the Session interface; its
    capabilities come from the graph's input shape, output channels and
    metadata (FLIP_KEY, RANDOM_WEIGHTS_KEY). `inner` is the InferenceSession itself."""

    def __init__(self, inner, name=None):
        self.inner = inner
        self.name = str(name or "model")
        self._input_name = inner.get_inputs()[0].name
        shape = inner.get_inputs()[0].shape
        hw = tuple(shape[2:4])
        heads = heads_from_channels([o.shape[1] for o in inner.get_outputs()])
        self._caps = Capabilities(
            input_size=hw if all(isinstance(d, int) for d in hw) else None,
            static_batch=shape[0] if isinstance(shape[0], int) else None,
            flip_in_graph=graph_flip_test(inner),
            heads=heads,
            random_weights=metadata_random_weights(inner.get_modelmeta().custom_metadata_map),
            facts=metadata_facts(inner.get_modelmeta().custom_metadata_map, heads, self.name))

    @property
    def capabilities(self):
        return self._caps

    def run(self, batch):
        feed = {self._input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        # Signals only ever reach the main thread: elsewhere run plainly.
        if threading.current_thread() is not threading.main_thread():
            return self.inner.run(None, feed)
        return run_interruptible(self.inner, feed)

    def describe(self):
        return {"backend": "onnxruntime", "providers": self.inner.get_providers()}


def open_ort_session(model, device="cpu", threads=0, name=None, **options):
    """An OrtSession on a path or serialized model (make_session's arguments)."""
    if name is None and isinstance(model, (str, os.PathLike)):
        name = str(model)
    return OrtSession(make_session(model, device=device, threads=threads, name=name, **options), name=name)
