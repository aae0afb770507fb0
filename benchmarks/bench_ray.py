"""Images/s of the Ray Data evaluation against the plain streaming one (not a test).

    .venv/bin/python benchmarks/bench_ray.py --images 200 --threads 2

Both passes do the same work on the same images with the same model, batch
size and ONNX Runtime threads: image files in, COCO results JSON out
(stream_detections + write_results, and evaluate_on_ray). The local Ray is
limited to --cpus CPUs (default: all cores) and started before the clock
runs: a cluster is started once, not per run. Each pass is timed:

- whole pass: from the call to the results file, model loading and worker
  start-up included;
- start-up: from the call to the first image's result (for Ray: the actor
  process, its session, the first preprocessing and decoding tasks).

The CPU seconds each pass uses (all its processes: the benchmark, its
workers, and Ray's raylet, GCS, workers and actors; sampled from /proc) are
counted too; per image they measure Ray's overhead even where other work
shares the machine, which the images/s do not (a pass with more processes
gets a larger share of a busy machine).

The passes alternate (stream, Ray, stream, Ray, ...) for --rounds rounds and
the best of each is kept, so a burst of other work on the machine hits both.
The two results files are checked to be identical.

By default the data is the demo's (centernet.model.demo_data: synthetic COCO-like photos
of 360-640 px) and the model the demo weights exported at 512x512, made once
in --workdir.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from centernet.environment import COMMON, require  # noqa: E402

require(*COMMON, "onnxruntime", "torch", "onnx", "ray")  # before any third-party import

from centernet.bench.machine import cpu_model  # noqa: E402
from centernet.io.coco import write_results  # noqa: E402
from centernet.pipeline.stream import stream_detections  # noqa: E402


def demo_inputs(workdir, images):
    """Demo data with `images` images and the demo weights exported to ONNX
    (512x512), made once under workdir."""
    from centernet.model.checkpoint import load_model
    from centernet.model.demo_data import make_demo
    from centernet.convert.export import export_onnx
    data, weights = make_demo(Path(workdir) / f"demo{images}", num_images=images)
    onnx_path = Path(workdir) / "ctdet_demo_512.onnx"
    if not onnx_path.is_file():
        print(f"exporting {weights} to {onnx_path} (once)")
        export_onnx(load_model(weights), onnx_path)
    return data, onnx_path


class Timeline:
    """Stands in for tqdm in the two modules: records when each image was
    counted as done, so both passes' start-up is measured the same way."""
    marks = []

    def __init__(self, *args, initial=0, **kwargs):
        self.n = initial

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, k=1):
        self.n += k
        Timeline.marks.append((time.perf_counter(), self.n))

    def close(self):
        pass


def _tree_ticks(root):
    """{pid: utime + stime} of a process and all its live descendants."""
    parent, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        parent[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    children = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = {}, [root]
    while stack:
        pid = stack.pop()
        if pid in ticks:
            out[pid] = ticks[pid]
            stack += children.get(pid, [])
    return out


class CpuMeter:
    """CPU seconds (user + system) used during a pass by this process and all
    its descendants: the Ray processes (raylet, GCS, workers, actors) and the
    streaming evaluation's worker processes. The tree is sampled every
    `interval` s, each process's last sample kept, because a process that
    exits is not always reaped by an ancestor that counts it (cutime)."""

    def __init__(self, interval=0.2):
        import threading
        self.interval, self.root = interval, os.getpid()
        self.first = _tree_ticks(self.root)
        self.last = dict(self.first)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            self.last.update(_tree_ticks(self.root))

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.last.update(_tree_ticks(self.root))
        used = sum(t - self.first.get(pid, 0) for pid, t in self.last.items())
        return used / os.sysconf("SC_CLK_TCK")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=60, help="demo images (default: %(default)s)")
    p.add_argument("--data", default=None, help="dataset root with coco/val2017 and coco/annotations "
                                                "(default: the demo data, made in --workdir)")
    p.add_argument("--model", default=None, help="ONNX model (default: the demo weights exported at 512x512)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads in both passes (default: %(default)s)")
    p.add_argument("--batchsize", type=int, default=1, help="inference batch (default: %(default)s)")
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray (default: all, %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds, best kept (default: %(default)s)")
    p.add_argument("--workdir", default="/tmp/bench_ray", help="scratch folder, kept (default: %(default)s)")
    args = p.parse_args()

    from centernet.pipeline.ray_eval import evaluate_on_ray, init_ray

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.data:
        data = Path(args.data)
        model = Path(args.model or "CenterNet.onnx")
    else:
        data, demo_model = demo_inputs(work, args.images)
        model = Path(args.model) if args.model else demo_model
    ann = data / "coco" / "annotations" / "instances_val2017.json"
    images_dir = data / "coco" / "val2017"
    n_images = len(json.loads(ann.read_text())["images"])

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    ray = init_ray(num_cpus=args.cpus)
    ray_start = time.perf_counter() - t0
    print(f"{n_images} images, model {model}, {args.threads} ONNX Runtime threads, batch {args.batchsize}; "
          f"local Ray with {args.cpus} CPUs started in {ray_start:.1f} s (not counted)")

    import centernet.pipeline.ray_eval
    import centernet.pipeline.stream
    centernet.pipeline.stream.tqdm = centernet.pipeline.ray_eval.tqdm = Timeline

    def stream_pass():
        results, ids, errors, stats = stream_detections(model, images_dir, ann, batchsize=args.batchsize,
                                                        threads=args.threads, workers=1, progress=False)
        write_results(work / "stream.json", results)
        # the streaming pass against its own inference alone (the same warm session)
        efficiency.append(stats["end_to_end_fps"] / stats["fps"])

    def ray_pass():
        evaluate_on_ray(model, images_dir, ann, work / "ray.json", batchsize=args.batchsize, threads=args.threads,
                        progress=False)

    best, efficiency = {}, []
    try:
        for r in range(args.rounds):
            line = []
            for name, run in (("stream", stream_pass), ("ray", ray_pass)):
                Timeline.marks = []
                meter = CpuMeter()
                t = time.perf_counter()
                run()
                whole = n_images / (time.perf_counter() - t)
                cpu_per_image = meter.stop() / n_images
                first = Timeline.marks[0][0] - t
                old = best.get(name, (0, float("inf"), float("inf")))
                best[name] = (max(old[0], whole), min(old[1], first), min(old[2], cpu_per_image))
                line.append(f"{name} {whole:.3f} images/s, first result after {first:.1f} s, "
                            f"{cpu_per_image:.3f} CPU s/image")
            same = (work / "stream.json").read_bytes() == (work / "ray.json").read_bytes()
            print(f"round {r + 1}: " + "; ".join(line) + f"; results identical: {same}")
            if not same:
                print("error: the two results files differ", file=sys.stderr)
                return 1
    finally:
        ray.shutdown()
    load_after = os.getloadavg()
    (sw, ss, sc), (rw, rs, rc) = best["stream"], best["ray"]
    print()
    print(f"{'best of ' + str(args.rounds) + ' rounds':<30} {'stream':>8} {'Ray':>8} {'Ray vs stream':>14}")
    print(f"{'images/s, whole pass':<30} {sw:8.3f} {rw:8.3f} {rw / sw:14.1%}")
    print(f"{'start-up, s to first result':<30} {ss:8.1f} {rs:8.1f} {rs - ss:+13.1f}s")
    print(f"{'CPU seconds per image':<30} {sc:8.3f} {rc:8.3f} {sc / rc:14.1%}")
    print("(the last column of the CPU row is stream's CPU cost over Ray's: the images/s ratio to expect "
          "where the passes are CPU-bound and have the cores to themselves)")
    print(f"{'stream end to end / inference':<30} {max(efficiency):8.1%}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} cores); "
          f"{cpu_model()}")
    return 0




if __name__ == "__main__":
    sys.exit(main())
