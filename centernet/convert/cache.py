"""The export cache: a checkpoint exported to ONNX once, checked against
PyTorch, and reused while the checkpoint's contents are unchanged."""
import hashlib
import logging
import os
import time
from pathlib import Path

from centernet.constants import INPUT_SIZE
from centernet.errors import UserError
from centernet.io.binio import make_dirs, write_atomic

logger = logging.getLogger(__name__)


CHECKPOINT_EXTENSIONS = (".pth", ".pt", ".tar")


CACHE_KEY = "centernet.checkpoint_sha256"


CACHE_INPUT_KEY = "centernet.input"


def file_sha256(path, chunk=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def export_cache_path(checkpoint, dynamic_size, input_size=(INPUT_SIZE, INPUT_SIZE), folder=None):
    """Where the cached export of `checkpoint` lives: next to it (or in
    `folder`), one file per form: <stem>.cache-512x512.onnx, <stem>.cache-dynamic.onnx."""
    checkpoint = Path(checkpoint)
    form = "dynamic" if dynamic_size else f"{input_size[0]}x{input_size[1]}"
    return Path(folder or checkpoint.parent) / f"{checkpoint.stem}.cache-{form}.onnx"


def _cache_metadata(path):
    """The metadata_props of an ONNX file, or None if it cannot be read."""
    import onnx
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # a truncated or foreign file is simply stale
        return None
    return {p.key: p.value for p in proto.metadata_props}


def cached_export(checkpoint, dynamic_size=False, input_size=(INPUT_SIZE, INPUT_SIZE), threads=0,
                  fallback_folder=None):
    """ONNX export of an upstream checkpoint for ONNX Runtime, made once and
    reused while the checkpoint's contents (SHA-256) are unchanged.

    A new export is checked against PyTorch (CenterNet_pth2onnx.py's
    self-check and tolerance) before it is put in place; the checkpoint's
    hash and the input form are stored in the ONNX file's metadata. The
    cache goes next to the checkpoint, or into `fallback_folder` where that
    is not writable. Returns the ONNX path."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: checkpoint not found")
    folder = None
    if not os.access(checkpoint.parent, os.W_OK):
        if fallback_folder is None:
            raise UserError(f"{checkpoint.parent}: not writable, so the exported model cannot be cached "
                            f"next to {checkpoint.name}")
        folder = fallback_folder
        logger.info(f"model: {checkpoint.parent} is not writable; caching the export in {folder}")
    path = export_cache_path(checkpoint, dynamic_size, input_size, folder)
    form = "dynamic" if dynamic_size else f"{input_size[0]}x{input_size[1]}"
    digest = file_sha256(checkpoint)
    if path.is_file():
        meta = _cache_metadata(path)
        if meta and meta.get(CACHE_KEY) == digest and meta.get(CACHE_INPUT_KEY) == form:
            logger.info(f"model: {path} (cached export of {checkpoint.name})")
            return path
        logger.info(f"model: {path} is from another checkpoint or older; exporting again")

    from centernet.model.checkpoint import load_model
    from centernet.convert.export import check_export, export_onnx, require_passed
    t0 = time.perf_counter()
    logger.info(f"model: exporting {checkpoint} to {path} ({'dynamic input size' if dynamic_size else form}; "
        f"once, reused while the checkpoint is unchanged)")
    model = load_model(checkpoint)
    make_dirs(path.parent)
    proto = export_onnx(model, path, input_size=tuple(input_size), dynamic_size=dynamic_size)
    # Until the metadata below is written the file counts as stale, so an
    # interrupted or failed export is redone next time.
    logger.info("model: checking the export against PyTorch (float64) ...")
    checks = check_export(model, proto, input_size=tuple(input_size), batch=1, threads=threads, name=str(path))
    try:
        require_passed(checks, path)
    except UserError:
        path.unlink(missing_ok=True)
        raise
    for key, value in ((CACHE_KEY, digest), (CACHE_INPUT_KEY, form), ("centernet.checkpoint", checkpoint.name)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    write_atomic(path, proto.SerializeToString())
    worst = max(c.rel_diff for c in checks)
    logger.info(f"model: exported and checked against PyTorch float64 (largest difference {worst:.1e} of an "
        f"output's magnitude) in {time.perf_counter() - t0:.1f}s")
    return path


def is_checkpoint(path):
    return Path(path).suffix.lower() in CHECKPOINT_EXTENSIONS
