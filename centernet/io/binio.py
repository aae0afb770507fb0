"""Raw float32 .bin tensors in the ais_bench layout.

Input files are `<stem>.bin`; output i of input `<stem>.bin` is
`OUT/NAME/<stem>_<i>.bin` (0 hm, 1 wh, 2 reg). Every write goes to a temporary
name in the same folder and is renamed when complete, so an interrupted run
never leaves a half file under the final name.
"""
import json
import os
from pathlib import Path

import numpy as np

from centernet.errors import UserError, WriteError, write_error

OUTPUT_NAMES = ("hm", "wh", "reg")  # the order of output1..3 / <stem>_0..2.bin


def write_atomic(path, data):
    """Write bytes (or any buffer) to `path` via a temp file + rename (atomic on POSIX).
    Any failure (disk full, quota, read-only, no permission, no such folder)
    is a WriteError naming `path`; the temp file is removed."""
    write_atomic_chunks(path, (data,))


def write_atomic_chunks(path, chunks):
    """write_atomic for an iterable of bytes chunks: a large file streamed
    out without holding it whole in memory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except FileNotFoundError as e:
        if not path.parent.is_dir():
            raise WriteError(f"{path}: cannot write, the folder {path.parent} does not exist") from None
        raise write_error(path, e) from None
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def make_dirs(folder):
    """Create an output folder and its missing parents; a WriteError naming
    it if that is impossible (a file in the way, no permission, a full or
    read-only disk). Returns the folder as a Path."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WriteError(f"{folder}: exists but is not a folder") from None
    except NotADirectoryError:
        raise WriteError(f"{folder}: cannot create this folder, part of its path is a file") from None
    except OSError as e:
        raise write_error(folder, e) from None
    return folder


def check_writable(folder):
    """Make `folder` and write (then remove) a small file in it: a WriteError
    naming it now, before hours of work, rather than at the first output.
    Returns the folder as a Path."""
    import tempfile
    folder = make_dirs(folder)
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise write_error(folder, e) from None
    return folder


def write_bin(path, array):
    """Save an array as raw float32, C order, atomically."""
    # The array's own buffer is written: no copy for float32 C-order input.
    write_atomic(path, np.ascontiguousarray(array, dtype=np.float32).data)


def read_bin(path, shape):
    """Read a raw float32 file that must hold exactly prod(shape) values."""
    path = Path(path)
    expected = int(np.prod(shape)) * 4
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    if size != expected:
        raise UserError(f"{path}: {size} bytes, expected {expected} "
                        f"(float32 {'x'.join(map(str, shape))}); truncated or from another model/size?")
    return np.fromfile(path, dtype=np.float32).reshape(shape)


def input_bins(folder):
    """The `*.bin` files of a folder, in name order (as ais_bench reads them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: input folder not found")
    return sorted(p for p in folder.glob("*.bin") if p.is_file())


def output_bin_path(out_dir, stem, index):
    """ais_bench's name for output `index` of input `<stem>.bin`."""
    return Path(out_dir) / f"{stem}_{index}.bin"


def load_json(path, what):
    """Parsed JSON of `path`; a missing, unreadable or malformed file is one
    UserError naming it (`what` says what the file was meant to be)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
