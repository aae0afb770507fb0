#!/usr/bin/env python3
"""Our decoding on upstream's own network outputs, against upstream's results.

A developer check beside tools/upstream_detector.py: it runs upstream
CenterNet's MultiPoseDetector (src/lib/detectors/multi_pose.py, set up as
upstream_detector.py does: nothing compiled or downloaded) on each photo,
records the raw outputs its network gave and the geometry its pre_process
computed, feeds exactly those to the toolkit's Decoder (flip average,
multi_pose_decode, inverse affine, merge with soft_nms_39) and compares the
rows with what upstream's run() returned. The network is taken out of the
comparison, so every difference is one of decoding.

    python tools/upstream_decode_check.py --upstream UPSTREAM --checkpoint X.pth --images PHOTOS \
        [--torch-sigmoid]

--torch-sigmoid uses torch's sigmoid in place of numpy's (they differ by an
ulp at times), which makes the comparison bit for bit. Prints one JSON line
per test mode: rows, rows bit-identical, the largest box, score and joint
differences; and, with several scales, for each photo whether the rows that
go into soft_nms_39 are upstream's.
"""
import argparse
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import upstream_detector as U  # noqa: E402

HEADS = ("hm", "wh", "hps", "reg", "hm_hp", "hp_offset")
MODES = [dict(flip=False, keep_res=False, scales="1"), dict(flip=True, keep_res=False, scales="1"),
         dict(flip=True, keep_res=True, scales="1"), dict(flip=True, keep_res=True, scales="0.5,1,1.5")]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="upstream CenterNet checkout folder, or a bare git mirror of it")
    p.add_argument("--checkpoint", required=True, help="multi_pose checkpoint in upstream's layout (.pth)")
    p.add_argument("--images", required=True, help="folder of photos")
    p.add_argument("--arch", default="dla_34", help="upstream's --arch (default dla_34)")
    p.add_argument("--torch-sigmoid", action="store_true", help="torch's sigmoid in our decoding (default off)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="upstream-centernet-") as tmp:
        lib, _ = U.export_upstream(args.upstream, tmp)
        U.prepare_imports(lib)
        from detectors.detector_factory import detector_factory
        import detectors.multi_pose as upstream_multi_pose
        sys.path.append(str(Path(__file__).resolve().parent.parent))  # after upstream's own `models`
        from centernet.core.pose import merge_pose, pose_rows
        from centernet.pipeline.predictor import Decoder
        if args.torch_sigmoid:
            import centernet.core.decode as decode_module
            import centernet.core.modes as modes_module
            import centernet.core.pose as pose_module

            def torch_sigmoid(x):
                return torch.sigmoid(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
            decode_module.sigmoid = modes_module.sigmoid = pose_module.sigmoid = torch_sigmoid
        pre_nms = []
        upstream_nms = upstream_multi_pose.soft_nms_39

        def recording_nms(boxes, *a, **k):
            pre_nms.append(boxes.copy())
            return upstream_nms(boxes, *a, **k)
        upstream_multi_pose.soft_nms_39 = recording_nms
        photos = U.list_images(args.images)
        for m in MODES:
            run_args = types.SimpleNamespace(upstream="", checkpoint=args.checkpoint, images="", task="multi_pose",
                                             arch=args.arch, nms=False, out="", **m)
            opt, _ = U.build_options(run_args)
            detector = detector_factory[opt.task](opt)
            network, outputs, metas = detector.model, [], []

            class Recording(torch.nn.Module):
                def forward(self, x):
                    out = network(x)
                    outputs.append({k: v.clone().numpy() for k, v in out[-1].items()})  # before its sigmoid_
                    return out
            detector.model = Recording()
            pre_process = detector.pre_process

            def recording_pre_process(image, scale, meta=None):
                images, meta = pre_process(image, scale, meta)
                metas.append(meta)
                return images, meta
            detector.pre_process = recording_pre_process
            scales = tuple(float(s) for s in m["scales"].split(","))
            decoder = Decoder(1, K=opt.K, numpy_flip=m["flip"], hm_is_heat=m["flip"], scales=scales,
                              task="multi_pose")
            worst = dict(box=0.0, score=0.0, joint=0.0)
            rows = identical = 0
            notes = {}
            for path in photos:
                outputs.clear(), metas.clear(), pre_nms.clear()
                theirs = np.asarray(detector.run(str(path))["results"][1], np.float32)
                per_scale = [decoder.decode([out[h] for h in HEADS],
                                            [(meta["c"], meta["s"], (meta["out_height"], meta["out_width"]))])[0]
                             for out, meta in zip(outputs, metas)]
                found = decoder.merge(per_scale)
                ours = np.column_stack([found.boxes, found.scores, found.joints.reshape(len(found), -1)])
                diff = np.abs(ours.astype(np.float64) - theirs)
                worst = {"box": max(worst["box"], float(diff[:, :4].max())),
                         "score": max(worst["score"], float(diff[:, 4].max())),
                         "joint": max(worst["joint"], float(diff[:, 5:].max()))}
                rows += len(theirs)
                identical += int((diff == 0).all(axis=1).sum())
                if len(scales) > 1 and pre_nms:
                    ours_pre = merge_pose([pose_rows(d.scores, d.boxes, d.joints) for d in per_scale], scales,
                                          run_soft_nms=False)
                    differ = np.flatnonzero((ours_pre != pre_nms[-1]).any(axis=1))
                    notes[path.name] = {"pre_nms_rows_differing": int(len(differ)),
                                        "their_scores": sorted({float(s) for s in pre_nms[-1][differ, 4]})}
            print(json.dumps({"mode": m, "photos": len(photos), "rows": rows, "rows_bit_identical": identical,
                              **{f"max_abs_{k}": v for k, v in worst.items()},
                              **({"pre_nms": notes} if notes else {})}), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
