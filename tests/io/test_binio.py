"""centernet.io.binio: atomic writes, and one line naming the file for an output
that cannot be written (full disk, no permission, no such folder)."""
import errno
import os

import numpy as np
import pytest

from centernet.io.binio import make_dirs, read_bin, write_atomic, write_bin
from centernet.errors import WriteError, write_error


def test_write_bin_round_trip_leaves_no_temp_file(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_bin(tmp_path / "a.bin", a)
    np.testing.assert_array_equal(read_bin(tmp_path / "a.bin", (2, 3, 4)), a)
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


@pytest.mark.slow
def test_full_disk_is_one_line_naming_the_file(tmp_path):
    # A real ENOSPC from the kernel: the temp name write_atomic will use is
    # a link to /dev/full, which fails every write with "No space left on device".
    target = tmp_path / "x.bin"
    target.write_bytes(b"previous complete file")
    (tmp_path / f".x.bin.{os.getpid()}.tmp").symlink_to("/dev/full")
    with pytest.raises(WriteError) as e:
        write_atomic(target, b"\0" * 100000)
    assert str(e.value) == f"{target}: cannot write (No space left on device); free some space or write elsewhere"
    assert target.read_bytes() == b"previous complete file"  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]  # and no temp file is left


def test_missing_folder_and_folder_in_the_way(tmp_path):
    with pytest.raises(WriteError, match=r"cannot write, the folder .*/nowhere does not exist"):
        write_atomic(tmp_path / "nowhere" / "x.json", b"{}")
    (tmp_path / "a-dir").mkdir()
    with pytest.raises(WriteError, match=r"a-dir: cannot write \(Is a directory\)"):
        write_atomic(tmp_path / "a-dir", b"{}")


def test_make_dirs(tmp_path):
    assert make_dirs(tmp_path / "a" / "b").is_dir()
    assert make_dirs(tmp_path / "a" / "b").is_dir()  # existing is fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match="file: exists but is not a folder"):
        make_dirs(tmp_path / "file")
    with pytest.raises(WriteError, match="file/sub: cannot create this folder, part of its path is a file"):
        make_dirs(tmp_path / "file" / "sub")


@pytest.mark.parametrize("code,hint", [
    (errno.ENOSPC, "free some space or write elsewhere"),
    (errno.EDQUOT, "free some space or write elsewhere"),
    (errno.EROFS, "choose a folder you can write to"),
    (errno.EACCES, "choose a folder you can write to"),
])
def test_write_error_says_why_and_what_to_do(code, hint):
    e = write_error("out/x.bin", OSError(code, os.strerror(code)))
    assert str(e) == f"out/x.bin: cannot write ({os.strerror(code)}); {hint}"
    assert "\n" not in str(e)
