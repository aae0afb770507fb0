"""meta.json, preprocessing's record of each image's test transform, read
and written in one place: per image its input size (H, W), centre and scale;
for the folder the mode (keep resolution, flip test, input size)."""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from centernet.errors import UserError
from centernet.io.binio import write_atomic

META_NAME = "meta.json"
REBUILD = "CenterNet_preprocess.py rebuilds it if you delete it"


@dataclass(frozen=True)
class MetaEntry:
    """One image's test transform: its network input (H, W), centre and
    scale (a number in fixed mode, (sx, sy) in keep-resolution mode)."""
    input_size: tuple
    center: tuple
    scale: object


def load_meta(path, missing_ok=False):
    """A meta.json written by preprocessing, as a dict; with missing_ok, an
    empty one if the file does not exist yet."""
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return {"images": {}}
        raise UserError(f"{path}: meta file not found (written by CenterNet_preprocess.py)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not valid JSON ({REBUILD})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("images"), dict):
        raise UserError(f"{path}: not a preprocessing meta file, no 'images' object ({REBUILD})")
    return meta


def save_meta(path, meta):
    write_atomic(path, json.dumps(meta, indent=1, sort_keys=True).encode("utf-8"))


def meta_entries(meta, source="meta.json"):
    """{image file name: MetaEntry} of a meta dict, in name order; an entry
    without a valid input size, centre or scale is a one-line error."""
    out = {}
    for name, entry in sorted(meta.get("images", {}).items()):
        try:
            in_h, in_w = (int(v) for v in entry["input_size"])
            scale = entry["scale"]
            scale = float(scale) if np.ndim(scale) == 0 else tuple(map(float, scale))
            center = tuple(map(float, entry["center"]))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{source}: entry for {name} lacks a valid center, scale or input_size") from None
        out[name] = MetaEntry((in_h, in_w), center, scale)
    return out


def input_sizes(meta, source="meta.json"):
    """{file stem: (H, W)} of every image a meta dict lists."""
    return {Path(name).stem: e.input_size for name, e in meta_entries(meta, source).items()}
