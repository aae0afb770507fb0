"""Argument groups shared by the top-level scripts: one spelling, one meaning
and one help style per flag. Every option's help ends with its default,
"(default: %(default)s)" or a worded one such as "(default: off)".

Every script's parser is an ArgumentParser from here: a mistyped option is
one line naming the closest valid one, not the usage block.

Parse with parse_args(parser, argv): it also records which options the user
gave (args._given, their dests), so check_backend_args can refuse PyTorch-only
options on ONNX Runtime however their values compare with the defaults."""
import argparse
import difflib
import re
import sys
from dataclasses import fields

from centernet.errors import UserError
from centernet.runtime.backends import BACKENDS, CASTS, DCN_KERNELS, PRECISIONS, TORCH_DEVICES, default_backend

_NOT_GIVEN = object()
_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def _squeezed(option):
    return option.lstrip("-").replace("-", "").replace("_", "").lower()


def closest_option(given, options):
    """The option of `options` that `given` most likely meant: the same one
    but for dashes, underscores and case (--batch-size, --BatchSize:
    --batchsize), else the closest spelling by difflib; None when none is
    close."""
    word = given.split("=", 1)[0]
    for option in options:
        if _squeezed(option) == _squeezed(word):
            return option
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return close[0] if close else None


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but an unknown or ambiguous option is one line,
    'error: unknown option --batch-size; did you mean --batchsize? (PROG
    --help lists them)', and exit status 2, without the usage block. Other
    mistakes (a missing or invalid value) are argparse's usual message."""

    def parse_args(self, args=None, namespace=None):
        args, extras = self.parse_known_args(args, namespace)
        unknown = [a for a in extras if a.startswith("-") and len(a) > 1 and not _NUMBER.match(a)]
        if unknown:
            options = [o for action in self._actions for o in action.option_strings]
            said = []
            for option in unknown:
                near = closest_option(option, options)
                said.append(f"unknown option {option.split('=', 1)[0]}"
                            + (f"; did you mean {near}?" if near else ""))
            self.exit(2, f"error: {'; '.join(said)} ({self.prog} --help lists them)\n")
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return args

    def error(self, message):
        if message.startswith("ambiguous option:"):  # argparse's own words; the candidates follow
            self.exit(2, f"error: {message} ({self.prog} --help lists them)\n")
        super().error(message)
TORCH_GROUP = "PyTorch backend (--backend torch)"


def parse_args(parser, argv=None):
    """parser.parse_args(argv), and args._given: the dests of the options
    given on the command line (even when given their default value)."""
    dests = {a.dest for a in parser._actions if a.option_strings and a.dest is not argparse.SUPPRESS}
    namespace = argparse.Namespace(**{d: _NOT_GIVEN for d in dests})
    args = parser.parse_args(argv, namespace)
    given = set()
    for action in parser._actions:
        if action.dest not in dests:
            continue
        if getattr(args, action.dest) is _NOT_GIVEN:
            default = parser.get_default(action.dest)
            if isinstance(default, str) and action.type is not None:  # as argparse does for its defaults
                default = parser._get_value(action, default)
            setattr(args, action.dest, default)
        else:
            given.add(action.dest)
    args._given = given
    return args


# --- model and backend --------------------------------------------------------------------------------

def add_device_arguments(parser, providers, threads_help="CPU intra-op threads, 0 = all cores"):
    """--device (ONNX Runtime's execution provider or the PyTorch backend's device) and --threads."""
    parser.add_argument("--device", choices=sorted(providers), default="cpu",
                        help="ONNX Runtime execution provider (cuda/tensorrt need onnxruntime-gpu), or the "
                             "PyTorch backend's device (cpu/cuda) (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help=threads_help + " (default: %(default)s)")


def add_backend_arguments(parser, default=None):
    """--backend and the PyTorch backend's switches (the caller has --device
    and --threads). default None: chosen from --model's suffix."""
    parser.add_argument("--backend", choices=BACKENDS, default=default,
                        help="onnxruntime runs an .onnx file; torch runs the .pth checkpoint in PyTorch "
                             "(CPU or CUDA) with no export; ais_bench runs an .om on an Ascend NPU (default: "
                             + (default or "torch for a .pth/.pt/.tar --model, ais_bench for an .om, else "
                                           "onnxruntime") + ")")
    add_torch_arguments(parser)


def add_torch_arguments(parser, several_precisions=False, title=TORCH_GROUP):
    """The PyTorch backend's switches; several_precisions: --precision takes a list."""
    g = parser.add_argument_group(title)
    precision_help = ("fp32 (strict, no TF32), tf32 (CUDA only), fp16 or bf16; the heads' final layer "
                      "and the decoding stay in fp32")
    if several_precisions:
        g.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"],
                       help=precision_help + ", a row each (default: fp32)")
    else:
        g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help=precision_help + " (default: %(default)s)")
    g.add_argument("--cast", choices=CASTS, default="autocast",
                   help="fp16/bf16 by torch.autocast, or by converting the whole model (default: %(default)s)")
    g.add_argument("--fp32-heads", action=argparse.BooleanOptionalAction, default=True,
                   help="run the heads' final 1x1 convolutions in fp32 under fp16/bf16 (default: on)")
    g.add_argument("--fuse-bn", action=argparse.BooleanOptionalAction, default=True,
                   help="fold each BatchNorm into the convolution before it (default: on)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC activations (default: on for cuda, off for cpu)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the network (Inductor; needs a C++ compiler on CPU, Triton on CUDA; "
                        "the first batch of each shape compiles, minutes) (default: off)")
    g.add_argument("--compile-mode", default=None,
                   help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: torch's)")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="capture one CUDA graph per batch shape and replay it (cuda only) (default: off)")
    g.add_argument("--pin-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="page-locked host buffers for the copies to and from the GPU (default: on for cuda)")
    g.add_argument("--warped-input", action=argparse.BooleanOptionalAction, default=True,
                   help="streaming evaluation: the workers send each warped image as uint8 (a quarter of the "
                        "bytes) and the normalisation runs on the device (default: on)")
    g.add_argument("--device-decode", action=argparse.BooleanOptionalAction, default=None,
                   help="streaming evaluation: decode on the device and copy back only the 100 detections "
                        "per image, not the full outputs; with --flip the mirror is made and averaged in "
                        "there too (default: on for cuda)")
    g.add_argument("--dcn-kernel", choices=DCN_KERNELS, default="auto",
                   help="deformable convolution: ours (grid_sample + matmul), torchvision's deform_conv2d, "
                        "or auto: torchvision where it imports and agrees with ours within float32 "
                        "rounding (on cuda: and is faster), else ours (default: %(default)s)")
    return g


# The PyTorch backend's options: (dest, flag), in --help's order.
TORCH_OPTIONS = (("precision", "--precision"), ("cast", "--cast"), ("fp32_heads", "--fp32-heads"),
                 ("fuse_bn", "--fuse-bn"), ("channels_last", "--channels-last"), ("compile", "--compile"),
                 ("compile_mode", "--compile-mode"), ("cuda_graphs", "--cuda-graphs"),
                 ("pin_memory", "--pin-memory"), ("warped_input", "--warped-input"),
                 ("device_decode", "--device-decode"), ("dcn_kernel", "--dcn-kernel"))
_TORCH_DEFAULTS = {"precision": "fp32", "cast": "autocast", "fp32_heads": True, "fuse_bn": True,
                   "channels_last": None, "compile": False, "compile_mode": None, "cuda_graphs": False,
                   "pin_memory": None, "warped_input": True, "device_decode": None, "dcn_kernel": "auto"}


def torch_options_from_args(args, **overrides):
    """A TorchOptions from add_backend_arguments' flags (+ --device, --threads);
    None when args.backend is ONNX Runtime's (torch is then never imported)."""
    if getattr(args, "backend", "torch") != "torch":
        return None
    from centernet.runtime.torch_session import TorchOptions
    values = {"device": getattr(args, "device", "cpu"), "threads": getattr(args, "threads", 0) or 0,
              "precision": args.precision, "cast": args.cast, "fp32_heads": args.fp32_heads,
              "fuse_bn": args.fuse_bn, "channels_last": args.channels_last, "compile": args.compile,
              "compile_mode": args.compile_mode, "cuda_graphs": args.cuda_graphs,
              "pin_memory": args.pin_memory, "dcn": args.dcn_kernel, "warped_input": args.warped_input,
              "device_decode": args.device_decode}
    values.update(overrides)
    names = {f.name for f in fields(TorchOptions)}
    return TorchOptions(**{k: v for k, v in values.items() if k in names})


def given_torch_options(args):
    """The PyTorch-only flags the user gave: from args._given (parse_args),
    else those whose value is not the default."""
    given = getattr(args, "_given", None)
    if given is None:
        return [flag for dest, flag in TORCH_OPTIONS
                if hasattr(args, dest) and getattr(args, dest) != _TORCH_DEFAULTS[dest]]
    return [flag for dest, flag in TORCH_OPTIONS if dest in given]


def check_backend_args(args):
    """Fill args.backend from the model when not given; refuse every PyTorch
    backend option given for ONNX Runtime (it would silently do nothing), all
    of them in one line."""
    args.backend = args.backend or default_backend(args.model)
    if args.backend != "torch":
        torch_only = given_torch_options(args)
        if torch_only:
            raise UserError(f"{', '.join(torch_only)}: PyTorch backend options; add --backend torch "
                            "(and give the .pth checkpoint as --model)")
    elif args.device not in TORCH_DEVICES:
        raise UserError(f"--backend torch runs on {' or '.join(TORCH_DEVICES)}, not {args.device}")
    return args


# --- test mode ----------------------------------------------------------------------------------------

FLIP_TEST = "upstream's flip test (its --flip_test: each image and its mirror, outputs averaged)"


def add_keep_res_argument(parser, what, default_text="off, fixed 512x512"):
    """--keep-res: upstream's keep-resolution test mode; `what` says what it does in this stage."""
    parser.add_argument("--keep-res", action="store_true",
                        help=f"upstream's keep resolution (its --keep_res, the 37.4 AP mode): {what} "
                             f"(default: {default_text})")


def add_flip_argument(parser, what):
    """--flip: upstream's flip test; `what` says what it does in this stage."""
    parser.add_argument("--flip", action="store_true", help=f"{FLIP_TEST}: {what} (default: off)")


def add_scales_argument(parser, what, upstream_scales=None):
    """--scales: upstream's multi-scale test, comma-separated."""
    upstream = f"; upstream's is {','.join(f'{t:g}' for t in upstream_scales)}" if upstream_scales else ""
    parser.add_argument("--scales", default="1",
                        help=f"upstream's multi-scale test, comma-separated scales: {what}{upstream} "
                             "(default: %(default)s)")


def add_input_size_argument(parser, default=(512, 512), what="network input height and width",
                            default_text=None):
    """--input-size H W."""
    text = default_text or (" ".join(map(str, default)) if default else "the model's")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        default=list(default) if default else None, help=f"{what} (default: {text})")


def positive_int(text):
    """argparse type: a whole number >= 1 (so --limit 0 is refused where it is typed)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value} (leave the option out for all)")
    return value


def add_limit_argument(parser, what="only the first N images by file name"):
    """--limit N."""
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N", help=f"{what} (default: all)")


# --- batching, progress -------------------------------------------------------------------------------

def add_batchsize_argument(parser, default=1, what="images per inference batch", aliases=(), dest="batchsize",
                           several=False, default_text=None):
    """--batchsize (ais_bench's spelling, which the recipe uses); `aliases`:
    a script's earlier spellings, still accepted."""
    parser.add_argument("--batchsize", *aliases, dest=dest, type=int, nargs="+" if several else None,
                        default=default, metavar="BATCHSIZE",
                        help=what + (f"; also spelled {', '.join(aliases)}" if aliases else "")
                        + f" (default: {default_text or '%(default)s'})")


def add_progress_arguments(parser):
    """--progress / --no-progress; resolve with progress_enabled(args)."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars on stderr (default: on when stderr is a terminal)")


def progress_enabled(args, stream=None):
    """--progress / --no-progress as given, else whether stderr is a terminal."""
    if getattr(args, "progress", None) is not None:
        return bool(args.progress)
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


DATASET_GROUP = "dataset settings (recorded in the exported model; later stages read them from it)"


def add_dataset_settings_arguments(parser, preset_flag="--dataset", input_size=True, class_names=True):
    """--dataset (a preset of upstream's datasets), --mean, --std, --class-names
    and (input_size) --input-size: the settings of the data a checkpoint was
    trained on, which the checkpoint itself does not record."""
    from centernet.constants import DATASET_SETTINGS
    g = parser.add_argument_group(DATASET_GROUP)
    g.add_argument(preset_flag, dest="dataset_preset", choices=list(DATASET_SETTINGS), default=None,
                   help="upstream's settings for its own datasets: mean/std, input size and class names "
                        "(coco: 512, pascal: 384 with ImageNet's mean/std, coco_hp: 512, one class); --mean, "
                        "--std, --input-size and --class-names override (default: the settings the checkpoint "
                        "records, as the stand-in detector's do, else coco's mean/std and size)")
    g.add_argument("--mean", type=float, nargs=3, metavar=("M1", "M2", "M3"), default=None,
                   help="per-channel mean of the training images, in the order the model's dataset class lists "
                        "them; applied, as upstream does, to the B, G, R channels in that order (default: the "
                        "--dataset preset's, else the checkpoint's record, else COCO's)")
    g.add_argument("--std", type=float, nargs=3, metavar=("S1", "S2", "S3"), default=None,
                   help="per-channel std, listed and applied like --mean (default: the --dataset preset's, "
                        "else the checkpoint's record, else COCO's)")
    if class_names:
        g.add_argument("--class-names", default=None, metavar="FILE",
                       help="class names, one per line in the model's class order (default: the --dataset "
                            "preset's, else the checkpoint's record; none recorded otherwise, and an 80-class model is "
                            "named with COCO's)")
    if input_size:
        g.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                       help="fixed input height and width (default: the --dataset preset's, else the checkpoint's "
                            "record, else 512 512)")


def dataset_settings_from_args(args, num_classes=None, source="the model", defaults=None):
    """{mean, std, input_size, class_names} for a model of `num_classes`
    classes (None: not known here, and no names) from
    add_dataset_settings_arguments' options; one-line errors when a preset or
    names file does not fit the model. defaults: the ModelFacts the checkpoint
    records (checkpoint.checkpoint_facts), which stand where no --dataset
    preset or option is given; COCO's where None."""
    from centernet.constants import DATASET_SETTINGS, INPUT_SIZE, PASCAL_CLASSES
    from centernet.io.coco import COCO_CATEGORIES
    from centernet.io.media import load_names
    preset = args.dataset_preset
    settings = DATASET_SETTINGS[preset or "coco"]
    names = None
    names_file = getattr(args, "class_names", None)
    if num_classes is not None and names_file:
        names = load_names(names_file)
        if len(names) != num_classes:
            raise UserError(f"{names_file}: {len(names)} class names, but {source} has {num_classes} classes")
    elif num_classes is not None and preset is not None:
        if settings["num_classes"] != num_classes:
            raise UserError(f"--dataset {preset}: {settings['num_classes']} classes, but {source} has {num_classes}; "
                            "give --mean, --std and --class-names for a model of other classes")
        names = {"coco": [name for _, name, _ in COCO_CATEGORIES], "pascal": list(PASCAL_CLASSES),
                 "coco_hp": ["person"]}[preset]
    elif preset is None and defaults is not None and defaults.num_classes == num_classes:
        names = defaults.class_names
    if preset is None and defaults is not None:  # the checkpoint's own settings
        settings = {"mean": defaults.mean, "std": defaults.std}
        default_size = tuple(defaults.input_size)
    else:
        side = settings["input_side"] if preset else INPUT_SIZE
        default_size = (side, side)
    size = tuple(getattr(args, "input_size", None) or default_size)
    if min(size) <= 0:
        raise UserError(f"--input-size {size[0]} {size[1]}: must be positive")
    std = tuple(args.std or settings["std"])
    if any(v <= 0 for v in std):
        raise UserError(f"--std {' '.join(f'{v:g}' for v in std)}: every std must be positive")
    return {"mean": tuple(args.mean or settings["mean"]), "std": std, "input_size": size,
            "class_names": tuple(names) if names else None}
