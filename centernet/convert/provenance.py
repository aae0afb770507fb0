"""What an exported ONNX file was made from, recorded in its metadata, and
whether an existing file is still current.

An export records (metadata_props) the SHA-256 of the checkpoint's bytes,
its export options (target, DCN form, input size or dynamic, flip test) and
whether its self-check ran. A file counts as current for a checkpoint and
options only when all of them match, and, for a run that checks, when the
file was checked too; a file's date says nothing (a restored download keeps
an old one). CenterNet_pth2onnx.py --if-changed and the demo's export cache
both decide here; convert/export.py's export_checked writes the record.

Imports neither torch nor the exporter, so a file found current is reused
without loading them."""
import hashlib
from dataclasses import dataclass
from pathlib import Path

from centernet.constants import CHECKPOINT_EXTENSIONS, COCO_MEAN, COCO_STD, DCN_FORMS, FLIP_KEY, INPUT_SIZE, TARGETS
from centernet.core.model_facts import (CLASS_NAMES_KEY, INPUT_SIZE_KEY, MEAN_KEY, STD_KEY, ModelFacts, names_text,
                                        numbers_text)
from centernet.errors import UserError

CHECKPOINT_SHA256_KEY = "centernet.checkpoint_sha256"
CHECKPOINT_NAME_KEY = "centernet.checkpoint"
TARGET_KEY = "centernet.target"
DCN_KEY = "centernet.dcn"
INPUT_KEY = "centernet.input"      # "HxW", or "dynamic" (any size; the trace size does not matter)
CHECKED_KEY = "centernet.checked"  # "yes", or "no (--no-check)"
CHECKED = "yes"
NOT_CHECKED = "no (--no-check)"


def file_sha256(path, chunk=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def short(digest):
    """The first 8 hex digits of a SHA-256, as the messages show it."""
    return f"{digest[:8]}…"


@dataclass(frozen=True)
class ExportOptions:
    """The options that decide what an export holds: the graph's form, and
    the test settings it records for later stages (mean and std for the B,
    G, R channels, the class names or None, and input_size: the fixed input,
    or for a dynamic-size export the size a fixed test mode runs it at)."""
    target: str = "onnxruntime"
    dcn: str = "deformconv"
    input_size: tuple = (INPUT_SIZE, INPUT_SIZE)
    dynamic_size: bool = False
    flip: bool = False
    mean: tuple = COCO_MEAN
    std: tuple = COCO_STD
    class_names: tuple = None

    def __post_init__(self):
        if self.target not in TARGETS:
            raise UserError(f"unknown target {self.target!r}; choose from {', '.join(TARGETS)}")
        if self.dcn not in DCN_FORMS:
            raise UserError(f"unknown DCN form {self.dcn!r}; choose from {', '.join(DCN_FORMS)}")
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))

    @property
    def input_form(self):
        return "dynamic" if self.dynamic_size else f"{self.input_size[0]}x{self.input_size[1]}"

    def metadata(self):
        """The options as metadata_props entries (FLIP_KEY is the one
        export_onnx writes for readers of the graph)."""
        entries = {TARGET_KEY: self.target, DCN_KEY: self.dcn, INPUT_KEY: self.input_form,
                   FLIP_KEY: "1" if self.flip else "0", MEAN_KEY: numbers_text(self.mean),
                   STD_KEY: numbers_text(self.std), CLASS_NAMES_KEY: names_text(self.class_names)}
        if self.dynamic_size:  # the size a fixed mode runs at; a fixed export's input says it already
            entries[INPUT_SIZE_KEY] = f"{self.input_size[0]}x{self.input_size[1]}"
        return entries


# How each recorded option is named in a message, and its values spelled out.
_OPTION_WORDS = {TARGET_KEY: ("target", str), DCN_KEY: ("dcn", str), INPUT_KEY: ("input", str),
                 FLIP_KEY: ("flip test", lambda v: {"1": "yes", "0": "no"}.get(v, str(v))),
                 INPUT_SIZE_KEY: ("input size", str), MEAN_KEY: ("mean", str), STD_KEY: ("std", str),
                 CLASS_NAMES_KEY: ("class names", lambda v: "none" if v is None else v)}


def provenance_metadata(checkpoint_sha256, checkpoint_name, options, checked):
    """Every metadata_props entry an export records about itself (no entry
    for what is None)."""
    entries = {CHECKPOINT_SHA256_KEY: checkpoint_sha256, CHECKPOINT_NAME_KEY: str(checkpoint_name),
               **options.metadata(), CHECKED_KEY: CHECKED if checked else NOT_CHECKED}
    return {k: v for k, v in entries.items() if v is not None}


def read_metadata(path):
    """The metadata_props of an ONNX file, or None if it cannot be read."""
    import onnx
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # a truncated or foreign file is simply not current
        return None
    return {p.key: p.value for p in proto.metadata_props}


def read_facts(path):
    """The ModelFacts an ONNX file records; a one-line UserError naming
    `path` when it is missing, not readable as ONNX, or its record malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    meta = read_metadata(path)
    if meta is None:
        raise UserError(f"{path}: not a readable ONNX file")
    try:
        return ModelFacts.from_metadata(meta)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def model_file_facts(path):
    """The ModelFacts of a model file: an ONNX file's record (read_facts), or
    for a checkpoint (.pth, .pt, .tar) what it records or holds
    (checkpoint.checkpoint_facts; needs torch)."""
    if Path(path).suffix.lower() in CHECKPOINT_EXTENSIONS:
        from centernet.model.checkpoint import checkpoint_facts
        return checkpoint_facts(path)
    return read_facts(path)


def model_task(path):
    """The task ("ctdet" or "multi_pose") a model file records or holds, for
    choosing defaults (the annotation file) before the model is opened;
    "ctdet" where the file does not say (an .om) or cannot be read (opening
    it will say why)."""
    try:
        return model_file_facts(path).task
    except UserError:
        return "ctdet"


@dataclass(frozen=True)
class ExportStatus:
    """Whether an existing ONNX file is current: `reason` says why not, as a
    phrase following the file's name; `checked`: its self-check ran."""
    reason: str = None
    checked: bool = False

    @property
    def current(self):
        return self.reason is None

    def describe(self, path, checkpoint, checkpoint_sha256):
        """The one line a script prints about `path`."""
        if not self.current:
            return f"{path} {self.reason}"
        return (f"{path} is up to date (exported from {checkpoint}, sha256 {short(checkpoint_sha256)}, "
                f"same options, {'checked' if self.checked else 'not checked (--no-check)'})")


def export_status(path, checkpoint_sha256, options, need_checked=True):
    """Whether the ONNX file at `path` was exported from a checkpoint with
    this SHA-256 and these options (and checked against PyTorch, with
    need_checked): an ExportStatus."""
    path = Path(path)
    if not path.is_file():
        return ExportStatus("does not exist yet")
    meta = read_metadata(path)
    if meta is None:
        return ExportStatus("cannot be read as ONNX (incomplete, or another kind of file)")
    recorded = meta.get(CHECKPOINT_SHA256_KEY)
    if not recorded:
        return ExportStatus("has no record of the checkpoint it was exported from (an older export, or made "
                            "by other means)")
    if recorded != checkpoint_sha256:
        return ExportStatus(f"was exported from another checkpoint (sha256 {short(recorded)}, this one's is "
                            f"{short(checkpoint_sha256)})")
    differ = []
    wanted = options.metadata()
    if meta.get(INPUT_KEY) != wanted[INPUT_KEY]:
        wanted.pop(INPUT_SIZE_KEY, None)  # saying the input differs says it all
    for key, want in wanted.items():
        have = meta.get(key)
        if have != want:
            name, spell = _OPTION_WORDS[key]
            differ.append(f"{name} {spell(have) if have is not None or want is None else 'not recorded'}, "
                          f"not {spell(want)}")
    if differ:
        return ExportStatus(f"was exported with other options ({'; '.join(differ)})")
    checked = meta.get(CHECKED_KEY) == CHECKED
    if need_checked and not checked:
        return ExportStatus(f"was not checked against PyTorch ({meta.get(CHECKED_KEY) or 'not recorded'})")
    return ExportStatus(None, checked)
