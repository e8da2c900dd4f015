"""Report figures (matplotlib, Agg backend, offscreen): bundles, directions, per-bundle F1.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global
backend switch, no display needed). Streamlines are RAS+ mm; each view is an orthographic
projection: axial (x, y) seen from above, coronal (x, z) seen from the front, sagittal (y, z)
seen from the right. Lines are drawn with one ``LineCollection`` per panel (and per bundle), and
each streamline is decimated to at most 32 points, which keeps 10^5 segments to a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

VIEWS = {  # name -> (horizontal axis, vertical axis, axis labels)
    "axial": (0, 1, ("x (R) mm", "y (A) mm")),
    "coronal": (0, 2, ("x (R) mm", "z (S) mm")),
    "sagittal": (1, 2, ("y (A) mm", "z (S) mm")),
}


def bundle_colours(n: int) -> list:
    """``n`` distinct RGBA colours: tab10 up to 10, tab20 up to 20, then tab20 + tab20b + tab20c
    (60), cycling beyond."""
    if n <= 10:
        pal = list(matplotlib.colormaps["tab10"].colors)
    elif n <= 20:
        pal = list(matplotlib.colormaps["tab20"].colors)
    else:
        pal = [c for m in ("tab20", "tab20b", "tab20c") for c in matplotlib.colormaps[m].colors]
    return [(*pal[k % len(pal)][:3], 1.0) for k in range(n)]


def _figure(size) -> Figure:
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


MAX_POINTS = 32  # points kept per streamline for drawing (Agg time grows with segments)


def _subsample(streamlines, max_streamlines: int | None, seed: int = 0,
               max_points: int = MAX_POINTS) -> list:
    """A random subset of at most ``max_streamlines`` streamlines, each decimated to at most
    ``max_points`` points (first and last kept), as float arrays."""
    streamlines = list(streamlines)
    if max_streamlines is not None and len(streamlines) > max_streamlines:
        idx = np.sort(np.random.default_rng(seed).choice(len(streamlines), max_streamlines,
                                                         replace=False))
        streamlines = [streamlines[i] for i in idx]
    out = []
    for s in streamlines:
        s = np.asarray(s, float).reshape(-1, 3)
        if len(s) < 2:
            continue
        if len(s) > max_points:
            s = s[np.unique(np.rint(np.linspace(0, len(s) - 1, max_points)).astype(int))]
        out.append(s)
    return out


def _segments(streamlines, i: int, j: int) -> np.ndarray:
    """(S, 2, 2) projected segments of all streamlines on axes (i, j)."""
    if not streamlines:
        return np.zeros((0, 2, 2))
    segs = [np.stack([s[:-1][:, [i, j]], s[1:][:, [i, j]]], axis=1) for s in streamlines]
    return np.concatenate(segs, axis=0)


def _finish_axes(ax, view: str, pts: np.ndarray) -> None:
    i, j, (xl, yl) = VIEWS[view]
    if len(pts):
        lo, hi = pts.min(0), pts.max(0)
        pad = 0.05 * float((hi - lo).max() or 1.0)
        ax.set_xlim(lo[i] - pad, hi[i] + pad)
        ax.set_ylim(lo[j] - pad, hi[j] + pad)
    ax.set_aspect("equal")
    ax.set_facecolor("black")
    ax.set_title(view)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)


def _all_points(groups) -> np.ndarray:
    pts = [s for g in groups for s in g]
    return np.concatenate(pts, axis=0) if pts else np.zeros((0, 3))


def plot_bundles(streamlines_by_bundle: dict, path, *, views=("axial", "coronal", "sagittal"),
                 max_streamlines: int | None = 200, linewidth: float = 0.4, alpha: float = 0.6,
                 title: str | None = None, dpi: int = 110) -> Path:
    """PNG with one panel per view; each bundle's streamlines (at most ``max_streamlines`` per
    bundle, random subset, each decimated to <= 32 points) drawn as polylines in the bundle's
    colour, with a legend. Returns ``path``."""
    path = Path(path)
    names = [b for b, sl in streamlines_by_bundle.items() if len(sl)]
    groups = {b: _subsample(streamlines_by_bundle[b], max_streamlines, seed=k)
              for k, b in enumerate(names)}
    colours = dict(zip(names, bundle_colours(len(names))))
    pts = _all_points(groups.values())
    fig = _figure((4.2 * len(views) + 2.2, 4.6))
    axes = fig.subplots(1, len(views), squeeze=False)
    for ax, view in zip(axes[0], views):
        i, j, _ = VIEWS[view]
        for b in names:
            lc = LineCollection([s[:, [i, j]] for s in groups[b]], colors=[colours[b]],
                                linewidths=linewidth, alpha=alpha)
            ax.add_collection(lc)
        _finish_axes(ax, view, pts)
    handles = [Line2D([], [], color=colours[b], lw=2) for b in names]
    if handles:
        fig.legend(handles, names, loc="center right", fontsize=7, frameon=False,
                   ncol=1 if len(names) <= 24 else 2)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.84 if handles else 1, 1))
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def plot_tractogram_directions(streamlines, path, *, views=("axial", "coronal", "sagittal"),
                               max_streamlines: int | None = 3000, linewidth: float = 0.3,
                               alpha: float = 0.7, title: str | None = None,
                               dpi: int = 110) -> Path:
    """PNG with one panel per view, each segment coloured by its direction (RGB = |dx|, |dy|, |dz|
    of the unit step: red left-right, green anterior-posterior, blue inferior-superior)."""
    path = Path(path)
    sl = _subsample(streamlines, max_streamlines)
    if sl:
        d = np.concatenate([np.diff(s, axis=0) for s in sl], axis=0)
        nrm = np.linalg.norm(d, axis=1, keepdims=True)
        rgb = np.abs(np.divide(d, nrm, out=np.zeros_like(d), where=nrm > 0))
        rgba = np.c_[rgb, np.full(len(rgb), alpha)]
    else:
        rgba = np.zeros((0, 4))
    pts = _all_points([sl])
    fig = _figure((4.2 * len(views), 4.6))
    axes = fig.subplots(1, len(views), squeeze=False)
    for ax, view in zip(axes[0], views):
        i, j, _ = VIEWS[view]
        ax.add_collection(LineCollection(_segments(sl, i, j), colors=rgba, linewidths=linewidth))
        _finish_axes(ax, view, pts)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def plot_f1_bars(summary: dict, path, *, key: str = "f1", title: str | None = None,
                 dpi: int = 110) -> Path:
    """Bar chart of a per-bundle score (default F1) from a metrics summary's ``bundles`` rows;
    bundles that were not found are drawn as hatched zero-height markers in grey."""
    path = Path(path)
    rows = summary.get("bundles", [])
    names = [r["bundle"] for r in rows]
    vals = np.array([float(r.get(key) or 0.0) for r in rows])
    found = np.array([bool(r.get("found")) for r in rows])
    fig = _figure((max(4.0, 0.32 * len(names) + 1.5), 3.8))
    ax = fig.subplots()
    x = np.arange(len(names))
    ax.bar(x, vals, color=np.where(found, "tab:blue", "lightgrey"), edgecolor="black", lw=0.4)
    ax.scatter(x[~found], np.zeros((~found).sum()), marker="x", color="tab:red", zorder=3,
               label="not found")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(key.upper() if len(key) <= 3 else key)
    mean = summary.get(f"mean_{key}")
    if mean is not None:
        ax.axhline(mean, color="tab:orange", ls="--", lw=1, label=f"mean {mean:.3f}")
    if (~found).any() or mean is not None:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or f"per-bundle {key} ({summary.get('mode', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path
