"""Report figures (issue 18 point 7): left/right bundles get clearly different colours, every
bundle of a panel its own, a legend naming them; streamlines drawn over the brain's outline."""

import itertools

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.contour import ContourSet

from gentract_bids.phantom.anatomy import template_geometry
from gentract_bids.phantom.atlas import load_atlas
from gentract_bids.reports import figures
from gentract_bids.reports.bundles import grouped, split_side

PAIR_DELTA_E = 25.0  # CIE76: left and right of a bundle (the old tab20 pairs: 14 at worst)
ANY_DELTA_E = 9.0  # any two bundles drawn in one panel


def delta_e(c1, c2) -> float:
    return float(np.linalg.norm(figures.rgb_to_lab(c1[:3]) - figures.rgb_to_lab(c2[:3])))


def test_lab_conversion():
    assert figures.rgb_to_lab([1, 1, 1]) == pytest.approx([100, 0, 0], abs=0.05)
    assert figures.rgb_to_lab([1, 0, 0]) == pytest.approx([53.24, 80.09, 67.20], abs=0.1)
    rgb = np.random.default_rng(0).random((50, 3))
    assert figures.lab_to_rgb(figures.rgb_to_lab(rgb)) == pytest.approx(rgb, abs=1e-6)


def _check_panel(names):
    colours = figures.paired_colours(names)
    pairs = [(n, m) for n, m in itertools.combinations(names, 2)
             if split_side(n)[0] == split_side(m)[0]]
    assert pairs or not any(split_side(n)[1] for n in names)
    for n, m in pairs:
        assert delta_e(colours[n], colours[m]) > PAIR_DELTA_E, (n, m)
    worst = min(delta_e(colours[n], colours[m]) for n, m in itertools.combinations(names, 2))
    assert worst > ANY_DELTA_E, worst
    # left darker than right: the legend's key
    for n, m in pairs:
        left, right = (n, m) if split_side(n)[1] == "left" else (m, n)
        assert figures.rgb_to_lab(colours[left][:3])[0] < figures.rgb_to_lab(
            colours[right][:3])[0] - 20


def test_tube_phantom_colours():
    names = [b.name for b in template_geometry().bundles]
    assert len(names) == 22
    _check_panel(names)


def test_human_phantom_colours_per_family_panel():
    names = load_atlas().names
    assert len(names) == 72
    for _, members in grouped(names):  # one row of panels per family
        _check_panel(members)


def _streamlines(centre, n=6, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(-15, 15, 20)[:, None]
    return [np.asarray(centre) + t * rng.normal(size=3) / 3 + rng.normal(size=3)
            for _ in range(n)]


def test_bundle_figure_legend_names_every_bundle():
    names = ["CST_L", "CST_R", "AF_L", "AF_R", "CC_Body"]
    fig = figures.bundles_figure({n: _streamlines([5.0 * k, 0, 0], seed=k)
                                  for k, n in enumerate(names)})
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert [t.get_text() for t in legends[0].get_texts()] == names
    many = load_atlas().names
    fig = figures.bundles_figure({n: _streamlines([0, 0, 0], n=2, seed=k)
                                  for k, n in enumerate(many)}, max_streamlines=2)
    labels = [t.get_text() for ax in fig.axes if ax.get_legend()
              for t in ax.get_legend().get_texts()]
    assert sorted(labels) == sorted(many)  # each bundle named once, rows by family
    assert len(fig.axes) == 3 * len(grouped(many))
    # a bundle keeps its colour when others are empty (the same in every tracker's figure)
    some = {n: _streamlines([0, 0, 0], n=2) if n in ("AF_left", "CST_right") else []
            for n in many}
    fig = figures.bundles_figure(some)
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    shown = {t.get_text(): h.get_color() for lg in legends
             for t, h in zip(lg.get_texts(), lg.legend_handles)}
    assert set(shown) == {"AF_left", "CST_right"} and len(fig.axes) == 3 * 2
    for name, colour in shown.items():
        family = [m for _, m in grouped(many) if name in m][0]
        assert colour == figures.paired_colours(family)[name]


def _sphere(radius_mm=20.0, voxel=4.0, n=16):
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = -voxel * (n - 1) / 2
    ijk = np.indices((n, n, n)).reshape(3, -1).T
    xyz = ijk * voxel + affine[:3, 3]
    mask = (np.linalg.norm(xyz, axis=1) <= radius_mm).reshape(n, n, n)
    return mask, affine


def test_outline_is_the_masks_silhouette():
    mask, affine = _sphere()
    for view, (xs, ys, inside) in figures.brain_outlines(mask, affine).items():
        gx, gy = np.meshgrid(xs, ys)
        r = np.hypot(gx, gy)
        assert inside[r < 16].all() and not inside[r > 24].any(), view


def test_streamline_figures_draw_the_outline(tmp_path):
    mask, affine = _sphere()
    sl = _streamlines([0, 0, 0])
    for make in (lambda **k: figures.directions_figure(sl, **k),
                 lambda **k: figures.bundles_figure({"CST_L": sl, "CST_R": sl}, **k)):
        fig = make(mask=mask, affine=affine)
        for ax in fig.axes[:3]:
            contours = [c for c in ax.collections if isinstance(c, ContourSet)]
            assert len(contours) == 2  # the faint fill and the outline
            verts = np.concatenate([p.vertices for p in contours[1].get_paths()])
            assert np.hypot(*verts.T) == pytest.approx(20.0, abs=4.0)
            lo, hi = ax.get_xlim()
            assert lo < verts[:, 0].min() and hi > verts[:, 0].max()  # not cut off
        bare = make()
        assert not any(isinstance(c, ContourSet) for ax in bare.axes for c in ax.collections)
    # and in the PNG: the brain's faint grey silhouette is there only with a mask
    counts = []
    for k, kw in enumerate(({"mask": mask, "affine": affine}, {})):
        png = figures.plot_tractogram_directions(sl, tmp_path / f"d{k}.png", **kw)
        rgb = mpimg.imread(png)[..., :3]
        counts.append(int((np.abs(rgb - figures.OUTLINE_FILL).max(-1) < 0.02).sum()))
    assert counts[0] > 50_000 and counts[1] < 1000, counts
