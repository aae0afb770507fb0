"""Images, videos and detections.json: listing inputs (local folders or
object-store URIs), writing annotated pictures and videos, and the demo's
detections file (streamed, written atomically)."""
import json
import os
from pathlib import Path

import cv2

from centernet.constants import DEMO_IMAGE_EXTENSIONS, RANDOM_WEIGHTS_FIELD
from centernet.errors import UserError
from centernet.io.binio import write_atomic, write_atomic_chunks


VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


# Codecs tried in order for annotated videos: opencv-python-headless writes
# mp4v into .mp4; MJPG into .avi is the fallback where a build lacks it.
VIDEO_CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"))


DEFAULT_FPS = 25.0  # when a video does not state its frame rate


def load_names(path):
    """Class names from a text file: one per line in the model's class order;
    blank lines and lines starting with # are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: names file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the names file ({getattr(e, 'strerror', None) or e})") from None
    names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise UserError(f"{path}: no class names (one name per line)")
    return names


def is_video(path):
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def expand_inputs(paths, limit=None):
    """Each PATH as a list of files: a folder gives its images in name order
    (the first `limit`), a file itself. Returns (files, error lines)."""
    files, errors = [], []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in DEMO_IMAGE_EXTENSIONS)
            if not found:
                errors.append(f"{p}: no images ({', '.join(DEMO_IMAGE_EXTENSIONS)}) in this folder")
            files += found[:limit]
        elif p.is_file():
            files.append(p)
        else:
            errors.append(f"{p}: not found")
    return files, errors


class OutputNames:
    """The annotated copy keeps its input's name; a second input of the same
    name gets -2, -3, ... so nothing is overwritten within a run."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.used = set()

    def take(self, name):
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, n = name, 1
        while candidate.lower() in self.used:
            n += 1
            candidate = f"{stem}-{n}{suffix}"
        self.used.add(candidate.lower())
        return self.folder / candidate


def write_image(path, image):
    """Encode by the file's extension (JPEG where OpenCV cannot write that
    format) and write atomically; returns the path written."""
    path = Path(path)
    ok, buf = False, None
    try:
        ok, buf = cv2.imencode(path.suffix or ".jpg", image)
    except cv2.error:
        pass
    if not ok:
        path = path.with_suffix(".jpg")
        ok, buf = cv2.imencode(".jpg", image)
    write_atomic(path, buf.tobytes())
    return path


def open_video_writer(stem_path, fps, size):
    """A cv2.VideoWriter on a temporary name for the first codec this OpenCV
    can write. Returns (writer, temporary path, final path)."""
    stem_path = Path(stem_path)
    for fourcc, ext in VIDEO_CODECS:
        final = stem_path.with_suffix(ext)
        tmp = final.with_name(f".{final.stem}.{os.getpid()}.tmp{ext}")
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, tmp, final
        writer.release()
        tmp.unlink(missing_ok=True)
    raise UserError(f"{stem_path}: this OpenCV can write none of the video codecs "
                    f"{', '.join(f'{c} ({e})' for c, e in VIDEO_CODECS)}")


def detections_header(model_name, mode, thresh, random_weights=False):
    """The keys of detections.json before its per-image entries;
    random_weights: the model's weights are random, its boxes mean nothing."""
    return {"model": str(model_name), "mode": mode, "vis_thresh": float(thresh),
            RANDOM_WEIGHTS_FIELD: bool(random_weights),
            "box": "x1, y1, x2, y2 in image pixels, clipped to the image"}


def _detections_json_chunks(header, entries):
    head = json.dumps({**header, "images": []}, indent=1)
    yield head[:-len("]\n}")].encode("utf-8")  # ... "images": [
    first = True
    for entry in entries:
        # an entry nested two levels deep: every line indented two more spaces
        text = json.dumps(entry, indent=1).replace("\n", "\n  ")
        yield (("\n  " if first else ",\n  ") + text).encode("utf-8")
        first = False
    yield b"]\n}\n" if first else b"\n ]\n}\n"


def write_detections_json(path, header, entries):
    """Write detections.json atomically: the header's keys, then "images":
    the entries (any iterable, streamed, so a million images need not be in
    memory at once). The text is json.dumps(document, indent=1)'s."""
    write_atomic_chunks(path, _detections_json_chunks(header, entries))


def is_uri(location):
    """An object-store or other pyarrow filesystem URI (s3://, gs://, file://...)."""
    return "://" in str(location)


_filesystems = {}


def _filesystem(uri):
    """(pyarrow filesystem, path inside it) for a URI; one filesystem per
    bucket or host per process."""
    from pyarrow import fs
    scheme_host = uri.split("://", 1)[0] + "://" + uri.split("://", 1)[1].split("/", 1)[0]
    if scheme_host not in _filesystems:
        _filesystems[scheme_host] = fs.FileSystem.from_uri(uri)[0]
    return _filesystems[scheme_host], fs.FileSystem.from_uri(uri)[1]


def read_image_bytes(location):
    """The bytes of a local file or of a URI's object."""
    if is_uri(location):
        filesystem, path = _filesystem(location)
        with filesystem.open_input_stream(path) as f:
            return f.read()
    with open(location, "rb") as f:
        return f.read()


def join_location(folder, name):
    return f"{str(folder).rstrip('/')}/{name}" if is_uri(folder) else str(Path(folder) / name)


def list_image_files(folder, limit=None):
    """Image files (the demo's extensions) directly in a local folder or under
    a URI prefix, in name order; the first `limit`. Returns [(name, location)]."""
    if is_uri(folder):
        from pyarrow import fs
        try:
            filesystem, path = fs.FileSystem.from_uri(str(folder))
            infos = filesystem.get_file_info(fs.FileSelector(path, recursive=False))
        except (OSError, ValueError) as e:
            raise UserError(f"{folder}: cannot list the images ({str(e).splitlines()[0]})") from None
        names = [i.base_name for i in infos if i.type == fs.FileType.File]
    else:
        if not Path(folder).is_dir():
            raise UserError(f"{folder}: image folder not found")
        names = [p.name for p in Path(folder).iterdir() if p.is_file()]
    names = sorted(n for n in names if Path(n).suffix.lower() in DEMO_IMAGE_EXTENSIONS)[:limit]
    if not names:
        raise UserError(f"{folder}: no images ({', '.join(DEMO_IMAGE_EXTENSIONS)}) in this folder")
    return [(n, join_location(folder, n)) for n in names]
