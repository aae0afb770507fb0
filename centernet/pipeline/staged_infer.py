"""ONNX Runtime inference over a folder of .bin inputs, in ais_bench's layout.

`run_folder` reads every `*.bin` of a folder in name order, runs it in batches
(a partial last batch included) and writes output i of `<stem>.bin` to
`OUT/NAME/<stem>_<i>.bin`, exactly as `python -m ais_bench` does for an .om
model. Where the folder has preprocessing's meta.json, each bin's shape comes
from it, so keep-resolution bins of many sizes run through one dynamic-size
session, equal sizes batched together. `run_loop` is ais_bench's pure-throughput mode (`--loop N`). Both report
throughput and latency and write them to `OUT/NAME_summary.json` (run_folder)
or return them (run_loop), with random_weights: whether the model's weights
are random (Capabilities.random_weights), which CenterNet_postprocess_s1.py
reads from the summary file and passes on.
"""
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from centernet.io.binio import input_bins, make_dirs, output_bin_path, read_bin, write_atomic, write_bin
from centernet.errors import Interrupted, UserError, WriteError
from centernet.io.meta import META_NAME, input_sizes, load_meta
from centernet.core.timing import latency_stats, time_batches
from centernet.pipeline.predictor import EXPORT_DYNAMIC_HINT, batches_by_shape
from centernet.runtime.backends import as_session, open_ort_session

def model_input_shape(session, input_size=None, required=True):
    """(static batch or None, (3, H, W)) of a Session's input: its fixed size,
    or `input_size` (H, W) for a dynamic one, which must agree with a fixed
    one. With required=False a dynamic size left unfilled is (None, None)."""
    caps = session.capabilities
    fixed = caps.input_size
    if fixed is not None:
        if input_size is not None and tuple(input_size) != tuple(fixed):
            raise UserError(f"--input-size {tuple(input_size)} does not match the model's fixed input {tuple(fixed)}")
        hw = tuple(fixed)
    elif input_size is not None:
        hw = tuple(int(v) for v in input_size)
    elif required:
        raise UserError("the model has a dynamic input size; give --input-size H W")
    else:
        hw = (None, None)
    return caps.static_batch, (3, *hw)


def bin_shapes(input_dir, files, session, model, input_size=None):
    """{path: (3, H, W)} of every input bin: from meta.json's input_size where
    the folder has one (keep resolution: many sizes), else the model's fixed
    size or --input-size. Also checks that a flip-test meta.json goes with a
    flip-test model. Sizes the model cannot take are a UserError."""
    _, default = model_input_shape(session, input_size, required=False)
    meta_path = Path(input_dir) / META_NAME
    sizes = {}
    if meta_path.is_file():
        meta = load_meta(meta_path)
        _check_flip(meta, session, model, meta_path)
        _check_settings(meta, session, model, meta_path)
        sizes = input_sizes(meta, meta_path)
    fixed = tuple(default[1:]) if None not in default else None
    shapes = {}
    for path in files:
        hw = sizes.get(path.stem, fixed) if input_size is None else tuple(input_size)
        if hw is None:
            raise UserError(f"{path}: no entry in {meta_path} and the model has a dynamic input size; "
                            f"give --input-size H W")
        if fixed is not None and hw != fixed:
            raise UserError(_size_mismatch(model, fixed, path.name, hw, meta_path if sizes else None,
                                           keep_res=sizes and meta.get("keep_res")))
        shapes[path] = (default[0], *hw)
    return shapes


def _size_mismatch(model, fixed, name, hw, meta_path, keep_res):
    """What to do when bins do not have the fixed-size model's input size:
    keep-resolution bins need a dynamic-size export; fixed-size bins of
    another size need an export at that size (or preprocessing at the model's)."""
    head = f"{model}: fixed {fixed[0]}x{fixed[1]} input, but {name} is {hw[0]}x{hw[1]}"
    if keep_res:
        return (f"{head} ({meta_path} says keep-resolution bins); export your checkpoint with a dynamic input "
                f"size: {EXPORT_DYNAMIC_HINT}")
    source = f" ({meta_path} says fixed {hw[0]}x{hw[1]} bins)" if meta_path else ""
    return (f"{head}{source}; export your checkpoint at that size (CenterNet_pth2onnx.py CHECKPOINT.pth OUT.onnx "
            f"--input-size {hw[0]} {hw[1]}) or preprocess again with --input-size {fixed[0]} {fixed[1]}")


def _check_settings(meta, session, model, meta_path):
    """Bins normalised with other numbers than the model's mean/std, or padded
    by another rule, would run without error and give wrong detections."""
    facts = session.capabilities.facts
    if facts is None:  # an .om keeps no record: its ONNX file's went into preprocessing
        return
    wanted = {"mean": list(facts.mean), "std": list(facts.std)}
    if meta.get("keep_res"):  # fixed-size bins do not depend on it
        wanted["pad"] = facts.pad
    differ = [f"{k} {meta[k]} (the model's: {wanted[k]})" for k in wanted if k in meta and meta[k] != wanted[k]]
    if differ:
        raise UserError(f"{meta_path}: its bins were made with other settings than {model} records: "
                        f"{'; '.join(differ)}; run CenterNet_preprocess.py again with --model {model}")


def _check_flip(meta, session, model, meta_path):
    in_graph = session.capabilities.flip_in_graph
    if bool(meta.get("flip_test")) != in_graph:
        if in_graph:
            raise UserError(f"{model} has the flip test in its graph (exported with --flip) but {meta_path} was "
                            f"written without --flip; re-run CenterNet_preprocess.py with --flip (finished bins "
                            f"are kept) so that decoding knows hm is already averaged")
        raise UserError(f"{meta_path} was written with --flip but {model} has no flip test in its graph; "
                        f"export it with CenterNet_pth2onnx.py --flip")


def _run_batch(session, batch, static_batch):
    n = len(batch)
    if static_batch is not None and n != static_batch:
        # A static-batch model (like an .om) gets its last batch zero-padded.
        batch = np.concatenate([batch, np.zeros((static_batch - n, *batch.shape[1:]), batch.dtype)])
    t0 = time.perf_counter()
    outputs = session.run(batch)
    return [o[:n] for o in outputs], time.perf_counter() - t0


def _output_nbytes(session, chw):
    """Bytes of each output file of one image of input shape chw, from the
    session's heads and the output stride, without running it."""
    return [int(np.prod(shape)) * 4 for shape in session.capabilities.output_shapes(chw[1:])]


def group_batches(files, shapes, batchsize):
    """Batches of at most `batchsize` files of one shape: files sorted by
    (shape, stem), so each size's images run together."""
    order = sorted(files, key=lambda p: (shapes[p], p.stem))
    return list(batches_by_shape(order, lambda p: shapes[p], batchsize))


def _outputs_complete(out_dir, stem, sizes):
    return all(output_bin_path(out_dir, stem, i).is_file()
               and output_bin_path(out_dir, stem, i).stat().st_size == size
               for i, size in enumerate(sizes))


def run_folder(model, input_dir, output_root, output_dirname, batchsize=1, device="cpu",
               threads=0, input_size=None, progress=True, session=None, skip_existing=False):
    """Infer every `<stem>.bin` of `input_dir`; returns the summary dict.

    skip_existing: leave out inputs whose outputs are all there with the right
    size (outputs are written atomically, so those are complete): a re-run
    after an interruption resumes instead of starting over.
    A failed write (disk full) stops the run at once with a WriteError, and
    Ctrl-C with an Interrupted; both say how many images have complete
    outputs, which are kept."""
    if batchsize < 1:
        raise UserError(f"--batchsize must be >= 1, got {batchsize}")
    files = input_bins(input_dir)
    if not files:
        raise UserError(f"{input_dir}: no .bin files to infer")
    session = as_session(session, model) if session is not None else open_ort_session(model, device=device,
                                                                                       threads=threads)
    static_batch, _ = model_input_shape(session, input_size, required=False)
    if static_batch is not None and batchsize != static_batch:
        raise UserError(f"{model}: the model has a fixed batch of {static_batch}; use --batchsize {static_batch}")
    shapes = bin_shapes(input_dir, files, session, model, input_size)
    out_dir = make_dirs(Path(output_root) / output_dirname)
    skipped = 0
    if skip_existing:
        todo = [p for p in files if not _outputs_complete(out_dir, p.stem, _output_nbytes(session, shapes[p]))]
        skipped, files = len(files) - len(todo), todo
    if not files:
        return {"images": 0, "skipped": skipped, "output": str(out_dir),
                "random_weights": session.capabilities.random_weights}

    batches = group_batches(files, shapes, batchsize)
    timings = []
    written = [0]  # images whose outputs are complete, counted by the writer thread
    start = time.perf_counter()

    def kept():
        return (f"{skipped + written[0]} of {skipped + len(files)} images have complete outputs, "
                f"kept in {out_dir}")

    # Read the next batch and write the last outputs on worker threads while
    # the current batch runs: numpy file I/O releases the GIL. The bar is
    # the innermost context, so it is closed before any error is printed.
    try:
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer, \
                tqdm(total=len(files), unit="img", desc="infer", disable=not progress) as bar:
            read = lambda paths: np.stack([read_bin(p, shapes[p]) for p in paths])  # noqa: E731
            pending = reader.submit(read, batches[0])
            write = None
            for i, paths in enumerate(batches):
                data = pending.result()
                if i + 1 < len(batches):
                    pending = reader.submit(read, batches[i + 1])
                outputs, seconds = _run_batch(session, data, static_batch)
                timings.append(seconds)
                if write is not None:
                    write.result()  # the last batch's write error (a full disk) stops the run now
                write = writer.submit(_write_outputs, out_dir, paths, outputs, written)
                bar.update(len(paths))
            write.result()
    except WriteError as e:
        raise WriteError(f"{e}; {kept()}") from None
    except KeyboardInterrupt:
        raise Interrupted(kept()) from None
    summary = latency_stats(timings, len(files))
    summary.update(model=str(model), batchsize=batchsize, device=device, threads=threads,
                   skipped=skipped, input_sizes=len({shapes[p] for p in files}),
                   wall_seconds=round(time.perf_counter() - start, 3), input=str(input_dir),
                   output=str(out_dir), backend=session.describe(),
                   random_weights=session.capabilities.random_weights)
    write_atomic(Path(output_root) / f"{output_dirname}_summary.json",
                 (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _write_outputs(out_dir, paths, outputs, written):
    for j, path in enumerate(paths):
        for i, out in enumerate(outputs):
            write_bin(output_bin_path(out_dir, path.stem, i), out[j])
        written[0] += 1


def run_loop(model, loop=20, batchsize=1, device="cpu", threads=0, input_size=None, warmup=2,
             session=None, progress=False):
    """Pure inference throughput on random input: `loop` timed batches after
    `warmup` untimed ones. Returns the summary dict."""
    session = as_session(session, model) if session is not None else open_ort_session(model, device=device,
                                                                                       threads=threads)
    static_batch, chw = model_input_shape(session, input_size)
    if static_batch is not None:
        batchsize = static_batch
    x = np.random.default_rng(0).standard_normal((batchsize, *chw)).astype(np.float32)
    timings = time_batches(session.run, x, loop, warmup=warmup,
                           progress=progress, desc=f"bs{batchsize}")
    summary = latency_stats(timings, loop * batchsize)
    summary.update(model=str(model), batchsize=batchsize, device=device, threads=threads, loop=loop,
                   backend=session.describe(), random_weights=session.capabilities.random_weights)
    return summary


def format_summary(summary):
    """One human line: throughput and latency."""
    if not summary["images"]:
        return f"nothing to do: all {summary.get('skipped', 0)} inputs already have outputs"
    skipped = f" ({summary['skipped']} already done, skipped)" if summary.get("skipped") else ""
    return (f"{summary['images']} images in {summary['infer_seconds']:.2f}s of inference: "
            f"{summary['fps']} fps, latency per batch of {summary['batchsize']} "
            f"mean {summary['latency_ms_mean']} ms, p50 {summary['latency_ms_p50']} ms, "
            f"p99 {summary['latency_ms_p99']} ms{skipped}")
