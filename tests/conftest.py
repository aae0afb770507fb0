"""Shared test fixtures: the repository on sys.path, a small synthetic COCO
dataset, and a runner for the top-level scripts."""
import contextlib
import logging
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# How long a test waits for a process or an event before calling it a hang.
# It only bounds a hang: a test never relies on anything taking less than
# this, so a slow or loaded machine passes as a fast one does.
HANG = 600

# Small images of varied shape (width, height) keep the suite fast.
SMALL_SIZES = [(160, 120), (96, 144), (128, 128), (200, 90), (64, 64), (150, 100)]


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory):
    """A 6-image synthetic dataset in the recipe layout (read-only for tests:
    copy before modifying). Returns make_synthetic_coco's dict plus the
    loaded annotations under "dataset"."""
    from centernet.io.synthetic import make_synthetic_coco
    info = make_synthetic_coco(tmp_path_factory.mktemp("synth") / "data", num_images=6, seed=0,
                               image_sizes=SMALL_SIZES, max_objects=4)
    info["dataset"] = json.loads(Path(info["annotation_file"]).read_text())
    return info


@pytest.fixture(scope="session")
def synthetic_person_coco(tmp_path_factory):
    """A 6-image synthetic person-keypoints dataset (make_synthetic_person_coco)
    in the recipe layout, read-only for tests. Returns its dict plus the
    loaded annotations under "dataset"."""
    from centernet.io.synthetic import make_synthetic_person_coco
    info = make_synthetic_person_coco(tmp_path_factory.mktemp("persons") / "data", num_images=6, seed=0,
                                      image_sizes=SMALL_SIZES)
    info["dataset"] = json.loads(Path(info["annotation_file"]).read_text())
    return info


def _run_script(script, *args, cwd, env=None):
    """Run a top-level script in a fresh interpreter; returns CompletedProcess."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def run_script():
    return _run_script


def start_command(command, cwd, env=None):
    """Start a command as a terminal would run it: its own process group (for
    ctrl_c) and SIGINT at its default even where the test run itself ignores
    it (a background job). Returns the Popen."""
    return subprocess.Popen([str(c) for c in command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def start_script(script, *args, cwd, env=None):
    """start_command for a top-level Python script."""
    return start_command([sys.executable, ROOT / script, *args], cwd, env)


def wait_for(condition, what, timeout=HANG):
    """Poll `condition()` until it is true; fail naming `what` if it is
    still false after `timeout` seconds (a hang, not a slow machine)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.01)


def wait_until_loaded(proc, library, timeout=HANG):
    """Wait until `proc` has mapped a shared library whose path contains
    `library` (or has exited). For a script that imports it inside its main()
    (OpenCV: "/cv2/"), proof that main() runs, with its Ctrl-C handling: a
    Ctrl-C in the interpreter's own start-up, before the script's first
    lines, cannot be handled by the script."""
    def loaded():
        try:
            return proc.poll() is not None or library in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:  # exited meanwhile
            return True
    wait_for(loaded, f"{library} loaded", timeout)


def kill_group(proc):
    """SIGKILL a start_command process group whose leader still runs (after a
    failed assertion or a hang), so that a test leaves no process behind. (Once
    the leader is reaped, its id may be another process's: left alone.)"""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def ctrl_c(proc):
    """SIGINT to the process's whole group, worker processes included, as a
    terminal sends it on Ctrl-C."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:  # already gone
        pass


def assert_one_line_error(proc, *fragments):
    """A user error: exit status 2, one 'error:' line on stderr naming the
    given fragments, and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


# A sitecustomize.py that makes a folder behave like a small disk, in every
# Python process started with it on PYTHONPATH (worker processes included):
# a write through open() of a file under FOLDER fails with ENOSPC, as a full
# disk's would, when the folder's files would then hold more than BYTES.
FAKE_DISK_SITECUSTOMIZE = """
import builtins, errno, os

_spec = os.environ.get("FAKE_DISK")  # FOLDER:BYTES
if _spec:
    _folder, _limit = _spec.rsplit(":", 1)
    _folder, _limit = os.path.realpath(_folder), int(_limit)
    _open = builtins.open

    def _used():
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(_folder) for f in fs)

    class _SmallDiskFile:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            if _used() + memoryview(data).nbytes > _limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

    def open(file, mode="r", *args, **kwargs):
        f = _open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax") \\
                and os.path.realpath(file).startswith(_folder + os.sep):
            return _SmallDiskFile(f)
        return f

    builtins.open = open
"""

# A stand-in `torch` package that cannot be imported: what a machine without
# torch looks like to the code under test.
NO_TORCH_INIT = 'raise ImportError("torch is not installed (blocked by the test)")\n'


def _env_with_path(folder):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


@pytest.fixture
def small_disk_env(tmp_path_factory):
    """small_disk_env(folder, nbytes) -> environment for run_script in which
    `folder` is a disk that is full once its files hold `nbytes`."""
    site = tmp_path_factory.mktemp("fake_disk")
    (site / "sitecustomize.py").write_text(FAKE_DISK_SITECUSTOMIZE)

    def make(folder, nbytes):
        return dict(_env_with_path(site), FAKE_DISK=f"{folder}:{int(nbytes)}")
    return make


@pytest.fixture(scope="session")
def no_torch_env(tmp_path_factory):
    """Environment for run_script in which `import torch` fails."""
    site = tmp_path_factory.mktemp("no_torch")
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text(NO_TORCH_INIT)
    return _env_with_path(site)


@pytest.fixture(scope="session")
def ctdet_onnx(random_ctdet, tmp_path_factory):
    """`random_ctdet` exported with the default target (512x512, DeformConv)."""
    from centernet.convert.export import export_onnx
    path = tmp_path_factory.mktemp("onnx") / "CenterNet.onnx"
    export_onnx(random_ctdet, path)
    return path


PYTHON = sys.executable

# ONNX Runtime and PyTorch, both in float32, each differ from the exact
# (float64) network by float32 rounding: about 1e-4 of an output's largest
# magnitude at the trained model's scale (hm logits to +-10, wh tens of
# pixels). Two float32 runs of the same network agree within 1e-3 of it.
PARITY_REL = 1e-3


def assert_parity(got, ref, rel=PARITY_REL, what=""):
    """got matches ref within `rel` of ref's largest magnitude."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    diff, scale = float(np.abs(got - ref).max()), float(np.abs(ref).max())
    assert diff <= rel * scale, f"{what}: max abs diff {diff:.3g} > {rel:g} x max |ref| {scale:.3g}"


def photo_inputs(num_images, input_size, seed=0):
    """Network input from synthetic photos (the test transform applied), not
    white noise: the fixture model is calibrated on photos, as a trained one is."""
    from centernet.io.synthetic import synthetic_input_batch
    return synthetic_input_batch(num_images, tuple(input_size), seed=seed)


@pytest.fixture(scope="session")
def random_ctdet():
    """Random ctdet DLA-34 weights calibrated to behave like the trained network
    (centernet/model/random_weights.py; its output ranges: tests/model/test_random_weights.py)."""
    from centernet.model.random_weights import random_model
    return random_model(seed=0)


@pytest.fixture(scope="session")
def upstream_checkpoint(random_ctdet, tmp_path_factory):
    """`random_ctdet` saved in the zoo file's layout: {'epoch', 'state_dict'},
    module.-prefixed keys, base.fc present, num_batches_tracked missing."""
    from centernet.model.checkpoint import save_upstream_checkpoint
    path = tmp_path_factory.mktemp("weights") / "ctdet_coco_dla_2x.pth"
    save_upstream_checkpoint(random_ctdet, path)
    return path


@pytest.fixture(scope="session")
def ordinary_checkpoint(upstream_checkpoint, tmp_path_factory):
    """`upstream_checkpoint` without the random-weights mark: a checkpoint as
    upstream's trained one is to the code (the fixtures' own weights are
    random, and marked so, as the demo's are)."""
    import torch
    from centernet.constants import RANDOM_WEIGHTS_FIELD
    raw = torch.load(upstream_checkpoint, weights_only=True)
    assert raw.pop(RANDOM_WEIGHTS_FIELD) is True
    path = tmp_path_factory.mktemp("weights") / "ctdet_ordinary.pth"
    torch.save(raw, path)
    return path


def unmarked_onnx(src, dst):
    """A copy of an exported ONNX file whose metadata says its weights are not
    random (RANDOM_WEIGHTS_KEY "0"), as an export of a trained checkpoint's does."""
    import onnx
    from centernet.constants import RANDOM_WEIGHTS_KEY
    proto = onnx.load(str(src))
    entries = [p for p in proto.metadata_props if p.key == RANDOM_WEIGHTS_KEY]
    assert entries, f"{src} has no {RANDOM_WEIGHTS_KEY}"
    for entry in entries:
        entry.value = "0"
    onnx.save(proto, str(dst))
    return Path(dst)


@pytest.fixture(scope="session")
def ordinary_onnx(ctdet_onnx, tmp_path_factory):
    """`ctdet_onnx` with the metadata of ordinary (not random) weights."""
    return unmarked_onnx(ctdet_onnx, tmp_path_factory.mktemp("onnx") / "CenterNet_ordinary.onnx")


@pytest.fixture(scope="session")
def ctdet_onnx_dynamic(random_ctdet, tmp_path_factory):
    """`random_ctdet` with a dynamic input height and width (keep resolution,
    scales); traced at a small size, which keeps the export fast."""
    from centernet.convert.export import export_onnx
    path = tmp_path_factory.mktemp("onnx") / "CenterNet_dynamic.onnx"
    export_onnx(random_ctdet, path, input_size=(64, 64), dynamic_size=True)
    return path


@pytest.fixture(scope="session")
def ctdet_onnx_flip_dynamic(random_ctdet, tmp_path_factory):
    """As ctdet_onnx_dynamic, with the flip test in the graph (export --flip)."""
    from centernet.convert.export import export_onnx
    path = tmp_path_factory.mktemp("onnx") / "CenterNet_flip_dynamic.onnx"
    export_onnx(random_ctdet, path, input_size=(64, 64), dynamic_size=True, flip=True)
    return path


# Tiny images whose keep-resolution inputs come in pairs of equal size
# ((h|31)+1, (w|31)+1): 64x128 twice, 64x96 twice, 96x96 once.
KEEP_RES_SIZES = [(100, 60), (90, 50), (64, 64), (96, 40), (70, 60)]


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """A 5-image synthetic dataset of KEEP_RES_SIZES (read-only for tests)."""
    from centernet.io.synthetic import make_synthetic_coco
    info = make_synthetic_coco(tmp_path_factory.mktemp("tiny") / "data", num_images=5, seed=1,
                               image_sizes=KEEP_RES_SIZES, max_objects=3)
    info["dataset"] = json.loads(Path(info["annotation_file"]).read_text())
    return info


@contextlib.contextmanager
def captured_logs(lines, name="centernet"):
    """Collect the messages the package logs (INFO and up) into `lines`."""
    class _Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())
    logger, handler = logging.getLogger(name), _Collect()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def hand_flip_test(model, x):
    """The flip test with the PyTorch model, written out (float64 averages):
    the image and its mirror run separately; hm averaged after the sigmoid,
    wh averaged, reg of the unflipped pass. Also returns, per output, the
    magnitude that float32 parity is relative to (flip_parity_scales)."""
    import torch
    with torch.no_grad():
        hm0, wh0, reg0 = (t.double() for t in model(torch.from_numpy(x)))
        hm1, wh1, _ = (t.double() for t in model(torch.from_numpy(np.ascontiguousarray(x[..., ::-1]))))
    maps = [((hm0.sigmoid() + hm1.sigmoid().flip(3)) / 2).numpy(), ((wh0 + wh1.flip(3)) / 2).numpy(), reg0.numpy()]
    return maps, flip_parity_scales(hm0, hm1, wh0, wh1, reg0)


def flip_parity_scales(hm0, hm1, wh0, wh1, reg0):
    """float32 parity (conftest.PARITY_REL) holds relative to each raw map's
    largest magnitude. The sigmoid's slope is at most 1/4, so the averaged
    heatmap is within PARITY_REL x max|logit| / 4, and the averaged wh within
    PARITY_REL x max|wh| of either pass."""
    mag = lambda *ts: max(float(t.abs().max()) for t in ts)  # noqa: E731
    return [mag(hm0, hm1) / 4, mag(wh0, wh1), mag(reg0)]


def assert_close_to_reference(got, ref, scales):
    for a, b, scale in zip(got, ref, scales):
        assert a.shape == b.shape
        diff = float(np.abs(a - b).max())
        assert diff <= PARITY_REL * scale, f"max abs diff {diff:.3g} > {PARITY_REL:g} x {scale:.3g}"


def run_infer(*args, env=None):
    return subprocess.run(["bash", str(ROOT / "run_infer.sh"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=env)


_NETWORKS = {}


def calibrated_network(network, num_classes=3, seed=0):
    """random_model of upstream's `network` with `num_classes` classes,
    calibrated like a trained one (small calibration photos: 128x128,
    Hourglass-104's least), made once per test session and shared."""
    from centernet.model.random_weights import random_model
    key = (network, num_classes, seed)
    if key not in _NETWORKS:
        _NETWORKS[key] = random_model(seed, network, {"hm": num_classes, "wh": 2, "reg": 2},
                                      calibration_size=(128, 128))
    return _NETWORKS[key]


def stand_in_om_session(onnx_path, input_shape, output_shapes, flip_in_graph=False, threads=2):
    """An AisBenchSession on `onnx_path` as an .om of it would be: ais_bench's
    InferSession interface (input_shape, output_shapes as ais_bench reports
    them) stood in by ONNX Runtime on the same file, the stand-in module
    present only while the session is opened."""
    import types
    from centernet.runtime.ort_session import make_session

    class InferSession:  # ais_bench.infer.interface.InferSession's interface
        def __init__(self, device_id, model_path):
            self.session = make_session(str(model_path).replace(".om", ".onnx"), threads=threads)

        def get_inputs(self):
            return [types.SimpleNamespace(shape=list(input_shape))]

        def get_outputs(self):
            return [types.SimpleNamespace(shape=list(shape)) for shape in output_shapes]

        def infer(self, feeds, mode="static"):
            assert mode == "static"
            return self.session.run(None, {self.session.get_inputs()[0].name: feeds[0]})

    fake = types.ModuleType("ais_bench.infer.interface")
    fake.InferSession = InferSession
    modules = {"ais_bench": types.ModuleType("ais_bench"), "ais_bench.infer": types.ModuleType("ais_bench.infer"),
               "ais_bench.infer.interface": fake}
    from centernet.runtime.ais_bench_session import AisBenchSession
    old = {k: sys.modules.get(k) for k in modules}
    sys.modules.update(modules)
    try:
        return AisBenchSession(str(onnx_path).replace(".onnx", ".om"), flip_in_graph=flip_in_graph)
    finally:
        for k, v in old.items():
            if v is None:
                sys.modules.pop(k)
            else:
                sys.modules[k] = v


POSE = {"hm": 1, "wh": 2, "hps": 34, "reg": 2, "hm_hp": 17, "hp_offset": 2}  # upstream's multi_pose heads


def calibrated_pose_network(network="resdcn_18", seed=0):
    """random_model of upstream's multi_pose `network` (COCO's 17 keypoints),
    calibrated like a trained one, made once per test session and shared."""
    from centernet.model.random_weights import random_model
    key = (network, "multi_pose", seed)
    if key not in _NETWORKS:
        _NETWORKS[key] = random_model(seed, network, POSE, calibration_size=(128, 128))
    return _NETWORKS[key]


SMALL_MODEL_INPUT = (128, 128)  # three_class_models' fixed input: 32x32 output maps
# three_category_coco's categories, in the file out of id order on purpose: class j is the j-th smallest id.
CATEGORIES = [{"id": 12, "name": "kayak"}, {"id": 3, "name": "heron"}, {"id": 7, "name": "buoy"}]
CLASS_IDS = [3, 7, 12]
MODEL_NAMES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="session")
def three_class_models(tmp_path_factory):
    """A 3-class ResNet-18 exported at 128x128 twice: without class names
    and with MODEL_NAMES recorded in its metadata."""
    from centernet.convert.export import export_onnx
    from centernet.model.networks import model_facts
    from centernet.model.random_weights import random_model
    model = random_model(network="res_18", heads={"hm": 3, "wh": 2, "reg": 2}, calibration_size=SMALL_MODEL_INPUT,
                         calibration_images=4)
    folder = tmp_path_factory.mktemp("three_class")
    plain, named = folder / "three.onnx", folder / "three_named.onnx"
    export_onnx(model, plain, input_size=SMALL_MODEL_INPUT)
    export_onnx(model, named, input_size=SMALL_MODEL_INPUT,
                facts=model_facts(model).with_settings(class_names=MODEL_NAMES, input_size=SMALL_MODEL_INPUT))
    return {"plain": plain, "named": named}


@pytest.fixture(scope="session")
def three_category_coco(tmp_path_factory):
    """4 small synthetic images annotated with 3 categories, ids 3, 7, 12."""
    from centernet.io.synthetic import make_synthetic_coco
    info = make_synthetic_coco(tmp_path_factory.mktemp("three_cat") / "data", num_images=4, seed=3,
                               image_sizes=[(160, 120), (96, 144)], max_objects=3)
    data = json.loads(Path(info["annotation_file"]).read_text())
    for n, ann in enumerate(data["annotations"]):
        ann["category_id"] = CLASS_IDS[n % 3]
    data["categories"] = CATEGORIES
    ann_file = Path(info["root"]) / "three.json"
    ann_file.write_text(json.dumps(data))
    return {"annotation_file": ann_file, "images_dir": info["images_dir"], "dataset": data}
