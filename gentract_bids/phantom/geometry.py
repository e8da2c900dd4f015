"""Tube geometry of fibre bundles: the phantomas JSON format, centre-lines, streamline sampling.

A bundle is a tube around a smooth centre-line through its control points (RAS+ mm). The centre-line
is a cubic spline parameterised by cumulative chord length (a close proxy for arc length), evaluated
densely and resampled at a fixed arc-length step. The radius is constant, or interpolated along the
arc length from an optional per-control-point ``radii`` list (fanning); phantomas ignores that key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.interpolate import CubicSpline


@dataclass
class Bundle:
    """One fibre bundle: a tube of ``radius`` mm around the spline through ``control_points``."""

    name: str
    control_points: np.ndarray  # (K, 3) mm, RAS+
    radius: float
    radii: np.ndarray | None = None  # (K,) optional per-control-point radius (fanning)
    tangents: str = "symmetric"
    extra: dict = field(default_factory=dict)  # other keys (e.g. "comment"), kept for round trips

    def __post_init__(self):
        self.control_points = np.asarray(self.control_points, dtype=float).reshape(-1, 3)
        self.radius = float(self.radius)
        if self.radii is not None:
            self.radii = np.asarray(self.radii, dtype=float).reshape(-1)
            if len(self.radii) != len(self.control_points):
                raise ValueError(f"{self.name}: radii needs one value per control point")

    @property
    def max_radius(self) -> float:
        return float(self.radius if self.radii is None else max(self.radius, self.radii.max()))


@dataclass
class IsotropicRegion:
    """A CSF-like sphere (phantomas ``isotropic_regions``)."""

    name: str
    center: np.ndarray
    radius: float
    extra: dict = field(default_factory=dict)  # other keys, kept for a faithful round trip

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=float).reshape(3)
        self.radius = float(self.radius)


@dataclass
class Geometry:
    bundles: list[Bundle]
    isotropic_regions: list[IsotropicRegion] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.bundles]

    def __getitem__(self, name: str) -> Bundle:
        for b in self.bundles:
            if b.name == name:
                return b
        raise KeyError(name)


# ----------------------------------------------------------------------------- JSON format
def geometry_to_dict(geom: Geometry) -> dict:
    fibres = {}
    for b in geom.bundles:
        d = {
            **b.extra,
            "control_points": [float(v) for v in b.control_points.ravel()],
            "radius": float(b.radius),
            "tangents": b.tangents,
        }
        if b.radii is not None:
            d["radii"] = [float(v) for v in b.radii]
        fibres[b.name] = d
    regions = {r.name: {**r.extra, "center": [float(v) for v in r.center], "radius": float(r.radius)}
               for r in geom.isotropic_regions}
    return {"fiber_geometries": fibres, "isotropic_regions": regions}


_BUNDLE_KEYS = ("control_points", "radius", "radii", "tangents")


def geometry_from_dict(data: dict) -> Geometry:
    bundles = []
    for name, d in data["fiber_geometries"].items():
        bundles.append(Bundle(name=name, control_points=d["control_points"], radius=d["radius"],
                              radii=d.get("radii"), tangents=d.get("tangents", "symmetric"),
                              extra={k: v for k, v in d.items() if k not in _BUNDLE_KEYS}))
    raw = data.get("isotropic_regions", {}) or {}
    items = raw.items() if isinstance(raw, dict) else ((f"region{i + 1}", r) for i, r in enumerate(raw))
    regions = [IsotropicRegion(name, r["center"], r["radius"],
                               {k: v for k, v in r.items() if k not in ("center", "radius")})
               for name, r in items]
    return Geometry(bundles, regions)


def load_geometry(path) -> Geometry:
    """Read a phantomas-format JSON file (``fiber_geometries`` + ``isotropic_regions``)."""
    with open(path) as f:
        return geometry_from_dict(json.load(f))


def save_geometry(geom: Geometry, path) -> Path:
    """Write ``geom`` in the phantomas JSON format (float values round-trip exactly)."""
    path = Path(path)
    path.write_text(json.dumps(geometry_to_dict(geom), indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------- centre-lines
@dataclass
class Centreline:
    points: np.ndarray  # (M, 3) equally spaced by ``step`` mm along the curve
    tangents: np.ndarray  # (M, 3) unit
    radii: np.ndarray  # (M,)
    arclength: np.ndarray  # (M,)
    step: float

    @property
    def length(self) -> float:
        return float(self.arclength[-1])


def centreline(bundle: Bundle, step_mm: float = 0.5) -> Centreline:
    """Dense centre-line of ``bundle`` at (nearly) constant arc-length spacing ``step_mm``."""
    cp = bundle.control_points
    chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(cp, axis=0), axis=1))]
    if len(cp) == 2:
        spline = CubicSpline(chord, cp, bc_type="natural")  # a straight line
    else:
        # not-a-knot for > 3 points, natural-like parabola for 3: smooth "symmetric" tangents
        spline = CubicSpline(chord, cp, bc_type="not-a-knot")
    fine = np.linspace(0.0, chord[-1], max(int(chord[-1] / (step_mm / 8)), 16))
    pts = spline(fine)
    s_fine = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]
    n = max(int(np.ceil(s_fine[-1] / step_mm)), 1) + 1
    s = np.linspace(0.0, s_fine[-1], n)
    u = np.interp(s, s_fine, fine)  # chord parameter at each arc length
    points = spline(u)
    tang = spline(u, 1)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    if bundle.radii is None:
        radii = np.full(n, bundle.radius)
    else:
        s_cp = np.interp(chord, fine, s_fine)
        radii = np.interp(s, s_cp, bundle.radii)
    return Centreline(points, tang, radii, s, float(s[1] - s[0]) if n > 1 else step_mm)


def rotation_minimising_frame(points: np.ndarray, tangents: np.ndarray):
    """Normals and binormals along a curve by the double-reflection method (Wang et al. 2008)."""
    t0 = tangents[0]
    a = np.eye(3)[np.argmin(np.abs(t0))]
    r = np.cross(t0, a)
    r /= np.linalg.norm(r)
    normals = np.empty_like(points)
    normals[0] = r
    for i in range(len(points) - 1):
        v1 = points[i + 1] - points[i]
        c1 = v1 @ v1
        if c1 < 1e-20:
            normals[i + 1] = r
            continue
        r_l = r - (2 / c1) * (v1 @ r) * v1
        t_l = tangents[i] - (2 / c1) * (v1 @ tangents[i]) * v1
        v2 = tangents[i + 1] - t_l
        c2 = v2 @ v2
        r = r_l - (2 / c2) * (v2 @ r_l) * v2 if c2 > 1e-20 else r_l
        r -= (r @ tangents[i + 1]) * tangents[i + 1]
        r /= np.linalg.norm(r)
        normals[i + 1] = r
    return normals, np.cross(tangents, normals)


def sample_streamlines(bundle: Bundle, n: int, rng: np.random.Generator, step_mm: float = 1.0,
                       n_points: int | None = None, margin: float = 0.98) -> list[np.ndarray]:
    """``n`` ground-truth streamlines inside the tube of ``bundle``.

    Each streamline is the centre-line plus a fixed offset in the rotation-minimising frame, drawn
    uniformly in the disc of radius ``margin * radius`` and scaled with the local radius (fanning).
    Streamlines run from the head cap (first control point) to the tail cap. Sampled every
    ``step_mm`` along the centre-line, or at ``n_points`` equally spaced points if given.
    """
    cl = centreline(bundle, step_mm=min(step_mm, 0.5) if n_points is None else 0.5)
    if n_points is None:
        m = max(int(np.ceil(cl.length / step_mm)), 1) + 1
    else:
        m = int(n_points)
    s = np.linspace(0.0, cl.length, m)
    pts = np.stack([np.interp(s, cl.arclength, cl.points[:, k]) for k in range(3)], axis=1)
    normals, binormals = rotation_minimising_frame(cl.points, cl.tangents)
    nrm = np.stack([np.interp(s, cl.arclength, normals[:, k]) for k in range(3)], axis=1)
    bin_ = np.stack([np.interp(s, cl.arclength, binormals[:, k]) for k in range(3)], axis=1)
    rad = np.interp(s, cl.arclength, cl.radii) * margin
    rho = np.sqrt(rng.uniform(0.0, 1.0, n))
    phi = rng.uniform(0.0, 2 * np.pi, n)
    a, b = rho * np.cos(phi), rho * np.sin(phi)  # (n,)
    off = (a[:, None, None] * nrm[None] + b[:, None, None] * bin_[None]) * rad[None, :, None]
    return list(pts[None] + off)
