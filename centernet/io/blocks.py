"""Finished work on disk, so that a long run survives Ctrl-C or a crash: the
images of a run are split into blocks (in file name order), each finished
block is written to OUTPUT.parts/block-NNNNNN.json, and a re-run with the
same model and settings skips those. The streaming evaluation and the Ray
path keep their blocks here alike.
"""
import json
import logging
import shutil
from pathlib import Path

from centernet.io.binio import write_atomic

logger = logging.getLogger(__name__)

BLOCK_SIZE = 256  # images per resumable block (one part file each)


class BlockStore:
    """The finished blocks of one output: OUTPUT.parts/block-NNNNNN.json, each
    with its images (names and ids), error lines and entries, and run.json
    with what the blocks depend on (model, task, settings). Blocks from
    another model or other settings are discarded, not reused."""

    def __init__(self, output, key):
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
                logger.warning(f"{self.folder}: {len(stale)} finished block(s) are from another model or other "
                               "settings; starting over")
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
