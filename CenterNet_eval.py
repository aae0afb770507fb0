#!/usr/bin/env python3
"""Streaming COCO evaluation: images -> preprocess -> inference -> decode ->
COCO AP in one pass, with no .bin files (43 GB for val2017 otherwise).

    python CenterNet_eval.py --model CenterNet.onnx --dataset ./data
    python CenterNet_eval.py --model CenterNet_dynamic.onnx --keep-res --flip --scales 0.5,0.75,1,1.25,1.5
    python CenterNet_eval.py --model ctdet_coco_dla_2x.pth --backend torch --device cuda --precision fp16 \
        --batchsize 32 --workers 8 --dataset ./data

Upstream's test modes, in any combination: fixed 512x512 (default) or
--keep-res, --flip, --scales. Keep resolution needs a model exported with
--dynamic-size. Writes the same results JSON, metrics.json and pictures (pr_curves.png,
per_class_ap.png) as CenterNet_postprocess_s1.py and CenterNet_postprocess_s2.py.

On Ray Data (a local Ray, or a cluster), with the same results:

    python CenterNet_eval.py --model CenterNet.onnx --dataset ./data --ray              # local Ray
    python CenterNet_eval.py --model CenterNet.onnx --dataset ./data --ray auto --actors 8
    python CenterNet_eval.py --model ctdet_coco_dla_2x.pth --backend torch --device cuda --ray --actors 4

With an --images folder and no annotation file, every image is annotated
instead (no AP), with or without --ray: detections per file name in
CenterNet_demo.py's detections.json format.

    python CenterNet_eval.py --model CenterNet.onnx --images photos/       # no annotations: annotate

Runs are resumable: finished blocks of images are kept in OUTPUT.parts/ and
a re-run of the same command skips them.
"""
import argparse
import json
import sys
from pathlib import Path

from centernet.environment import COMMON, require

require(*COMMON, "pycocotools")  # before any third-party import

from centernet.errors import Interrupted, UserError, cli


def build_parser():
    # The package is imported here, under main's @cli: a Ctrl-C while numpy,
    # OpenCV and ONNX Runtime load ends quietly too.
    from centernet.cli.args import (ArgumentParser, add_backend_arguments, add_batchsize_argument,
                                    add_device_arguments, add_flip_argument, add_keep_res_argument,
                                    add_limit_argument, add_progress_arguments,
                                    add_scales_argument)
    from centernet.pipeline.demo import VIS_THRESH
    from centernet.core.modes import UPSTREAM_SCALES
    from centernet.io.blocks import BLOCK_SIZE
    from centernet.runtime.ort_session import PROVIDERS
    from centernet.pipeline.stream import default_workers
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="CenterNet.onnx",
                   help="ONNX model, or the .pth checkpoint for --backend torch (default: %(default)s)")
    p.add_argument("--dataset", default="./data",
                   help="dataset root with coco/val2017 and coco/annotations (default: %(default)s)")
    p.add_argument("--annotations", default=None,
                   help="annotation file (default: DATASET/coco/annotations/instances_val2017.json, or "
                        "person_keypoints_val2017.json for a multi_pose model)")
    p.add_argument("--images", default=None, help="image folder (default: DATASET/coco/val2017)")
    add_keep_res_argument(p, "each image at its own size rounded up to a multiple of 32, unscaled; needs a "
                             "model exported with --dynamic-size")
    add_flip_argument(p, "run it here, heatmaps (after the sigmoid) and sizes averaged; implied by a model "
                         "exported with --flip")
    add_scales_argument(p, "each image resized by each, detections merged with soft-NMS", UPSTREAM_SCALES)
    p.add_argument("--upstream-rounding", action="store_true",
                   help="round box coordinates and scores to 2 decimals as upstream's results JSON does "
                        "(its published AP was computed that way) (default: full precision)")
    add_batchsize_argument(p, what="inputs of one size per inference batch")
    add_device_arguments(p, PROVIDERS)
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="preprocessing processes; with --ray, Ray Data runs as many tasks as CPUs allow "
                        "(default: %(default)s here)")
    add_limit_argument(p, "only the first N images by file name, evaluated on those alone")
    p.add_argument("--output", default=None,
                   help="COCO results JSON, or when annotating (--images without annotations) the detections JSON "
                        "(default: save/results.json, save/detections.json)")
    p.add_argument("--resultfolder", default="run_eval_result",
                   help="folder for metrics.json, stream_summary.json, per_class_ap.txt and the plots "
                        "(default: %(default)s)")
    add_progress_arguments(p)
    add_backend_arguments(p)
    ray = p.add_argument_group("Ray Data (a local Ray or a cluster)")
    ray.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     help="run on Ray Data: without ADDRESS, the cluster in $RAY_ADDRESS if set, else a new "
                          "local Ray; 'auto' joins the cluster started on this machine (ray start), "
                          "'ray://HOST:10001' or 'HOST:6379' a remote one (default: off, one process)")
    ray.add_argument("--actors", type=int, default=1,
                     help="inference actors, each with one session of the model (--backend), --threads "
                          "threads, one GPU each with --device cuda (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=BLOCK_SIZE,
                   help="images per resumable block, written as soon as it is done (default: %(default)s)")
    p.add_argument("--vis-thresh", type=float, default=VIS_THRESH,
                   help="annotating (--images without annotations): list detections with at least this score "
                        "(default: %(default)s)")
    p.add_argument("--names", default=None, metavar="FILE",
                   help="annotating (--images without annotations): class names, one per line in the model's "
                        "class order (default: the names the model records, else COCO's 80 for an 80-class "
                        "model)")
    return p


def parse_args(argv=None):
    from centernet.cli.args import parse_args as parse_cli_args
    return parse_cli_args(build_parser(), argv)


@cli(interrupted="stopped before any image was finished")
def main(argv=None):
    args = parse_args(argv)
    from centernet.cli.args import check_backend_args, torch_options_from_args
    from centernet.cli.logs import setup_logging
    setup_logging(info_stream="stdout")
    from centernet.io.coco import default_annotation_file
    from centernet.convert.provenance import model_task
    from centernet.io.media import load_names
    from centernet.core.modes import TestMode, parse_scales
    from centernet.pipeline.jobs import AnnotationJob, EvaluationJob
    if args.batchsize < 1 or args.workers < 1:
        raise UserError("--batchsize and --workers must be >= 1")
    ann = Path(args.annotations) if args.annotations else default_annotation_file(args.dataset,
                                                                                    model_task(args.model))
    images = args.images or Path(args.dataset) / "coco" / "val2017"
    mode = TestMode(keep_res=args.keep_res, flip=args.flip, scales=parse_scales(args.scales))
    check_backend_args(args)
    torch_options = torch_options_from_args(args)
    annotating = bool(args.images and not args.annotations and not ann.is_file())  # images without ground truth
    if annotating:
        output = args.output or "save/detections.json"
        print(f"no annotation file: annotating the images of {images} (detections with score >= "
              f"{args.vis_thresh:g})")
        names = load_names(args.names) if args.names else None
        job = AnnotationJob(str(images), vis_thresh=args.vis_thresh, limit=args.limit, names=names)
    else:
        output = args.output or "save/results.json"
        job = EvaluationJob(str(ann), str(images), args.limit, args.upstream_rounding)
    check_writable(output, None if annotating else args.resultfolder)
    stats = run_job(args, job, mode, output, torch_options)
    image_ids = [im.image_id for im in job.images]
    if annotating:
        print(f"mode: {stats['mode']}; wrote detections for {len(image_ids)} images to {output}")
        if stats.get("end_to_end_fps"):
            print(f"end to end {stats['end_to_end_fps']} images/s")
        if stats.get("random_weights"):
            from centernet.constants import RANDOM_WEIGHTS_NOTE
            print(RANDOM_WEIGHTS_NOTE)
        return report_errors(stats.pop("errors"), "the others are done")
    print(f"mode: {stats['mode']}; wrote detections for {len(image_ids)} images to {output}")
    # From here the detections are on disk: a Ctrl-C keeps them and says so.
    try:
        return report(args, ann, output, output, image_ids, stats.pop("errors"), stats)
    except KeyboardInterrupt:
        raise Interrupted(f"the detections are in {output}",
                          f"CenterNet_postprocess_s2.py --results {output} evaluates them") from None


def check_writable(output, resultfolder):
    """Make and test the output folders before hours of inference, not after."""
    from centernet.io.binio import check_writable as check_folder
    for folder in [Path(output).parent] + ([Path(resultfolder)] if resultfolder else []):
        check_folder(folder)


def run_job(args, job, mode, output, torch_options):
    """The job on Ray (--ray) or in this process: the same predictor, the same
    resumable blocks, the same output file. Returns the stats (with the
    error lines under "errors")."""
    from centernet.cli.args import progress_enabled
    if args.ray is not None:
        from centernet.pipeline.ray_eval import run_on_ray
        parts, stats = run_on_ray(job, args.model, output, mode, args.backend, args.batchsize, args.device,
                                  args.threads, args.actors, torch_options, block_size=args.block_size,
                                  address=args.ray, progress=progress_enabled(args))
    else:
        from centernet.runtime.backends import open_session
        from centernet.pipeline.predictor import Predictor
        from centernet.pipeline.stream import run_stream_to
        # The PyTorch network takes any input size (every test mode); an ONNX file has its own.
        session = open_session(args.model, args.backend, device=args.device, threads=args.threads,
                               input_size=None, torch_options=torch_options)
        if session.describe_line():
            print(session.describe_line())
        parts, stats = run_stream_to(job, Predictor(session, mode), output, args.model, args.backend,
                                     batchsize=args.batchsize, workers=args.workers, block_size=args.block_size,
                                     progress=progress_enabled(args))
        stats["backend"] = session.describe()
    stats["errors"] = [e for part in parts for e in part["errors"]]
    return stats


def report(args, ann, output, results, image_ids, errors, stats):
    """Score the detections, write the metrics, the tables and the plots."""
    from centernet.io.binio import make_dirs, write_atomic
    from centernet.io.coco import evaluate_coco
    from centernet.report.evaluation import write_evaluation
    if stats.get("fps") and stats.get("end_to_end_fps"):
        print(f"end to end {stats['end_to_end_fps']} images/s; inference alone {stats['fps']} images/s "
              f"({stats['end_to_end_fps'] / stats['fps']:.0%})")
    metrics = evaluate_coco(ann, results, img_ids=image_ids if args.limit else None, results_source=output)
    folder = make_dirs(args.resultfolder)
    write_atomic(folder / "stream_summary.json", (json.dumps(stats, indent=2) + "\n").encode())
    write_evaluation(metrics, folder, stats["mode"], random_weights=stats.get("random_weights", False))
    return report_errors(errors, "AP counts them as missed")


def report_errors(errors, consequence):
    """One line per unreadable image, then the count; the exit status."""
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if errors:
        print(f"error: {len(errors)} image(s) could not be read; {consequence}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
