"""The stand-in detector: upstream's ResNet-18 + DCN ctdet network trained
on the generated shapes (io/shapes.py), on the CPU, with upstream's targets
and losses. It detects shapes, not COCO objects: it is what the demo, the
end-to-end AP test and the precision benchmark run when no real checkpoint is
at hand, so that their AP means something.

    python -m centernet.cli.train_standin models/ctdet_shapes_resdcn18.pth

Deterministic given the recipe (seed included) and the thread count: every
training image and augmentation is a pure function of (seed, step, slot).
Progress is kept every few minutes beside the output (`<output>.partial`), so
an interrupted run resumes where it stopped. The result is saved in
upstream's checkpoint layout with float16 tensors (upstream's loader takes
them back to float32), its ModelFacts (class names, mean/std, input size)
and a record of how it was made and the AP it scored on the held-out split.
"""
import json
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from centernet.constants import FACTS_FIELD, STANDIN_FIELD
from centernet.core.model_facts import ModelFacts
from centernet.core.transforms import preprocess_image
from centernet.errors import UserError
from centernet.io.binio import check_writable, make_dirs, write_atomic
from centernet.io.shapes import SHAPE_CLASSES, make_shapes_coco, shapes_image
from centernet.model.checkpoint import write_checkpoint
from centernet.model.networks import build_network
from centernet.train.losses import ctdet_loss
from centernet.train.targets import ctdet_targets

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StandinRecipe:
    """Everything the stand-in's weights depend on (with the thread count)."""
    seed: int = 0
    network: str = "resdcn_18"
    head_conv: int = 64
    input_size: int = 256
    batch_size: int = 16
    steps: int = 700
    lr: float = 2e-3           # Adam, after a linear warm-up, cosine-decayed to lr/100
    # The DCNs' offset/mask convs learn at lr * this: their fan-in is large (512 x 3 x 3 on
    # ResNet's last features), and at the full rate Adam's coherent steps push the offsets
    # hundreds of pixels out within a few hundred steps, where every sample reads zero.
    offset_lr_factor: float = 0.01
    warmup: int = 50
    train_images: int = 8000   # distinct train-split images, cycled
    val_images: int = 200      # held-out images the AP is recorded on
    scale_jitter: float = 0.4  # upstream's --scale (with --not_rand_crop's shift and scale)
    shift_jitter: float = 0.1  # upstream's --shift
    flip: float = 0.5
    stats_images: int = 256    # train images the mean/std are computed on

    @property
    def heads(self):
        return {"hm": len(SHAPE_CLASSES), "wh": 2, "reg": 2}


def dataset_mean_std(recipe):
    """Per-channel (B, G, R) mean and std of the train split's pixels / 255,
    rounded to 4 places, as upstream's datasets list theirs."""
    total, squares, count = np.zeros(3), np.zeros(3), 0
    for index in range(recipe.stats_images):
        img = shapes_image(recipe.seed, "train", index)[0].reshape(-1, 3).astype(np.float64) / 255
        total += img.sum(0)
        squares += (img * img).sum(0)
        count += len(img)
    mean = total / count
    std = np.sqrt(squares / count - mean * mean)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def standin_facts(recipe, mean, std):
    return ModelFacts.for_network(recipe.network, recipe.heads, recipe.head_conv, mean=mean, std=std,
                                  input_size=(recipe.input_size, recipe.input_size), class_names=SHAPE_CLASSES)


def training_batch(recipe, step, facts):
    """The batch of `step`: augmented inputs and their ctdet targets, as tensors."""
    rng = np.random.default_rng([recipe.seed, 7, step])
    side = recipe.input_size
    out_side = side // facts.down_ratio
    inputs = np.empty((recipe.batch_size, 3, side, side), np.float32)
    targets = []
    for slot in range(recipe.batch_size):
        index = (step * recipe.batch_size + slot) % recipe.train_images
        img, objects, _ = shapes_image(recipe.seed, "train", index)
        height, width = img.shape[:2]
        # upstream's ctdet augmentation without random crop: scale, shift, flip
        center = np.array([width / 2, height / 2], np.float32)
        scale = max(height, width) * float(np.clip(rng.normal() * recipe.scale_jitter + 1,
                                                   1 - recipe.scale_jitter, 1 + recipe.scale_jitter))
        center += scale * np.clip(rng.normal(size=2) * recipe.shift_jitter, -2 * recipe.shift_jitter,
                                  2 * recipe.shift_jitter)
        flipped = rng.random() < recipe.flip
        if flipped:
            img = np.ascontiguousarray(img[:, ::-1])
            center[0] = width - center[0] - 1
        preprocess_image(img, center, scale, (side, side), out=inputs[slot:slot + 1], mean=facts.mean,
                         std=facts.std)
        targets.append(ctdet_targets(objects, center, scale, (out_side, out_side), facts.num_classes,
                                     flipped_width=width if flipped else None))
    batch = {name: torch.from_numpy(np.stack([getattr(t, name) for t in targets]))
             for name in ("hm", "wh", "reg", "ind", "reg_mask")}
    batch["input"] = torch.from_numpy(inputs)
    return batch


def learning_rate(recipe, step):
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def _save_partial(path, model, optimizer, step, recipe, elapsed):
    write_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                            "recipe": asdict(recipe), "elapsed_s": elapsed, "rng": torch.get_rng_state()})


def train_standin(recipe, output, save_every_s=300, log_every=10):
    """Train the stand-in (resuming from `<output>.partial` when it holds this
    recipe's progress). Returns (model in eval mode, facts, training seconds)."""
    torch.manual_seed(recipe.seed)
    mean, std = dataset_mean_std(recipe)
    facts = standin_facts(recipe, mean, std)
    logger.info(f"stand-in {facts.describe()}; train-split mean {mean}, std {std} (B, G, R)")
    model = build_network(recipe.network, recipe.heads, recipe.head_conv)
    offsets = [p for n, p in model.named_parameters() if "conv_offset_mask" in n]
    others = [p for n, p in model.named_parameters() if "conv_offset_mask" not in n]
    optimizer = torch.optim.Adam([{"params": others, "lr_factor": 1.0},
                                  {"params": offsets, "lr_factor": recipe.offset_lr_factor}], lr=recipe.lr)
    partial = Path(f"{output}.partial")
    start, elapsed = 0, 0.0
    if partial.is_file():
        saved = torch.load(partial, map_location="cpu", weights_only=True)
        if saved.get("recipe") == asdict(recipe):
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(saved["rng"])
            start, elapsed = int(saved["step"]), float(saved["elapsed_s"])
            logger.info(f"resuming from {partial} at step {start} of {recipe.steps}")
        else:
            logger.info(f"{partial}: another recipe's progress; starting over")
    model.train()
    t0, last_save = time.perf_counter() - elapsed, time.perf_counter()
    for step in range(start, recipe.steps):
        batch = training_batch(recipe, step, facts)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(recipe, step) * group["lr_factor"]
        outputs = dict(zip(model.heads, model(batch["input"])))
        loss, parts = ctdet_loss(outputs, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == recipe.steps - 1:
            logger.info(f"step {step + 1}/{recipe.steps}: loss {loss.item():.3f} (hm {parts['hm']:.3f}, "
                        f"wh {parts['wh']:.3f}, off {parts['off']:.3f}), {time.perf_counter() - t0:.0f}s")
        if time.perf_counter() - last_save > save_every_s:
            _save_partial(partial, model, optimizer, step + 1, recipe, time.perf_counter() - t0)
            last_save = time.perf_counter()
    seconds = time.perf_counter() - t0
    if recipe.steps > start:
        _save_partial(partial, model, optimizer, recipe.steps, recipe, seconds)
    return model.eval(), facts, seconds


def round_to_float16(model):
    """The weights as the float16 checkpoint stores them (in place): what is
    evaluated is what is shipped."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    return model


def evaluate_standin(model, facts, data_root, recipe, threads=0):
    """COCO metrics of `model` (PyTorch, fixed-size mode) on the held-out split,
    written under data_root; the same predictor every runner uses."""
    from centernet.io.coco import evaluate_coco
    from centernet.pipeline.stream import stream_detections
    from centernet.runtime.torch_session import TorchSession
    images_dir, ann_file = make_shapes_coco(data_root, "val", recipe.val_images, recipe.seed)
    session = TorchSession(model, input_size=facts.input_size, facts=facts)
    results, ids, errors, _ = stream_detections(None, images_dir, ann_file, session=session, progress=False)
    if errors:
        raise UserError(f"{images_dir}: {errors[0]}")
    return evaluate_coco(ann_file, results, verbose=False)


def machine_text():
    from centernet.bench.machine import cpu_model
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def save_standin(model, facts, record, path):
    """Upstream's layout ({'epoch', 'state_dict'} with `module.` keys), float16
    tensors, plus the facts (FACTS_FIELD) and how it was made (STANDIN_FIELD)."""
    state = {f"module.{k}": (v.half() if v.is_floating_point() else v).clone()
             for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    checkpoint = {"epoch": record["recipe"]["steps"], "state_dict": state, FACTS_FIELD: facts.to_metadata(),
                  STANDIN_FIELD: record}
    write_checkpoint(path, checkpoint)


def make_standin(output, recipe=StandinRecipe(), data_root=None, command=None):
    """Train, round to float16, score on the held-out split, save. Returns the record."""
    output = Path(output)
    make_dirs(output.parent)  # and writable, before the hour of training
    check_writable(output.parent)
    model, facts, seconds = train_standin(recipe, output)
    round_to_float16(model)
    data_root = Path(data_root or output.parent / "standin_data")
    t0 = time.perf_counter()
    metrics = evaluate_standin(model, facts, data_root, recipe)
    record = {"recipe": asdict(recipe), "training_seconds": round(seconds, 1), "machine": machine_text(),
              "torch": str(torch.__version__), "python": platform.python_version(), "command": command,
              "val_AP": round(metrics["AP"], 4), "val_AP50": round(metrics["AP50"], 4),
              "val_images": recipe.val_images, "per_class_AP": {k: (None if v is None else round(v, 4))
                                                                for k, v in metrics["per_class"].items()}}
    logger.info(f"held-out AP {metrics['AP']:.4f} (AP50 {metrics['AP50']:.4f}) on {recipe.val_images} images "
                f"in {time.perf_counter() - t0:.0f}s")
    save_standin(model, facts, record, output)
    write_standin_record(output)
    Path(f"{output}.partial").unlink(missing_ok=True)
    return record


def write_standin_record(checkpoint):
    """The record a stand-in checkpoint holds, as JSON beside it (<name>.json),
    readable without torch: the demo's report and the docs quote it."""
    checkpoint = Path(checkpoint)
    obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    record = {**obj[STANDIN_FIELD], "facts": obj[FACTS_FIELD]}
    path = checkpoint.with_suffix(".json")
    write_atomic(path, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    return path


