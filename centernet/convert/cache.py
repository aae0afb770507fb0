"""The export cache: a checkpoint exported to ONNX once, checked against
PyTorch, and reused while the checkpoint's contents are unchanged."""
import logging
import os
import time
from pathlib import Path

from centernet.constants import CHECKPOINT_EXTENSIONS, INPUT_SIZE
from centernet.errors import UserError
from centernet.io.binio import make_dirs
from centernet.convert.provenance import (CHECKPOINT_SHA256_KEY, INPUT_KEY, ExportOptions, export_status,
                                          file_sha256)

logger = logging.getLogger(__name__)




# The cache's record in the ONNX metadata (convert/provenance.py writes and compares all of it).
CACHE_KEY = CHECKPOINT_SHA256_KEY
CACHE_INPUT_KEY = INPUT_KEY
__all__ = ["CACHE_KEY", "CACHE_INPUT_KEY", "cached_export", "export_cache_path", "file_sha256", "is_checkpoint"]


def export_cache_path(checkpoint, dynamic_size, input_size=(INPUT_SIZE, INPUT_SIZE), folder=None):
    """Where the cached export of `checkpoint` lives: next to it (or in
    `folder`), one file per form: <stem>.cache-512x512.onnx, <stem>.cache-dynamic.onnx."""
    checkpoint = Path(checkpoint)
    form = "dynamic" if dynamic_size else f"{input_size[0]}x{input_size[1]}"
    return Path(folder or checkpoint.parent) / f"{checkpoint.stem}.cache-{form}.onnx"


def cached_export(checkpoint, dynamic_size=False, input_size=None, threads=0,
                  fallback_folder=None):
    """ONNX export of an upstream checkpoint for ONNX Runtime, made once and
    reused while the checkpoint's contents (SHA-256) are unchanged.

    A new export is checked against PyTorch (CenterNet_pth2onnx.py's
    self-check and tolerance) before it is put in place; the checkpoint's
    hash and the input form are stored in the ONNX file's metadata. The
    cache goes next to the checkpoint, or into `fallback_folder` where that
    is not writable. input_size: the fixed input (None: the checkpoint's
    own, 512x512 for upstream's files). The export records the test settings
    the checkpoint carries (checkpoint.checkpoint_facts). Returns the ONNX path."""
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
    from centernet.model.checkpoint import checkpoint_facts
    facts = checkpoint_facts(checkpoint)  # the settings it records (the stand-in's), else COCO's
    input_size = tuple(input_size or facts.input_size)
    path = export_cache_path(checkpoint, dynamic_size, input_size, folder)
    options = ExportOptions(input_size=input_size, dynamic_size=dynamic_size, mean=facts.mean, std=facts.std,
                            class_names=facts.class_names)
    digest = file_sha256(checkpoint)
    status = export_status(path, digest, options)
    if status.current:
        logger.info(f"model: {path} (cached export of {checkpoint.name})")
        return path
    if path.exists():
        logger.info(f"model: {status.describe(path, checkpoint, digest)}; exporting again")

    from centernet.model.checkpoint import load_model
    from centernet.convert.export import export_checked
    t0 = time.perf_counter()
    logger.info(f"model: exporting {checkpoint} to {path} ({'dynamic input size' if dynamic_size else options.input_form}; "
        f"once, reused while the checkpoint is unchanged)")
    model = load_model(checkpoint)
    make_dirs(path.parent)
    # The file appears under its name only once checked, with its record.
    done = export_checked(model, path, options, digest, checkpoint.name, threads=threads, batch=1,
                          log_prefix="model: ", log_checks=False)
    worst = max(c.rel_diff for c in done.checks)
    logger.info(f"model: exported and checked against PyTorch float64 (largest difference {worst:.1e} of an "
        f"output's magnitude) in {time.perf_counter() - t0:.1f}s")
    return path


def is_checkpoint(path):
    return Path(path).suffix.lower() in CHECKPOINT_EXTENSIONS
