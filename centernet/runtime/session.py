"""The one model-facing interface: a Session runs the network on a batch and
says, in its Capabilities, what it can do. Every backend implements it
(ONNX Runtime: ort_session.OrtSession; PyTorch: torch_session.TorchSession;
Ascend: ais_bench_session.AisBenchSession), and everything above (the
predictor, the staged inference, the benchmarks) reads only this.
"""
from abc import ABC, abstractmethod
from dataclasses import dataclass

from centernet.constants import DOWN_RATIO, HEADS, POSE_CHANNELS, POSE_HEADS
from centernet.core.model_facts import ModelFacts, heads_task


@dataclass(frozen=True)
class Capabilities:
    """What a session can take and give.

    input_size: (H, W) of a fixed-size model, or None where any multiple of
    32 goes (a dynamic-size export, the PyTorch network).
    static_batch: the batch a fixed-batch model (an .om) must be given, or None.
    flip_in_graph: the model runs upstream's flip test itself (export --flip):
    it outputs the averaged heatmap, not logits.
    accepts_warped: run_warped takes uint8 (N, H, W, 3) warped images and
    normalises them on the device.
    decodes_on_device: run_decoded returns the top K detections, decoded on
    the device.
    heads: (name, channels) of each output, in output order.
    random_weights: the model has random weights (the demo's): its
    detections mean nothing, and every picture and summary says so. From
    the ONNX metadata (RANDOM_WEIGHTS_KEY) or the checkpoint; an .om keeps
    no such fact.
    facts: the network, classes and test settings (mean/std, input size,
    keep-resolution padding) the model carries (core.model_facts); None
    where the model file keeps no record (an .om).
    """
    input_size: tuple = None
    static_batch: int = None
    flip_in_graph: bool = False
    accepts_warped: bool = False
    decodes_on_device: bool = False
    heads: tuple = (("hm", 80), ("wh", 2), ("reg", 2))
    random_weights: bool = False
    facts: ModelFacts = ModelFacts()

    @property
    def num_classes(self):
        return dict(self.heads)["hm"]

    @property
    def task(self):
        """ctdet or multi_pose, from the outputs (an .om records no facts, only its outputs)."""
        return heads_task(self.heads)

    @property
    def fixed_size(self):
        return self.input_size is not None

    def output_shapes(self, input_hw):
        """(C, h, w) of each output for one input of (H, W)."""
        h, w = (v // DOWN_RATIO for v in input_hw)
        return [(c, h, w) for _, c in self.heads]


def heads_from_channels(channels):
    """Capabilities.heads from the outputs' channel counts (None: unknown):
    3 outputs are ctdet's heads, 6 multi_pose's."""
    if len(channels) == len(HEADS):
        names, defaults = HEADS, dict(Capabilities.heads)
    elif len(channels) == len(POSE_HEADS):
        names, defaults = POSE_HEADS, POSE_CHANNELS
    else:
        raise ValueError(f"{len(channels)} outputs; a ctdet model has {len(HEADS)} ({', '.join(HEADS)}), "
                         f"a multi_pose model {len(POSE_HEADS)} ({', '.join(POSE_HEADS)})")
    return tuple((name, c if isinstance(c, int) else defaults[name]) for name, c in zip(names, channels))


class Session(ABC):
    """A loaded model. run() takes a float32 (N, 3, H, W) batch and returns
    the outputs (hm, wh, reg; multi_pose: hm, wh, hps, reg, hm_hp, hp_offset)
    as float32 numpy arrays; run_warped and
    run_decoded exist where the capabilities say so."""

    name = "model"

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities:
        ...

    @abstractmethod
    def run(self, batch):
        """float32 (N, 3, H, W) -> [hm, wh, reg] float32 numpy arrays."""

    def run_warped(self, batch):
        """uint8 (N, H, W, 3) warped BGR images -> [hm, wh, reg]."""
        raise NotImplementedError(f"{type(self).__name__} does not take warped images")

    def run_decoded(self, batch, K, warped=False, flip=False):
        """A batch -> (scores, classes, boxes on the output map), decoded on
        the device; flip: upstream's flip test, mirrored and averaged there."""
        raise NotImplementedError(f"{type(self).__name__} does not decode on its device")

    @abstractmethod
    def describe(self) -> dict:
        """What runs, for summaries and benchmark JSON."""

    def describe_line(self):
        """One human line on how the backend runs, or None where there is nothing to say."""
        return None
