"""Decode ais_bench output bins into COCO detections (recipe step: postprocess 1).

    python CenterNet_postprocess_s1.py --bin_data_path=./result/dumpout_bs1/ --dataset=./data

For every image of the annotation file reads <stem>_0.bin (hm), _1 (wh),
_2 (reg), decodes the top 100 detections and maps them back onto the image;
writes them as COCO results JSON (default save/results.json). Bins of a
multi_pose model (six per image: hm, wh, hps, reg, hm_hp, hp_offset) give
COCO keypoint results, scored against person_keypoints_val2017.json. With --meta
(prep_dataset/meta.json) each image is decoded with its own geometry and
output size, as keep-resolution preprocessing (--keep-res) needs, and as a
flip-test model (exported with --flip, preprocessed with --flip) needs.
What inference's summary (BIN_FOLDER_summary.json beside the bin folder) says
about the model, whether its weights are random, goes into a facts file beside
the results (save/results.model.json), which CenterNet_postprocess_s2.py reads.
"""
import json
import sys
from pathlib import Path

from centernet.cli.args import (ArgumentParser, add_batchsize_argument, add_flip_argument,
                                add_input_size_argument, add_progress_arguments, progress_enabled)
from centernet.cli.args import parse_args as parse_cli_args
from centernet.cli.logs import setup_logging
from centernet.constants import RANDOM_WEIGHTS_FIELD, RANDOM_WEIGHTS_NOTE
from centernet.io.coco import (class_category_ids, default_annotation_file, default_category_ids, load_annotations,
                            write_results)
from centernet.io.binio import output_bin_path
from centernet.pipeline.staged_decode import (bins_task, decode_bins_to_coco, hm_channels, images_from_annotations,
                                             images_from_meta, split_missing)
from centernet.errors import UserError, cli
from centernet.io.meta import load_meta


def inference_summary(bin_dir):
    """The summary CenterNet_infer.py wrote beside `bin_dir`
    (OUT/NAME_summary.json for OUT/NAME), or {} where there is none."""
    try:
        summary = json.loads((bin_dir.parent / f"{bin_dir.name}_summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def meta_listing_exactly(bin_dir, images):
    """A meta.json that lists exactly the images of `images` (those with
    output bins), as after CenterNet_preprocess.py --limit: the one in the
    input folder named by run_infer's summary next to `bin_dir`, or the
    recipe's prep_dataset/meta.json. None if there is no such file."""
    candidates = []
    try:
        candidates.append(Path(inference_summary(bin_dir)["input"]) / "meta.json")
    except (KeyError, TypeError):
        pass
    candidates.append(Path("prep_dataset") / "meta.json")
    stems = {im.stem for im in images}
    for path in candidates:
        try:
            listed = {Path(name).stem for name in load_meta(path)["images"]}
        except UserError:
            continue
        if listed == stems:
            return path
    return None


def class_ids(annotations, ann_path, bin_dir, image, model=None):
    """The category id of each hm channel: class j is the j-th smallest id
    of the annotation file, whose category count must be the model's class
    count as the bins show it (checked before any decoding); without an
    annotation file COCO's ids for 80 channels, else 1..C."""
    channels = hm_channels(bin_dir, image)
    if annotations is None:
        return default_category_ids() if channels in (None, 80) else list(range(1, channels + 1))
    ids = class_category_ids(annotations, num_classes=None, source=str(ann_path))
    if channels is not None and channels != len(ids):
        hm = output_bin_path(bin_dir, image.stem, 0)
        raise UserError(f"{model or bin_dir}: the model has {channels} classes ({hm} holds {channels} channels), "
                        f"but {ann_path} has {len(ids)} categories; decode with an annotation file of the model's "
                        f"own classes")
    return ids


def build_parser():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin_data_path", default="./result/dumpout_bs1/",
                        help="folder of ais_bench outputs <stem>_0.bin, _1.bin, _2.bin (default: %(default)s)")
    parser.add_argument("--dataset", default="./data",
                        help="dataset root holding coco/annotations/ (default: %(default)s)")
    parser.add_argument("--annotations", default=None,
                        help="annotation file (default: DATASET/coco/annotations/instances_val2017.json, or "
                             "person_keypoints_val2017.json for a multi_pose model's bins)")
    parser.add_argument("--meta", default=None,
                        help="prep_dataset/meta.json: take the images and their geometry from it instead of "
                             "the annotation file (which then only supplies image ids, if present) "
                             "(default: none, the annotation file's images)")
    add_input_size_argument(parser, what="network input height and width (without --meta); output maps are "
                                         "1/4 of it")
    parser.add_argument("--output", default="save/results.json",
                        help="COCO results JSON to write (default: %(default)s)")
    parser.add_argument("--K", type=int, default=100, help="detections per image (default: %(default)s)")
    add_batchsize_argument(parser, default=8, what="images decoded together", aliases=("--batch-size",),
                           dest="batch_size")
    add_flip_argument(parser, "the outputs come from a model exported with --flip, so hm is already the "
                              "averaged heatmap after the sigmoid; implied when meta.json was written with --flip")
    parser.add_argument("--upstream-rounding", action="store_true",
                        help="round box coordinates and scores to 2 decimals as upstream's results JSON does "
                             "(its published AP was computed that way) (default: off, full precision)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="skip images without output bins (with a warning) instead of failing (default: off)")
    add_progress_arguments(parser)
    return parser


@cli(interrupted="nothing written (the results file is written whole at the end)",
     resume="run the same command again to decode from the start")
def main(argv=None):
    args = parse_cli_args(build_parser(), argv)
    setup_logging()
    if args.K < 1 or args.batch_size < 1:
        raise UserError("--K and --batchsize must be at least 1")
    if min(args.input_size) <= 0 or any(v % 4 for v in args.input_size):
        raise UserError(f"--input-size {args.input_size[0]} {args.input_size[1]}: "
                        f"height and width must be positive multiples of 4 (the output stride)")
    bin_dir = Path(args.bin_data_path)
    if not bin_dir.is_dir():
        raise UserError(f"{bin_dir}: output bin folder not found")
    task = bins_task(bin_dir)  # six outputs per image: a multi_pose model's
    ann_path = Path(args.annotations) if args.annotations else default_annotation_file(args.dataset, task)

    flip = args.flip
    if args.meta:
        meta = load_meta(args.meta)
        flip = flip or bool(meta.get("flip_test"))
        annotations = load_annotations(ann_path) if ann_path.is_file() else None
        images = images_from_meta(meta, annotations, source=args.meta)
    else:
        annotations = load_annotations(ann_path)
        images = images_from_annotations(annotations, tuple(args.input_size))
        if not images:
            raise UserError(f"{ann_path}: no images listed")

    present, missing = split_missing(bin_dir, images, task)
    if missing:
        names = ", ".join(f"{im.stem}_*.bin" for im in missing[:3])
        what = f"{bin_dir}: no output bins for {len(missing)} of {len(images)} images (e.g. {names})"
        if not present:
            raise UserError(what + "; wrong --bin_data_path?")
        meta_path = None if args.meta else meta_listing_exactly(bin_dir, present)
        if meta_path and not args.allow_missing:
            # Preprocessed with --limit: evaluate those images, not every annotated one.
            raise UserError(what + f"; {meta_path} lists exactly the {len(present)} images that have outputs: "
                            f"pass --meta {meta_path} to decode those (and the same --meta to "
                            f"CenterNet_postprocess_s2.py to evaluate only them)")
        if not args.allow_missing:
            raise UserError(what + "; finish inference or pass --allow-missing to skip them")
        print(f"warning: {what}; skipped (they count as missed in the evaluation)", file=sys.stderr)

    summary = inference_summary(bin_dir)
    category_ids = class_ids(annotations, ann_path, bin_dir, present[0], summary.get("model"))
    results = decode_bins_to_coco(bin_dir, present, category_ids, K=args.K, batch_size=args.batch_size,
                                  progress=progress_enabled(args), hm_is_heat=flip,
                                  upstream_rounding=args.upstream_rounding, task=task)
    random_weights = summary.get(RANDOM_WEIGHTS_FIELD) is True
    write_results(args.output, results, facts={"model": summary.get("model"), RANDOM_WEIGHTS_FIELD: random_weights})
    hm = "flip-averaged heatmap" if flip else "logits"
    rounding = ", rounded to 2 decimals as upstream" if args.upstream_rounding else ""
    what = "people with keypoints" if task == "multi_pose" else "detections"
    print(f"{len(results)} {what} of {len(present)} images (hm as {hm}{rounding}) -> {args.output}")
    if random_weights:
        print(RANDOM_WEIGHTS_NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
