"""Report figures (matplotlib, Agg backend, offscreen): bundles, directions, per-bundle F1.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global
backend switch, no display needed). Streamlines are RAS+ mm; each view is an orthographic
projection: axial (x, y) seen from above, coronal (x, z) seen from the front, sagittal (y, z)
seen from the right. Lines are drawn with one ``LineCollection`` per panel (and per bundle), and
each streamline is decimated to at most 32 points, which keeps 10^5 segments to a few seconds.
Given the brain mask, streamline figures draw its silhouette and outline under the lines; bundle
colours pair left and right (:func:`paired_colours`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .bundles import MANY_BUNDLES, bundle_group, grouped, sort_key, split_side

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


# CIE L*a*b* (D65) <-> sRGB, for colours chosen by lightness and hue
_XYZ_TO_RGB = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415],
                        [0.0557, -0.2040, 1.0570]])
_WHITE = np.array([0.95047, 1.0, 1.08883])


def lab_to_rgb(lab) -> np.ndarray:
    """sRGB in [0, 1] (unclipped) of CIE L*a*b* colours (..., 3)."""
    lab = np.asarray(lab, float)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * _WHITE
    lin = xyz @ _XYZ_TO_RGB.T
    return np.where(lin <= 0.0031308, 12.92 * lin,
                    1.055 * np.abs(lin) ** (1 / 2.4) * np.sign(lin) - 0.055)


def rgb_to_lab(rgb) -> np.ndarray:
    """CIE L*a*b* of sRGB colours (..., 3) in [0, 1]."""
    rgb = np.asarray(rgb, float)[..., :3]
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    t = lin @ np.linalg.inv(_XYZ_TO_RGB).T / _WHITE
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


# (L*, chroma) per side: left dark and saturated, right light, midline between
SIDE_LIGHTNESS = {"left": (50.0, 62.0), "right": (80.0, 38.0), "": (65.0, 55.0)}


def _lch(lightness: float, chroma: float, hue_deg: float) -> tuple:
    """An sRGB colour of that lightness and hue, chroma lowered until it is in gamut."""
    h = np.deg2rad(hue_deg)
    for c in np.linspace(chroma, 0, 25):
        rgb = lab_to_rgb([lightness, c * np.cos(h), c * np.sin(h)])
        if np.all((rgb >= 0) & (rgb <= 1)):
            break
    return (*np.clip(rgb, 0, 1).tolist(), 1.0)


def paired_colours(names) -> dict:
    """RGBA per bundle name: one hue per bundle base name (``AF`` of ``AF_left``), evenly spaced
    around the CIE L*C*h circle in the order given, with ``_left`` dark and saturated, ``_right``
    light (:data:`SIDE_LIGHTNESS`), so that a pair differs by about 30 L* units and
    neighbouring hues by at least a few."""
    names = list(names)
    bases = list(dict.fromkeys(split_side(n)[0] for n in names))
    hues = {b: 30.0 + 360.0 * k / max(len(bases), 1) for k, b in enumerate(bases)}
    out = {}
    for n in names:
        base, side = split_side(n)
        out[n] = _lch(*SIDE_LIGHTNESS[side], hues[base])
    return out


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


OUTLINE_COLOUR = (0.62, 0.62, 0.62)  # the brain mask's outline under the streamlines
OUTLINE_FILL = (0.13, 0.13, 0.13)


def brain_outlines(mask, affine, views=tuple(VIEWS)) -> dict:
    """The brain mask's silhouette in each view: ``{view: (xs, ys, inside)}``, ``inside`` (H, W)
    True where some mask voxel projects (world RAS+ mm, on a grid of the smallest voxel size,
    ``xs``/``ys`` its column and row centres), for :func:`draw_outline`."""
    from scipy import ndimage

    mask = np.asarray(mask) > 0
    affine = np.asarray(affine, float)
    pts = np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]
    step = float(np.linalg.norm(affine[:3, :3], axis=0).min())
    out = {}
    for view in views:
        i, j, _ = VIEWS[view]
        if not len(pts):
            continue
        lo = pts[:, [i, j]].min(0) - 2 * step
        n = np.ceil((pts[:, [i, j]].max(0) + 2 * step - lo) / step).astype(int) + 1
        ij = np.rint((pts[:, [i, j]] - lo) / step).astype(int)
        inside = np.zeros((n[1], n[0]), bool)
        inside[ij[:, 1], ij[:, 0]] = True
        inside = ndimage.binary_fill_holes(ndimage.binary_closing(inside, iterations=2))
        out[view] = (lo[0] + step * np.arange(n[0]), lo[1] + step * np.arange(n[1]), inside)
    return out


def draw_outline(ax, outline) -> object:
    """A faint silhouette and the outline (``brain_outlines`` entry) under a panel's lines;
    returns the contour set."""
    from scipy import ndimage

    xs, ys, inside = outline
    smooth = ndimage.gaussian_filter(inside.astype(float), 1.0)  # no voxel staircase
    ax.contourf(xs, ys, smooth, levels=[0.5, 2.0], colors=[OUTLINE_FILL], zorder=0)
    return ax.contour(xs, ys, smooth, levels=[0.5], colors=[OUTLINE_COLOUR], linewidths=0.8,
                      zorder=1)


def _outline_points(outlines: dict) -> np.ndarray:
    """World points spanning the outlines (so that the axis limits include the whole brain)."""
    if not outlines:
        return np.zeros((0, 3))
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for view, (xs, ys, _) in outlines.items():
        i, j, _ = VIEWS[view]
        lo[[i, j]] = np.minimum(lo[[i, j]], [xs[0], ys[0]])
        hi[[i, j]] = np.maximum(hi[[i, j]], [xs[-1], ys[-1]])
    return np.stack([np.where(np.isfinite(lo), lo, 0), np.where(np.isfinite(hi), hi, 0)])


def plot_bundles(streamlines_by_bundle: dict, path, *, dpi: int = 110, **kwargs) -> Path:
    """:func:`bundles_figure` as a PNG at ``path``; returns ``path``."""
    path = Path(path)
    bundles_figure(streamlines_by_bundle, **kwargs).savefig(path, dpi=dpi, facecolor="white")
    return path


def bundles_figure(streamlines_by_bundle: dict, *, views=("axial", "coronal", "sagittal"),
                   max_streamlines: int | None = 200, linewidth: float = 0.7, alpha: float = 0.7,
                   mask=None, affine=None, title: str | None = None) -> Figure:
    """One panel per view; each bundle's streamlines (at most ``max_streamlines`` per
    bundle, random subset, each decimated to <= 32 points) drawn as polylines in the bundle's
    colour (:func:`paired_colours`: a hue per left/right pair, left dark, right light), with a
    legend naming every bundle, over the brain mask's outline when ``mask`` and ``affine`` are
    given. With many bundles (> :data:`~.bundles.MANY_BUNDLES`) one row per family, each with
    its own colours and legend."""
    names = [b for b, sl in streamlines_by_bundle.items() if len(sl)]
    groups = {b: _subsample(streamlines_by_bundle[b], max_streamlines, seed=k)
              for k, b in enumerate(names)}
    # colours from every bundle named (empty ones too): the same bundle, the same colour in
    # every tracker's figure; rows (families) only where something is drawn
    every = list(streamlines_by_bundle)
    rows = [(f, m) for f, m in (grouped(every) if len(every) > MANY_BUNDLES else [(None, every)])
            if any(b in groups for b in m)] or [(None, [])]
    outlines = brain_outlines(mask, affine, views) if mask is not None else {}
    pts = np.concatenate([_all_points(groups.values()), _outline_points(outlines)])
    many = rows[0][0] is not None  # smaller panels, so that the legends stay readable in the report
    size = (3.3 * len(views) + 4.0, 3.7 * len(rows) + 0.4) if many else (
        4.2 * len(views) + 2.2, 4.6)
    fig = _figure(size)
    axes = fig.subplots(len(rows), len(views), squeeze=False)
    for r, (family, named) in enumerate(rows):
        colours = paired_colours(named)
        members = [b for b in named if b in groups]
        for ax, view in zip(axes[r], views):
            i, j, _ = VIEWS[view]
            if view in outlines:
                draw_outline(ax, outlines[view])
            for b in members:
                ax.add_collection(LineCollection([s[:, [i, j]] for s in groups[b]],
                                                 colors=[colours[b]], linewidths=linewidth,
                                                 alpha=alpha, zorder=2))
            _finish_axes(ax, view, pts)
            if many:
                ax.set_title(f"{family}: {view}", fontsize=9)
        handles = [Line2D([], [], color=colours[b], lw=2) for b in members]
        if handles:  # beside the last panel (follows it when the equal aspect shrinks it)
            axes[r][-1].legend(handles, members, loc="center left", bbox_to_anchor=(1.02, 0.5),
                               fontsize=8 if many else 7, frameon=False,
                               ncol=1 if len(members) <= 20 else 2)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / size[1]) if title else None)
    return fig


def plot_tractogram_directions(streamlines, path, *, dpi: int = 110, **kwargs) -> Path:
    """:func:`directions_figure` as a PNG at ``path``; returns ``path``."""
    path = Path(path)
    directions_figure(streamlines, **kwargs).savefig(path, dpi=dpi, facecolor="white")
    return path


def directions_figure(streamlines, *, views=("axial", "coronal", "sagittal"),
                      max_streamlines: int | None = 3000, linewidth: float = 0.3,
                      alpha: float = 0.7, mask=None, affine=None,
                      title: str | None = None) -> Figure:
    """One panel per view, each segment coloured by its direction (RGB = |dx|, |dy|, |dz|
    of the unit step: red left-right, green anterior-posterior, blue inferior-superior), over
    the brain mask's outline when ``mask`` and ``affine`` are given."""
    sl = _subsample(streamlines, max_streamlines)
    if sl:
        d = np.concatenate([np.diff(s, axis=0) for s in sl], axis=0)
        nrm = np.linalg.norm(d, axis=1, keepdims=True)
        rgb = np.abs(np.divide(d, nrm, out=np.zeros_like(d), where=nrm > 0))
        rgba = np.c_[rgb, np.full(len(rgb), alpha)]
    else:
        rgba = np.zeros((0, 4))
    outlines = brain_outlines(mask, affine, views) if mask is not None else {}
    pts = np.concatenate([_all_points([sl]), _outline_points(outlines)])
    fig = _figure((4.2 * len(views), 4.6))
    axes = fig.subplots(1, len(views), squeeze=False)
    for ax, view in zip(axes[0], views):
        i, j, _ = VIEWS[view]
        if view in outlines:
            draw_outline(ax, outlines[view])
        ax.add_collection(LineCollection(_segments(sl, i, j), colors=rgba, linewidths=linewidth,
                                         zorder=2))
        _finish_axes(ax, view, pts)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_f1_bars(summary: dict, path, *, key: str = "f1", title: str | None = None,
                 dpi: int = 110) -> Path:
    """Bar chart of a per-bundle score (default F1) from a metrics summary's ``bundles`` rows;
    bundles that were not found are drawn as hatched zero-height markers in grey."""
    path = Path(path)
    rows = summary.get("bundles", [])
    if len(rows) > MANY_BUNDLES:
        return _f1_pairs(summary, path, key=key, title=title, dpi=dpi)
    names = [r["bundle"] for r in rows]
    vals = np.array([float(r.get(key) or 0.0) for r in rows])
    found = np.array([bool(r.get("found")) for r in rows])
    fig = _figure((max(4.0, 0.32 * len(names) + 1.5), 3.8))
    ax = fig.subplots()
    x = np.arange(len(names))
    ax.bar(x, vals, color=np.where(found, "tab:blue", "lightgrey"), edgecolor="black", lw=0.4)
    ax.scatter(x[~found], np.zeros((~found).sum()), marker="x", color="tab:red", zorder=3,
               label="not found (grey: its score)")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(key.upper() if len(key) <= 3 else key)
    mean = summary.get(f"mean_{key}")
    if mean is not None:
        ax.axhline(mean, color="tab:orange", ls="--", lw=1, label=f"mean {mean:.3f}")
    if len(names):

        handles, labels = ax.get_legend_handles_labels()
        handles.insert(0, Patch(facecolor="tab:blue", edgecolor="black", lw=0.4))
        labels.insert(0, "found")
        ax.legend(handles, labels, fontsize=7, loc="upper right", ncol=len(labels))
    ax.set_title(title or f"per-bundle {key} ({summary.get('mode', '')})")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


SIDE_COLOURS = {"left": "tab:blue", "right": "tab:orange", "": "tab:green"}


def _f1_pairs(summary: dict, path: Path, *, key: str, title: str | None, dpi: int) -> Path:
    """Many bundles: horizontal bars, one row per bundle base name (left and right side by
    side), rows grouped by family (:mod:`.bundles`); not-found bundles marked with a red x."""
    rows = {r["bundle"]: r for r in summary.get("bundles", [])}
    labels, groups, y, ys = [], [], 0.0, {}
    for family, names in grouped(rows):
        groups.append((family, y))
        for n in names:
            base, side = split_side(n)
            if not labels or labels[-1][0] != base or labels[-1][1] != family:
                labels.append((base, family, y))
                y += 1
            ys[n] = (labels[-1][2], side)
        y += 0.6
    fig = _figure((7.5, 0.2 * y + 1.4))
    ax = fig.subplots()
    for n, (yy, side) in ys.items():
        off = {"left": -0.2, "right": 0.2, "": 0.0}[side]
        v = float(rows[n].get(key) or 0.0)
        ax.barh(yy + off, v, height=0.38 if side else 0.6, color=SIDE_COLOURS[side],
                edgecolor="black", lw=0.3)
        if not rows[n].get("found") or str(rows[n].get("found")).lower() == "false":
            ax.plot(0.01, yy + off, "x", color="tab:red", ms=4)
    ax.set_yticks([l[2] for l in labels])
    ax.set_yticklabels([l[0] for l in labels], fontsize=7)
    for family, y0 in groups:
        ax.text(1.07, y0 - 0.5, family, fontsize=8, fontweight="bold", va="top", ha="right")
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    name = key.upper() if len(key) <= 3 else key
    ax.set_xlabel(name)
    mean = summary.get(f"mean_{key}")
    handles = [Patch(facecolor=c, edgecolor="black", lw=0.3) for c in SIDE_COLOURS.values()]
    labs = ["left", "right", "midline"]
    if mean is not None:
        ax.axvline(mean, color="grey", ls="--", lw=1)
        handles.append(Line2D([], [], color="grey", ls="--"))
        labs.append(f"mean {mean:.3f}")
    handles.append(Line2D([], [], ls="", marker="x", color="tab:red"))
    labs.append("not found")
    ax.legend(handles, labs, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0),
              ncol=len(labs), frameon=False)
    ax.set_title(title or f"per-bundle {name} ({summary.get('mode', '')}), by family",
                 fontsize=10, pad=22)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


# -- fODF ------------------------------------------------------------------------------------
FOD_VIEWS = {  # name -> (world axis sliced, horizontal world axis, vertical world axis)
    "axial": (2, 0, 1),
    "coronal": (1, 0, 2),
    "sagittal": (0, 1, 2),
}


def fod_peak_slice(sh, affine, view: str, *, index: int | None = None, mask=None,
                   sh_order: int = 6, basis: str = "descoteaux07", legacy: bool = False):
    """One slice of an SH fODF volume, reoriented to world axes for display.

    ``sh`` (X, Y, Z, C) holds coefficients in the image's voxel (ijk) reference. The slice cuts
    the voxel axis closest to world axis ``FOD_VIEWS[view][0]`` at ``index`` (default: the mask's
    centre). Returns ``(amp, peaks, extent)``: ``amp`` (H, W) the fODF's maximum amplitude
    (large in coherent white matter, small in grey matter and CSF), ``peaks`` (H, W, 3) the
    unit direction of the fODF maximum in world (RAS+) coordinates, both indexed [vertical,
    horizontal] with world coordinates increasing, and ``extent`` (left, right, bottom, top) in
    mm for ``imshow(origin="lower")``."""
    import nibabel as nb
    from dipy.data import get_sphere
    from dipy.reconst.shm import sh_to_sf

    sh = np.asarray(sh)
    affine = np.asarray(affine, float)
    ornt = nb.io_orientation(affine)  # voxel axis k -> (world axis, sign)
    world_to_vox = {int(w): k for k, (w, _) in enumerate(ornt)}
    cut, h_w, v_w = FOD_VIEWS[view]
    a = world_to_vox[cut]
    if index is None:
        if mask is not None and np.any(mask):
            index = int(round(np.argwhere(np.asarray(mask) > 0)[:, a].mean()))
        else:
            index = sh.shape[a] // 2
    sl = np.take(sh, index, axis=a).astype(np.float64)           # 2-D over the other voxel axes
    keep = [k for k in range(3) if k != a]
    msk = (np.take(np.asarray(mask) > 0, index, axis=a) if mask is not None
           else np.any(sl != 0, axis=-1))
    sphere = get_sphere(name="repulsion724")
    amp = np.zeros(sl.shape[:2])
    peaks = np.zeros(sl.shape[:2] + (3,))
    if msk.any():
        sf = sh_to_sf(sl[msk], sphere, sh_order_max=sh_order, basis_type=basis, legacy=legacy)
        amp[msk] = np.clip(sf.max(axis=-1), 0, None)
        vox_dirs = sphere.vertices[np.argmax(sf, axis=-1)]
        world = vox_dirs @ affine[:3, :3].T
        peaks[msk] = world / np.linalg.norm(world, axis=1, keepdims=True)
    # reorder the two remaining voxel axes to (vertical, horizontal) world axes, increasing
    h_k, v_k = world_to_vox[h_w], world_to_vox[v_w]
    order = [keep.index(v_k), keep.index(h_k)]
    amp = np.transpose(amp, order)
    peaks = np.transpose(peaks, order + [2])
    if ornt[v_k, 1] < 0:
        amp, peaks = amp[::-1], peaks[::-1]
    if ornt[h_k, 1] < 0:
        amp, peaks = amp[:, ::-1], peaks[:, ::-1]
    # world extent of the slice (voxel centres +- half a voxel along each displayed axis)
    corners = np.array([[0, 0, 0], sh.shape[:3]], float) - 0.5
    box = nb.affines.apply_affine(affine, np.array(np.meshgrid(*corners.T)).reshape(3, -1).T)
    extent = (box[:, h_w].min(), box[:, h_w].max(), box[:, v_w].min(), box[:, v_w].max())
    return amp, peaks, extent


def plot_fod_peaks(sh, affine, path, *, mask=None, sh_order: int = 6,
                   basis: str = "descoteaux07", legacy: bool = False,
                   views=("axial", "coronal", "sagittal"), peak_lines: bool = True,
                   title: str | None = None, dpi: int = 110) -> Path:
    """PNG of the fODF: per view, the central slice coloured by the fODF peak direction (RGB =
    |x|, |y|, |z| of the world peak; brightness = the peak amplitude over its 99th percentile,
    like a colour-FA map), with each voxel's peak drawn as a short white line where the
    brightness is above 0.3 (the in-plane projection of the peak). Views through fewer than 5
    voxels (thin slabs) are left out."""
    path = Path(path)
    slices = {v: fod_peak_slice(sh, affine, v, mask=mask, sh_order=sh_order, basis=basis,
                                legacy=legacy) for v in views}
    # a thin slab (e.g. 3 slices): drop the views that would be a few pixels high
    thick = [v for v in views if min(slices[v][0].shape) >= 5]
    views = thick or list(views)
    fig = _figure((4.2 * len(views), 4.8))
    axes = fig.subplots(1, len(views), squeeze=False)
    for ax, view in zip(axes[0], views):
        amp, peaks, ext = slices[view]
        scale = float(np.percentile(amp[amp > 0], 99)) if np.any(amp > 0) else 1.0
        bright = np.clip(amp / (scale or 1.0), 0, 1)
        rgb = np.abs(peaks) * bright[..., None]
        ax.imshow(rgb, origin="lower", extent=ext, interpolation="nearest")
        if peak_lines:
            _, h_w, v_w = FOD_VIEWS[view]
            H, W = amp.shape
            xs = np.linspace(ext[0], ext[1], W + 1)
            ys = np.linspace(ext[2], ext[3], H + 1)
            cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
            half = 0.45 * min(xs[1] - xs[0], ys[1] - ys[0])
            jj, ii = np.nonzero(bright > 0.3)
            d = peaks[jj, ii][:, [h_w, v_w]]
            centre = np.c_[cx[ii], cy[jj]]
            segs = np.stack([centre - half * d, centre + half * d], axis=1)
            ax.add_collection(LineCollection(segs, colors="white", linewidths=0.35, alpha=0.8))
        _, h_w, v_w = FOD_VIEWS[view]
        ax.set_title(f"{view}: fODF peak direction", fontsize=9)
        ax.set_xlabel(VIEWS[view][2][0])
        ax.set_ylabel(VIEWS[view][2][1])
        ax.set_xlim(ext[0], ext[1])
        ax.set_ylim(ext[2], ext[3])
        ax.set_facecolor("black")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


# -- group level -----------------------------------------------------------------------------
def plot_group_metrics(rows: list[dict], path, *,
                       keys=(("precision", "precision"), ("mean_f1", "mean F1")),
                       title: str | None = None, dpi: int = 110) -> Path:
    """One panel per ``(key, label)``: a column per tracker (``rows[i]["model"]``), a point per
    subject/series (``rows[i][key]``, coloured by ``subject``; missing values skipped), the same
    series joined across trackers by a thin grey line, and the tracker's mean as a black bar."""
    path = Path(path)
    models = sorted({r["model"] for r in rows})
    series = list(dict.fromkeys(_series_label(r) for r in rows))
    colours = dict(zip(series, bundle_colours(len(series))))
    offsets = dict(zip(series, np.linspace(-0.15, 0.15, len(series)) if len(series) > 1
                       else [0.0]))
    fig = _figure((len(keys) * max(3.2, 1.1 * len(models) + 1.6)
                   + (1.6 if len(series) <= 12 else 0), 3.8))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, (key, label) in zip(axes, keys):
        top = 0.0
        for sname in series:
            pts = [(x + offsets[sname], float(r[key])) for x, m in enumerate(models)
                   for r in rows if r["model"] == m and _series_label(r) == sname
                   and r.get(key) not in (None, "", "n/a")]
            if not pts:
                continue
            xs, ys = np.array(pts).T
            ax.plot(xs, ys, color="grey", lw=0.6, alpha=0.6, zorder=2)
            ax.scatter(xs, ys, s=30, color=colours[sname], edgecolor="black", lw=0.5,
                       zorder=3, label=sname)
            top = max(top, ys.max())
        for x, m in enumerate(models):
            vals = [float(r[key]) for r in rows
                    if r["model"] == m and r.get(key) not in (None, "", "n/a")]
            if vals:
                ax.hlines(np.mean(vals), x - 0.3, x + 0.3, color="black", lw=1.8, zorder=4)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=30 if len(models) > 3 else 0)
        ax.set_xlim(-0.6, len(models) - 0.4)
        ax.set_ylim(0, min(1.02, max(0.05, 1.2 * top)))
        ax.set_ylabel(label)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    if len(series) <= 12:
        handles = [Line2D([], [], ls="", marker="o", mfc=colours[s], mec="black") for s in series]
        handles.append(Line2D([], [], color="black", lw=1.8))
        axes[-1].legend(handles, [*series, "mean"], loc="center left",
                        bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title or "per tracker: one point per subject, bar = mean", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def _series_label(row: dict) -> str:
    """``sub-01[_ses-A][_acq-x][_run-1]`` from a row's id columns (``n/a`` skipped)."""
    keys = (("subject", "sub"), ("session", "ses"), ("acquisition", "acq"), ("run", "run"))
    return "_".join(f"{p}-{row[k]}" for k, p in keys if row.get(k) not in (None, "", "n/a"))


def plot_group_bundle_heatmap(rows: list[dict], path, *, key: str = "f1",
                              title: str | None = None, dpi: int = 110) -> Path:
    """Heat map of the mean per-bundle score (default F1) over subjects: bundles as columns (in
    first-seen order), trackers (``model``) as rows, values written in the cells."""
    path = Path(path)
    bundles = list(dict.fromkeys(r["bundle"] for r in rows))
    if len(bundles) > MANY_BUNDLES:
        bundles = sorted(bundles, key=sort_key)
    models = sorted({r["model"] for r in rows})
    grid = np.full((len(models), len(bundles)), np.nan)
    for i, m in enumerate(models):
        for j, b in enumerate(bundles):
            vals = [float(r[key]) for r in rows if r["model"] == m and r["bundle"] == b
                    and r.get(key) not in (None, "")]
            if vals:
                grid[i, j] = np.mean(vals)
    many = len(bundles) > MANY_BUNDLES  # then bundles run down the rows, models across
    cols, rows_ = (models, bundles) if many else (bundles, models)
    grid = grid.T if many else grid
    size = ((0.9 * len(models) + 3.0, 0.2 * len(bundles) + 1.8) if many
            else (max(5.0, 0.42 * len(bundles) + 2.0), 0.4 * len(models) + 1.9))
    fig = _figure(size)
    ax = fig.subplots()
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(rows_)):
        for j in range(len(cols)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}"[1:] if 0 <= grid[i, j] < 1 else
                        f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=30 if many else 60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows_)))
    ax.set_yticklabels([f"{b}  [{bundle_group(b)[:5]}]" for b in rows_] if many else rows_,
                       fontsize=7 if many else 8)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01,
                 label=f"mean {key.upper() if len(key) <= 3 else key}")
    name = key.upper() if len(key) <= 3 else key
    ax.set_title(title or f"mean per-bundle {name} over subjects", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


# -- registration ----------------------------------------------------------------------------
def plot_registration(fa, affine, template, matrix, path, *, mask=None, step_mm: float = 1.5,
                      title: str | None = None, dpi: int = 110) -> Path:
    """PNG of a registration, as fMRIPrep's reports show one: the subject's FA (grey) in three
    central slices of a RAS+ grid over its brain, with the template's edges drawn on top — the
    outline of its brain mask (cyan) and its FA = 0.25 contour (yellow, the major white-matter
    tracts) — mapped into the subject through ``matrix`` (template mm -> subject mm)."""
    from ..fodf.grid import resample_to_grid

    path = Path(path)
    fa = np.asarray(fa, np.float32)
    where = np.argwhere(np.asarray(mask) > 0 if mask is not None else fa > 0)
    if not len(where):
        where = np.argwhere(np.ones(fa.shape, bool))
    pts = where @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    lo, hi = pts.min(0) - 5.0, pts.max(0) + 5.0
    shape = tuple(int(n) for n in np.ceil((hi - lo) / step_mm).astype(int) + 1)
    grid = np.diag([step_mm] * 3 + [1.0])
    grid[:3, 3] = lo
    sub = resample_to_grid(fa, affine, grid, shape, order=1)
    to_grid = np.asarray(matrix, float) @ template.affine  # template voxel -> subject mm
    t_fa = resample_to_grid(template.fa, to_grid, grid, shape, order=1)
    t_mask = resample_to_grid(template.mask.astype(np.float32), to_grid, grid, shape, order=1)
    centre = [int(round(c)) for c in (np.asarray(shape) - 1) / 2]
    fig = _figure((4.2 * 3, 4.6))
    axes = fig.subplots(1, 3, squeeze=False)[0]
    for ax, view in zip(axes, ("axial", "coronal", "sagittal")):
        cut, h_w, v_w = FOD_VIEWS[view]
        take = lambda v: np.take(v, centre[cut], axis=cut)  # noqa: E731
        # the slice's axes are (horizontal, vertical) world axes (h_w < v_w): rows = vertical
        img, tf, tm = take(sub).T, take(t_fa).T, take(t_mask).T
        ext = (lo[h_w], lo[h_w] + step_mm * (shape[h_w] - 1),
               lo[v_w], lo[v_w] + step_mm * (shape[v_w] - 1))
        ax.imshow(img, origin="lower", extent=ext, cmap="gray", vmin=0, vmax=0.8,
                  interpolation="bilinear")
        xs = np.linspace(ext[0], ext[1], img.shape[1])
        ys = np.linspace(ext[2], ext[3], img.shape[0])
        if np.ptp(tm) > 0:
            ax.contour(xs, ys, tm, levels=[0.5], colors="cyan", linewidths=0.8)
        if tf.max() > 0.25:
            ax.contour(xs, ys, tf, levels=[0.25], colors="yellow", linewidths=0.6)
        ax.set_title(f"{view}", fontsize=9)
        ax.set_xlabel(VIEWS[view][2][0])
        ax.set_ylabel(VIEWS[view][2][1])
    fig.suptitle(title or "registration to the model's template: subject FA, template edges "
                 "(cyan: brain outline, yellow: FA 0.25)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path
