"""Pictures of an evaluation and of a benchmark, drawn with matplotlib's Agg
renderer (no display needed).

- pr_curves.png: precision against recall at IoU 0.5, 0.75 and 0.50:0.95,
  from COCOeval's accumulated precision (metrics["pr_curves"]); for keypoint
  metrics (metrics["iou_type"] == "keypoints") at the same OKS thresholds;
- per_class_ap.png: every class's AP (or keypoint AP) as a horizontal bar, best first;
- benchmark.png: images/s against batch size, a line per backend, with the
  fp32 sgemm ceiling measured in the same run as a dashed line.

A metrics dict of a model with random weights (metrics["random_weights"])
puts RANDOM_WEIGHTS_LABEL across the top of both evaluation pictures, yellow
on red, as on the demo's annotated pictures.

matplotlib is imported inside the functions, so importing this module (or
the scripts that use it) costs nothing until a picture is drawn. Redraw the
pictures of a saved run with

    python -m centernet.cli.plots run_eval_result/metrics.json      # or work/benchmark/benchmark.json
"""
import logging
import textwrap
from pathlib import Path

from centernet.constants import RANDOM_WEIGHTS_FIELD, RANDOM_WEIGHTS_LABEL
from centernet.errors import UserError
from centernet.io.coco import is_keypoint_metrics

logger = logging.getLogger(__name__)

PR_CURVES = "pr_curves.png"
PER_CLASS_AP = "per_class_ap.png"
BENCHMARK = "benchmark.png"
DPI = 120
BANNER_COLOUR = "#dc0000"       # red, as visualize.BANNER_COLOUR
BANNER_TEXT_COLOUR = "#ffff00"  # yellow


def _figure(width_in, height_in):
    """A matplotlib Figure bound to the Agg canvas: no pyplot, no global
    state, no display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    """Render to PNG in memory and write it atomically."""
    import io
    from centernet.io.binio import make_dirs, write_atomic
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    path = Path(path)
    make_dirs(path.parent)
    write_atomic(path, buf.getvalue())
    return path


def _banner(fig, metrics):
    """RANDOM_WEIGHTS_LABEL across the top of the figure where the metrics
    come from a model with random weights (before tight_layout, which makes
    room for it)."""
    if metrics.get(RANDOM_WEIGHTS_FIELD):
        fig.suptitle(RANDOM_WEIGHTS_LABEL, color=BANNER_TEXT_COLOUR, fontsize=13, fontweight="bold",
                     bbox={"facecolor": BANNER_COLOUR, "edgecolor": "none", "pad": 6})


def _pct(v):
    return "n/a" if v is None or v < 0 else f"{100 * v:.1f}"


def _kind(metrics):
    """(threshold measure, what the AP is called, detections counted per
    image): ("IoU", "AP", 100) for boxes, ("OKS", "keypoint AP", 20) for
    keypoint metrics (metrics["max_dets"] where it says)."""
    if is_keypoint_metrics(metrics):
        return "OKS", "keypoint AP", metrics.get("max_dets") or 20
    return "IoU", "AP", metrics.get("max_dets") or 100


def plot_pr_curves(metrics, path):
    """pr_curves.png from an evaluate_coco metrics dict."""
    pr = metrics.get("pr_curves") or {}
    measure, kind, dets = _kind(metrics)
    fig = _figure(7.0, 5.4)
    ax = fig.add_subplot()
    lines = (("iou50", f"{measure} 0.50", "AP50", "-"), ("iou75", f"{measure} 0.75", "AP75", "-"),
             ("iou50_95", f"{measure} 0.50:0.95 (mean)", "AP", "-"))
    colours = ("#1f77b4", "#ff7f0e", "#2ca02c")
    drawn = False
    for (key, label, stat, style), colour in zip(lines, colours):
        if pr.get(key):
            ax.plot(pr["recall"], pr[key], style, color=colour, linewidth=2,
                    label=f"{label}: {kind}{stat[2:]} {_pct(metrics.get(stat))}")
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no ground truth in the evaluated images", ha="center", va="center",
                transform=ax.transAxes)
    # A little room below 0 and beyond 1: precision is 0 past the highest
    # recall reached, and a curve on the axis line would be hidden.
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated, mean over classes)")
    n = metrics.get("num_images")
    ax.set_title(("Keypoint precision-recall (OKS), all sizes" if measure == "OKS"
                  else "Precision-recall, all object sizes") + f", up to {dets} detections per image"
                 + (f"\n{n} images" if n else ""), fontsize=11)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(loc="best", frameon=True)
    _banner(fig, metrics)
    fig.tight_layout()
    return _save(fig, path)


def plot_per_class_ap(metrics, path):
    """per_class_ap.png: one horizontal bar per class, highest AP at the top;
    classes without ground truth in the evaluated images are listed below
    the bars rather than drawn as zeros."""
    per_class = metrics.get("per_class") or {}
    measure, kind, _ = _kind(metrics)
    scored = sorted(((ap, name) for name, ap in per_class.items() if ap is not None), key=lambda t: (-t[0], t[1]))
    missing = sorted(name for name, ap in per_class.items() if ap is None)
    n = max(1, len(scored))
    note = ""
    if missing:
        note = "\n".join(textwrap.wrap(f"No ground truth in the evaluated images ({len(missing)}): "
                                       + ", ".join(missing), 130))
    note_in = 0.13 * (note.count("\n") + 1) + 0.1 if note else 0.0  # 7 pt lines
    # 0.2 inch per bar keeps 80 names at 8 pt legible without overlap.
    height = 1.3 + 0.2 * n + note_in
    fig = _figure(8.0, height)
    ax = fig.add_subplot()
    if scored:
        aps = [100 * ap for ap, _ in scored]
        names = [name for _, name in scored]
        ys = range(len(scored))
        ax.barh(ys, aps, height=0.75, color="#4c72b0", zorder=2)
        ax.set_yticks(list(ys), names, fontsize=8)
        ax.set_ylim(len(scored) - 0.5, -0.5)  # best at the top
        right = max(10.0, max(aps))  # percent; an all-zero run still gets a readable axis
        for y, v in zip(ys, aps):
            ax.text(v + right * 0.01, y, f"{v:.1f}", va="center", fontsize=7, zorder=4,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8})
        mean = metrics.get("AP")
        if mean is not None and mean >= 0:
            ax.axvline(100 * mean, color="#d62728", linestyle="--", linewidth=1.2, zorder=3,
                       label=f"{kind} {100 * mean:.1f} (mean over these classes)")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlim(0, right * 1.12)
    else:
        ax.text(0.5, 0.5, "no class has ground truth in the evaluated images", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xlabel(f"{kind} ({measure} 0.50:0.95), %")
    ax.xaxis.set_ticks_position("both")
    ax.tick_params(axis="x", labeltop=True)
    ax.grid(True, axis="x", alpha=0.3, zorder=0)
    images = metrics.get("num_images")
    ax.set_title(f"{kind} per class, {len(scored)} classes" + (f", {images} images" if images else ""),
                 fontsize=11)
    if note:
        fig.text(0.01, 0.05 / height, note, fontsize=7, va="bottom", ha="left", color="#555555")
    _banner(fig, metrics)
    fig.tight_layout(rect=(0, note_in / height, 1, 1))
    return _save(fig, path)


def write_eval_plots(metrics, folder):
    """pr_curves.png and per_class_ap.png in `folder`; returns their paths.
    Without matplotlib, says so (a logged warning) and returns []."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.warning(
            "warning: matplotlib is not installed, so no plots (pip install -r requirements.txt)")
        return []
    folder = Path(folder)
    return [plot_pr_curves(metrics, folder / PR_CURVES), plot_per_class_ap(metrics, folder / PER_CLASS_AP)]


def plot_benchmark(result, path):
    """benchmark.png from a CenterNet_benchmark.py result: images/s against
    batch size per backend, and the same run's sgemm ceiling (GFLOP/s turned
    into images/s with the network's FLOPs per image) as a dashed line."""
    rows = result.get("rows") or []
    if not rows:
        raise UserError("benchmark result has no rows to plot")
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    top = 0.0
    for name in backends:
        mine = sorted((r["batch"], r["fps"]) for r in rows if r["backend"] == name)
        ax.plot([b for b, _ in mine], [f for _, f in mine], "o-", linewidth=2, markersize=5, label=name)
        top = max(top, max(f for _, f in mine))
    sgemm = (result.get("sgemm_gflops") or {}).get("ceiling")
    flops = result.get("flops_per_image")
    if sgemm and flops:
        ceiling = sgemm * 1e9 / flops
        ax.axhline(ceiling, color="black", linestyle="--", linewidth=1.2,
                   label=f"fp32 sgemm ceiling, same run: {sgemm:g} GFLOP/s = {ceiling:.2f} images/s")
        top = max(top, ceiling)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.set_ylim(0, top * 1.15)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s")
    machine = result.get("machine") or {}
    h, w = result.get("input_size") or (512, 512)
    gflop = f", {flops / 1e9:.1f} GFLOP/image" if flops else ""
    ax.set_title(f"ctdet DLA-34 {h}x{w}{gflop}\n{machine.get('cpu', 'unknown CPU')}, "
                 f"{result.get('threads', '?')} threads", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
