"""Evaluate COCO results with pycocotools (recipe step: postprocess 2).

    python CenterNet_postprocess_s2.py --dataset=./data

Prints COCOeval's summary (12 lines for boxes; 10 for keypoint results,
scored by OKS against a person_keypoints file) and the best and worst 5 classes, and
writes the numbers to run_eval_result/metrics.json (fractions 0..1), the
whole per-class AP table to run_eval_result/per_class_ap.txt, and the
pictures pr_curves.png (precision-recall) and per_class_ap.png beside them.
Where the results come from a model with random weights (the facts file
beside them, save/results.model.json, written by CenterNet_postprocess_s1.py
and CenterNet_eval.py, says so), metrics.json, the pictures and the summary
say so too.
"""
import sys
from pathlib import Path

from centernet.environment import COMMON, require

require(*COMMON, "pycocotools")  # before any third-party import

from centernet.cli.args import ArgumentParser
from centernet.cli.logs import setup_logging
from centernet.constants import RANDOM_WEIGHTS_FIELD
from centernet.io.coco import (coco_from_dataset, default_annotation_file, evaluate_coco,
                               load_annotations, load_results, read_results_facts, results_iou_type)
from centernet.report.evaluation import write_evaluation
from centernet.io.meta import load_meta
from centernet.errors import UserError, cli


def build_parser():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="./data",
                        help="dataset root holding coco/annotations/ (default: %(default)s)")
    parser.add_argument("--annotations", default=None,
                        help="annotation file (default: DATASET/coco/annotations/instances_val2017.json, or "
                             "person_keypoints_val2017.json for keypoint results)")
    parser.add_argument("--results", default="save/results.json",
                        help="COCO results JSON to evaluate (default: %(default)s)")
    parser.add_argument("--resultfolder", default="run_eval_result",
                        help="folder for metrics.json, per_class_ap.txt, pr_curves.png and per_class_ap.png "
                             "(default: %(default)s)")
    parser.add_argument("--meta", default=None,
                        help="prep_dataset/meta.json: evaluate only the images it lists (e.g. after "
                             "CenterNet_preprocess.py --limit) (default: none, every annotated image)")
    return parser


@cli(interrupted="nothing written", resume="run the same command again")
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging(info_stream="stdout")
    results = load_results(args.results)
    # Keypoint results (a multi_pose model's) are scored on the keypoint annotations.
    task = "multi_pose" if results_iou_type(results) == "keypoints" else "ctdet"
    ann_path = Path(args.annotations) if args.annotations else default_annotation_file(args.dataset, task)

    annotations = load_annotations(ann_path, require_annotations=True)
    img_ids = None
    if args.meta:
        listed = set(load_meta(args.meta)["images"])
        img_ids = [img["id"] for img in annotations["images"] if Path(img["file_name"]).name in listed]
        if not img_ids:
            raise UserError(f"{args.meta}: none of its images are in {ann_path}")
    covered = {r.get("image_id") for r in results if isinstance(r, dict)}
    wanted = set(img_ids) if img_ids is not None else {img["id"] for img in annotations["images"]}
    metrics = evaluate_coco(coco_from_dataset(annotations), results, img_ids=img_ids, results_source=args.results,
                            annotations_source=ann_path)
    if len(covered & wanted) < len(wanted):
        print(f"warning: {args.results} has detections for {len(covered & wanted)} of the {len(wanted)} evaluated "
              f"images; the others count as missed", file=sys.stderr)
    facts = read_results_facts(args.results)
    write_evaluation(metrics, args.resultfolder, random_weights=facts.get(RANDOM_WEIGHTS_FIELD) is True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
