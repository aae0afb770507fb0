"""Images -> network input bins (recipe step: preprocessing).

    python CenterNet_preprocess.py data/coco/val2017 prep_dataset
    python CenterNet_preprocess.py data/coco/val2017 prep_keepres --keep-res
    python CenterNet_preprocess.py VOC/images prep_voc --model CenterNet_pascal.onnx   # that model's settings
    python CenterNet_preprocess.py VOC/images prep_voc --dataset pascal                # or the same flags as at export

Writes prep_dataset/<stem>.bin (1x3x512x512 float32; with --keep-res each
image's own size rounded up to a multiple of 32) for every image and
prep_dataset/meta.json (size, centre, scale and input size of each image). Re-running skips
finished bins; unreadable images are reported and make the exit status 1.
"""
import sys

from centernet.cli.args import (ArgumentParser, add_dataset_settings_arguments, add_flip_argument,
                                add_keep_res_argument, add_limit_argument, add_progress_arguments,
                                dataset_settings_from_args, progress_enabled)
from centernet.cli.logs import setup_logging
from centernet.errors import UserError, cli


def build_parser():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src_dir", help="folder of images (jpg, jpeg, png, bmp)")
    parser.add_argument("dst_dir", help="output folder for <stem>.bin and meta.json")
    parser.add_argument("--model", default=None,
                        help="the model the bins are for, an ONNX file or a checkpoint: its recorded mean/std, "
                             "input size and keep-resolution padding are used (default: none; the dataset "
                             "settings below)")
    add_dataset_settings_arguments(parser, class_names=False)
    add_keep_res_argument(parser, "each image is placed unscaled in an input of its own size rounded up to a "
                                  "multiple of 32; the model needs a dynamic input size "
                                  "(CenterNet_pth2onnx.py --dynamic-size)")
    add_flip_argument(parser, "record in meta.json that inference uses a model exported with --flip (the flip "
                              "test in the graph, hm already averaged after the sigmoid), so that "
                              "CenterNet_postprocess_s1.py --meta decodes it as such; the bins are the same")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: one per core)")
    add_limit_argument(parser)
    add_progress_arguments(parser)
    return parser


def model_settings(args):
    """(ModelFacts whose mean, std and padding the bins follow, (H, W)): the
    --model's record, or the dataset settings' flags (COCO's by default)."""
    from centernet.core.model_facts import ModelFacts
    if args.model is None:
        settings = dataset_settings_from_args(args)
        return ModelFacts(mean=settings["mean"], std=settings["std"]), settings["input_size"]
    given = [flag for dest, flag in (("dataset_preset", "--dataset"), ("mean", "--mean"), ("std", "--std"))
             if getattr(args, dest) is not None]
    if given:
        raise UserError(f"{given[0]}: the settings come from --model {args.model}; give one or the other")
    from centernet.convert.provenance import model_file_facts
    facts = model_file_facts(args.model)
    return facts, tuple(args.input_size or facts.input_size)


@cli(interrupted="the finished bins are kept", resume="run the same command again to convert the rest")
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    facts, input_size = model_settings(args)
    args.input_size = input_size
    if min(args.input_size) <= 0 or any(v % 4 for v in args.input_size):
        raise UserError(f"--input-size {args.input_size[0]} {args.input_size[1]}: "
                        f"height and width must be positive multiples of 4 (the output stride)")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: must be at least 1")
    # Imported here, under @cli: a Ctrl-C while numpy and OpenCV load ends quietly too.
    from centernet.pipeline.preprocess import preprocess_folder
    summary = preprocess_folder(args.src_dir, args.dst_dir, tuple(args.input_size), args.workers,
                                progress=progress_enabled(args), limit=args.limit,
                                keep_res=args.keep_res, flip_test=args.flip, facts=facts)
    print(f"{summary['converted']} converted, {summary['skipped']} already done, "
          f"{len(summary['failed'])} failed, of {summary['total']} images -> {args.dst_dir}")
    if summary["failed"]:
        print(f"error: {len(summary['failed'])} of {summary['total']} images failed (listed above); "
              f"the others were converted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
