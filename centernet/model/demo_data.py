"""The demo: a small generated COCO-format dataset and deterministic random
weights in the upstream checkpoint layout, so the whole pipeline runs on a
fresh machine with nothing downloaded. A smoke test: its AP means nothing.

    python -m centernet.cli.make_demo work/demo      # writes work/demo/data and work/demo/ctdet_demo.pth
"""
import logging
from pathlib import Path

from centernet.io.binio import make_dirs
from centernet.model.checkpoint import mark_checkpoint_random, save_upstream_checkpoint
from centernet.model.random_weights import random_model
from centernet.io.synthetic import make_synthetic_coco

logger = logging.getLogger(__name__)

DEMO_IMAGES = 24


def make_demo(folder, num_images=DEMO_IMAGES, seed=0, progress=True):
    """Create (or reuse) the demo data and weights under `folder`; the
    weights are marked as random (checkpoint.is_random), also where an
    earlier version made them unmarked. Returns (data root, checkpoint path)."""
    folder = Path(folder)
    data = folder / "data"
    weights = folder / "ctdet_demo.pth"
    ann = data / "coco" / "annotations" / "instances_val2017.json"
    if not ann.is_file():  # the annotation file is written last
        make_synthetic_coco(data, num_images=num_images, seed=seed, progress=progress)
    if not weights.is_file():
        make_dirs(folder)
        save_upstream_checkpoint(random_model(seed), weights)
    elif mark_checkpoint_random(weights):
        logger.info(f"demo weights: {weights} marked as random weights (made before checkpoints said so)")
    return data, weights
