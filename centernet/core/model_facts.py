"""What a model is, carried with it: the network, its heads and classes, and
the test settings its training data fixed (mean/std, input size, output
stride, the keep-resolution padding).

An exported ONNX file records these in its metadata (to_metadata), and every
later stage reads them back (from_metadata) instead of taking flags that could
disagree: preprocessing, the staged decoding, streaming, Ray, the demo, the
benchmark. A file exported before the facts were recorded reads as ctdet
DLA-34 on COCO, the only model such files could hold.
"""
import json
from dataclasses import dataclass, replace

from centernet.constants import (COCO_MEAN, COCO_STD, DOWN_RATIO, HOURGLASS_PAD, INPUT_SIZE, KEEP_RES_PAD, NUM_JOINTS,
                                 POSE_HEADS)

NETWORK_KEY = "centernet.network"
TASK_KEY = "centernet.task"              # "ctdet" or "multi_pose" (from the heads; recorded for readers of the file)
HEADS_KEY = "centernet.heads"            # "hm:80,wh:2,reg:2", in output order
HEAD_CONV_KEY = "centernet.head_conv"
CLASS_NAMES_KEY = "centernet.class_names"  # a JSON list, absent when the names are not known
MEAN_KEY = "centernet.mean"              # "m1,m2,m3": B, G, R (upstream's order)
STD_KEY = "centernet.std"
INPUT_SIZE_KEY = "centernet.input_size"  # "HxW": the fixed-resolution test input
DOWN_RATIO_KEY = "centernet.down_ratio"
PAD_KEY = "centernet.pad"                # keep resolution: each side becomes (side | pad) + 1


def heads_task(heads):
    """Upstream's task of a model with these heads ((name, channels) pairs,
    a dict, or names): "multi_pose" with the human-pose heads (hps ...), else "ctdet"."""
    names = heads.keys() if isinstance(heads, dict) else [h if isinstance(h, str) else h[0] for h in heads]
    return "multi_pose" if "hps" in names else "ctdet"


def network_pad(network):
    """Upstream's keep-resolution `pad` for a network (opts.py): inputs of
    Hourglass-104 are multiples of 128, the others' of 32."""
    return HOURGLASS_PAD if network.startswith("hourglass") else KEEP_RES_PAD


def describe_network(network):
    """'dla_34' -> 'DLA-34 with DCN', 'res_18' -> 'ResNet-18', ..."""
    arch, _, layers = network.partition("_")
    return {"dla": f"DLA-{layers} with DCN", "dlav0": f"DLA-{layers} without DCN", "res": f"ResNet-{layers}",
            "resdcn": f"ResNet-{layers} with DCN", "hourglass": "Hourglass-104"}.get(arch, network)


def numbers_text(values):
    """Numbers as metadata writes them: 'v1,v2,v3', each exactly (repr)."""
    return ",".join(repr(float(v)) for v in values)


def names_text(names):
    """Class names as metadata writes them (a JSON list), None for None."""
    return None if names is None else json.dumps(list(names))


def _floats(text, key, n=3):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n:
        raise ValueError(f"metadata {key} is {text!r}, not {n} numbers")
    return values


@dataclass(frozen=True)
class ModelFacts:
    """The facts of one model (see the module docstring). mean and std are
    upstream's numbers for the B, G, R channels, as listed (float32 is
    applied where they are used); class_names is None where unknown."""
    network: str = "dla_34"
    heads: tuple = (("hm", 80), ("wh", 2), ("reg", 2))
    head_conv: int = 256
    class_names: tuple = None
    mean: tuple = COCO_MEAN
    std: tuple = COCO_STD
    input_size: tuple = (INPUT_SIZE, INPUT_SIZE)
    down_ratio: int = DOWN_RATIO
    pad: int = KEEP_RES_PAD

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "heads", tuple((str(n), int(c)) for n, c in self.heads))
        set_(self, "mean", tuple(float(v) for v in self.mean))
        set_(self, "std", tuple(float(v) for v in self.std))
        set_(self, "input_size", tuple(int(v) for v in self.input_size))
        if self.class_names is not None:
            set_(self, "class_names", tuple(str(v) for v in self.class_names))
            if len(self.class_names) != self.num_classes:
                raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if len(self.input_size) != 2:
            raise ValueError(f"input size {self.input_size}: not a height and width")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 numbers each (B, G, R)")
        names = tuple(n for n, _ in self.heads)
        if "hps" in names and (names != POSE_HEADS or dict(self.heads)["hps"] != 2 * NUM_JOINTS):
            raise ValueError(f"heads {self.heads}: a multi_pose model has {', '.join(POSE_HEADS)} in that "
                             f"order, hps of {2 * NUM_JOINTS} channels")
        if "hps" in names and self.class_names is None:
            set_(self, "class_names", ("person",))  # upstream's multi_pose detects people
        if any(v <= 0 for v in self.std):
            raise ValueError(f"std must be positive, got {', '.join(f'{v:g}' for v in self.std)}")

    @classmethod
    def for_network(cls, network, heads, head_conv, **settings):
        """The facts of a network as found in a checkpoint, with upstream's
        padding rule for it; `settings` (mean, std, input_size, class_names)
        default to COCO's."""
        return cls(network=network, heads=tuple(heads.items()) if isinstance(heads, dict) else heads,
                   head_conv=head_conv, pad=network_pad(network), **settings)

    @property
    def num_classes(self):
        return dict(self.heads)["hm"]

    @property
    def task(self):
        """Upstream's task: "multi_pose" for a model with the human-pose heads (hps ...), else "ctdet"."""
        return heads_task(self.heads)

    @property
    def is_pose(self):
        return self.task == "multi_pose"

    @property
    def num_joints(self):
        return dict(self.heads).get("hps", 0) // 2

    @property
    def input_multiple(self):
        """Keep-resolution inputs (and any dynamic input) are multiples of this."""
        return self.pad + 1

    def with_settings(self, **changes):
        return replace(self, **changes)

    def describe(self):
        """'ResNet-18 with DCN, 80 classes, head width 64'."""
        n = self.num_classes
        if self.is_pose:
            return (f"{describe_network(self.network)}, human pose ({self.num_joints} keypoints), "
                    f"head width {self.head_conv}")
        return f"{describe_network(self.network)}, {n} class{'es' if n != 1 else ''}, head width {self.head_conv}"

    def describe_settings(self):
        """'mean 0.485,0.456,0.406, std 0.229,0.224,0.225 (B, G, R), input 384x384, keep-resolution pad 31'."""
        return (f"mean {','.join(f'{v:g}' for v in self.mean)}, std {','.join(f'{v:g}' for v in self.std)} "
                f"(B, G, R), input {self.input_size[0]}x{self.input_size[1]}, keep-resolution pad {self.pad}")

    def to_metadata(self):
        """The facts as ONNX metadata_props entries."""
        meta = {NETWORK_KEY: self.network, TASK_KEY: self.task, HEADS_KEY: ",".join(f"{n}:{c}" for n, c in self.heads),
                HEAD_CONV_KEY: str(self.head_conv), MEAN_KEY: numbers_text(self.mean), STD_KEY: numbers_text(self.std),
                INPUT_SIZE_KEY: f"{self.input_size[0]}x{self.input_size[1]}",
                DOWN_RATIO_KEY: str(self.down_ratio), PAD_KEY: str(self.pad)}
        if self.class_names is not None:
            meta[CLASS_NAMES_KEY] = names_text(self.class_names)
        return meta

    @classmethod
    def from_metadata(cls, meta, heads=None):
        """The facts an ONNX file's metadata_props ({key: value}) record;
        what is not recorded is ctdet DLA-34 on COCO's (files exported before
        the facts were). heads: the outputs' (name, channels) where the graph
        says (it wins over an absent record). A malformed entry is a ValueError."""
        d = cls()
        try:
            recorded_heads = meta.get(HEADS_KEY)
            if recorded_heads:
                parsed = tuple((n, int(c)) for n, c in (item.split(":") for item in recorded_heads.split(",")))
            else:
                parsed = tuple(heads) if heads else d.heads
            size = meta.get(INPUT_SIZE_KEY)
            input_size = tuple(int(v) for v in size.split("x")) if size else d.input_size
            names = meta.get(CLASS_NAMES_KEY)
            network = meta.get(NETWORK_KEY, d.network)
            return cls(network=network, heads=parsed, head_conv=int(meta.get(HEAD_CONV_KEY, d.head_conv)),
                       class_names=tuple(json.loads(names)) if names else None,
                       mean=_floats(meta[MEAN_KEY], MEAN_KEY) if MEAN_KEY in meta else d.mean,
                       std=_floats(meta[STD_KEY], STD_KEY) if STD_KEY in meta else d.std,
                       input_size=input_size, down_ratio=int(meta.get(DOWN_RATIO_KEY, d.down_ratio)),
                       pad=int(meta.get(PAD_KEY, network_pad(network))))
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"the model's metadata is malformed ({e})") from None
