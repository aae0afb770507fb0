"""Load upstream ctdet checkpoints of any of its networks (and write ones in
the same layout).

Upstream's checkpoints (`ctdet_coco_dla_2x.pth`, `ctdet_coco_resdcn18.pth`,
one trained on one's own data, ...) are {'epoch': int, 'state_dict': {...}}
with keys that may carry DataParallel's `module.` prefix, DLA's unused
ImageNet classifier `base.fc.*`, and BatchNorm `num_batches_tracked` entries
that may be missing. The keys say which network it is and its heads say
how many classes (model/networks.py: detect_network); everything else must
then match that network key for key and shape for shape.

A checkpoint of random weights (the demo's, saved by save_upstream_checkpoint
from random_weights.random_model) also holds RANDOM_WEIGHTS_FIELD: True beside
'epoch' and 'state_dict'; the loaded model carries it as an attribute of the
same name (is_random), so every later stage knows without being told.

    python -m centernet.cli.check_weights ctdet_coco_dla_2x.pth   # check that a file loads
"""
import io
import logging
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from centernet.constants import FACTS_FIELD, RANDOM_WEIGHTS_FIELD
from centernet.core.model_facts import ModelFacts
from centernet.io.binio import write_atomic
from centernet.errors import UserError
from centernet.model.networks import LayoutError, build_network, detect_network

logger = logging.getLogger(__name__)

IGNORED_PREFIXES = ("base.fc.",)


UPSTREAM_LAYOUT = "upstream checkpoints are {'epoch': N, 'state_dict': {name: tensor}}"


def _read(path):
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes), not a checkpoint; an interrupted download?")
    try:
        with warnings.catch_warnings():
            # Any pickle that is not a legacy torch.save file (protocol 2) makes torch
            # warn about its protocol before failing: noise beside our one line.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError,
            OSError, AttributeError, ImportError) as e:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # torch colours parts of its messages
        # weights_only loading refuses pickled classes: a whole model (torch.save(model, ...))
        # or any other object saved instead of a state_dict.
        pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if pickled:
            raise UserError(f"{path}: holds a pickled {pickled.group(1)} object, not a state_dict; "
                            f"{UPSTREAM_LAYOUT} (save one with torch.save({{'state_dict': "
                            f"model.state_dict()}}, path))") from None
        # torch's weights-only refusal opens with advice to load unsafely; the
        # cause is the line after "WeightsUnpickler error:".
        cause = text.split("WeightsUnpickler error:", 1)[-1]
        first = next((ln.strip() for ln in cause.splitlines() if ln.strip()), type(e).__name__)
        exported = _exported_model_kind(path)
        if exported:
            raise UserError(f"{path}: this is {exported}, not a checkpoint; give the .pth checkpoint it was "
                            "exported from") from None
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def _exported_model_kind(path):
    """'an ONNX file' / 'an Ascend offline model (.om)' when `path` is one
    (by its name, or for ONNX by its first byte: a protobuf ModelProto opens
    with field 1, ir_version), else None."""
    suffix = path.suffix.lower()
    if suffix == ".om":
        return "an Ascend offline model (.om)"
    with open(path, "rb") as f:
        first = f.read(1)
    if suffix == ".onnx" or first == b"\x08":
        return "an ONNX file"
    return None


def _clip(keys, n=5):
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def is_random(model):
    """Whether `model` has random weights (random_weights.random_model, or
    loaded from a checkpoint saved from one)."""
    return bool(getattr(model, RANDOM_WEIGHTS_FIELD, False))


def mark_random(model, random=True):
    """Set the random-weights fact of `model` (an attribute); returns it."""
    setattr(model, RANDOM_WEIGHTS_FIELD, bool(random))
    return model


def read_state_dict(path, log=True):
    """(state_dict without the `module.` prefix and the ignored entries, the
    whole checkpoint object) of an upstream-layout checkpoint file; `log`:
    say which entries were ignored."""
    obj = _read(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path}: not a CenterNet checkpoint (no state_dict of tensors inside; {UPSTREAM_LAYOUT})")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    ignored = [k for k in state if k.startswith(IGNORED_PREFIXES)]
    if ignored and log:
        logger.info(f"{path}: ignoring {len(ignored)} backbone classifier entries ({_clip(ignored, 2)}), unused by the detector")
    return {k: v for k, v in state.items() if k not in ignored}, obj


def load_state_dict(model, path, state=None, obj=None, network=None):
    """Load `path` (or its already read `state`, `obj`) into `model` after
    the upstream-layout clean-up above (the ignored entries are logged); the
    model is marked as the checkpoint says (is_random). Every key and shape
    must match; `network` names the model in the error."""
    if state is None:
        state, obj = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_clip(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_clip(unexpected)}")
    if misshaped:
        problems.append(f"wrong shape {len(misshaped)}: {_clip(misshaped, 3)}")
    if problems:
        raise UserError(f"{path}: not a CenterNet checkpoint of any upstream network; as {network or 'dla_34'}: "
                        + "; ".join(problems))
    # num_batches_tracked only matters for training; keep the model's own.
    model.load_state_dict(state, strict=False)
    return mark_random(model, isinstance(obj, dict) and obj.get(RANDOM_WEIGHTS_FIELD) is True)


def _spec_and_facts(path, state, obj):
    """(NetworkSpec, ModelFacts) of a read checkpoint: the network its keys
    hold, with the test settings it records under FACTS_FIELD (class names,
    mean/std, input size: a checkpoint made by this toolkit, e.g. the
    stand-in) or else COCO's, as upstream's files have none."""
    try:
        spec = detect_network(state)
    except LayoutError as e:
        raise UserError(f"{path}: not a CenterNet checkpoint: {e}") from None
    recorded = obj.get(FACTS_FIELD) if isinstance(obj, dict) else None
    if recorded is None:
        return spec, spec.facts()
    try:
        facts = ModelFacts.from_metadata(dict(recorded))
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: its {FACTS_FIELD} entry is malformed ({e})") from None
    if (facts.network, dict(facts.heads), facts.head_conv) != (spec.network, spec.heads, spec.head_conv):
        raise UserError(f"{path}: its {FACTS_FIELD} entry says {facts.describe()}, but its weights are "
                        f"{spec.describe()}")
    return spec, facts


def checkpoint_facts(path):
    """The ModelFacts of the checkpoint at `path` (see _spec_and_facts), without building the network."""
    state, obj = read_state_dict(path, log=False)
    return _spec_and_facts(path, state, obj)[1]


def load_model(path):
    """Build the upstream network an upstream checkpoint holds (found from
    its keys: networks.detect_network), in eval mode, with its weights; the
    model carries its ModelFacts (`facts`: network, heads, head width, and
    the test settings the checkpoint records, else COCO's) and is_random.
    Logs what was found."""
    state, obj = read_state_dict(path)
    spec, facts = _spec_and_facts(path, state, obj)
    logger.info(f"{path}: {spec.describe()}")
    model = build_network(spec.network, spec.heads, spec.head_conv)
    model.facts = facts
    return load_state_dict(model, path, state, obj, network=spec.network).eval()


def save_upstream_checkpoint(model, path, epoch=140, seed=0):
    """Save `model` the way upstream's zoo files are laid out: {'epoch', 'state_dict'},
    `module.`-prefixed keys, for DLA a `base.fc` classifier, no num_batches_tracked.
    For tests and the demo; the fc weights are random like any other. A
    model with random weights (is_random) is saved with RANDOM_WEIGHTS_FIELD:
    True beside 'epoch' and 'state_dict'. Written atomically (binio.write_atomic)."""
    gen = torch.Generator().manual_seed(seed)
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    if hasattr(model, "base"):  # DLA's unused ImageNet classifier, as upstream's files hold it
        state["module.base.fc.weight"] = torch.randn(1000, 512, 1, 1, generator=gen) * 0.01
        state["module.base.fc.bias"] = torch.zeros(1000)
    # Serialised in memory, then written whole under a temp name: a full disk is
    # a one-line WriteError naming `path`, and no half-written checkpoint is left.
    checkpoint = {"epoch": epoch, "state_dict": state}
    if is_random(model):
        checkpoint[RANDOM_WEIGHTS_FIELD] = True
    write_checkpoint(path, checkpoint)


def write_checkpoint(path, checkpoint):
    """torch.save of `checkpoint` serialised in memory, then written whole under a temp name (binio.write_atomic)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    write_atomic(path, buffer.getbuffer())


def mark_checkpoint_random(path):
    """Add RANDOM_WEIGHTS_FIELD: True to a checkpoint file of random weights
    saved before checkpoints carried it (the weights stay as they are).
    Returns whether the file was changed."""
    obj = _read(path)
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise UserError(f"{path}: not a CenterNet checkpoint ({UPSTREAM_LAYOUT})")
    if obj.get(RANDOM_WEIGHTS_FIELD) is True:
        return False
    write_checkpoint(path, {**obj, RANDOM_WEIGHTS_FIELD: True})
    return True
