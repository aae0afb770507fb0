"""The demo: the stand-in detector and the held-out split of the generated
shapes it was trained on, so the whole pipeline runs on a fresh machine with
nothing downloaded, and its AP means something.

The stand-in (models/ctdet_shapes_resdcn18.pth, made by
`python -m centernet.cli.train_standin`) is upstream's ResNet-18 + DCN ctdet
network in upstream's checkpoint layout, trained on rectangles, ellipses,
triangles and crosses. It detects shapes, not COCO objects. Beside it,
models/ctdet_shapes_resdcn18.json records how it was made and the AP it
scored on the held-out split; the demo on that whole split reproduces it.

    python -m centernet.cli.make_demo work/demo   # writes work/demo/data and work/demo/ctdet_shapes_resdcn18.pth
"""
import json
import logging
from pathlib import Path

from centernet.constants import STANDIN_CHECKPOINT
from centernet.errors import UserError
from centernet.io.binio import make_dirs, write_atomic
from centernet.io.shapes import make_shapes_coco

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
STANDIN_LABEL = "the stand-in detector (ResNet-18 + DCN trained on generated shapes; it detects shapes, not COCO objects)"


def standin_checkpoint():
    """The shipped stand-in checkpoint; a one-line error where this copy lacks it."""
    path = REPO_ROOT / STANDIN_CHECKPOINT
    if not path.is_file():
        raise UserError(f"{path}: the stand-in detector is missing from this copy of the toolkit; restore it "
                        "(git checkout models/) or make it with python -m centernet.cli.train_standin")
    return path


def standin_record_path(checkpoint=None):
    return Path(checkpoint or REPO_ROOT / STANDIN_CHECKPOINT).with_suffix(".json")


def standin_record(checkpoint=None):
    """The record beside the stand-in: its recipe, training time and machine, held-out AP."""
    path = standin_record_path(checkpoint)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: the stand-in's record is not readable ({e})") from None


def make_demo(folder, num_images=None, progress=True):
    """The demo's data (the first `num_images` held-out images, default the
    whole split the stand-in's AP was recorded on) and its weights (a copy of
    the stand-in, so that what later stages cache stays in `folder`), made or
    reused under `folder`. Returns (data root, checkpoint path)."""
    folder = Path(folder)
    source = standin_checkpoint()
    record = standin_record(source)
    recipe = record["recipe"]
    data = folder / "data"
    make_shapes_coco(data, "val", num_images or recipe["val_images"], seed=recipe["seed"], progress=progress)
    weights = folder / source.name
    if not weights.is_file() or weights.read_bytes() != source.read_bytes():
        make_dirs(folder)
        write_atomic(weights, source.read_bytes())
    return data, weights
