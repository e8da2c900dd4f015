"""fODF support of sampled streamlines: trim unsupported ends, reject unsupported streamlines.

*Ours* (not in the GenTract paper), on by default in the BIDS-App (``--support-threshold``). A
point of a streamline is *supported* when the subject's fODF, interpolated there, has an amplitude
along the streamline's local direction of at least ``threshold`` times a reference amplitude (the
99th percentile of the voxel-wise fODF peaks inside the brain mask). For each streamline,
resampled to ``n_check`` points:

1. the unsupported points at both ends are trimmed away (a streamline that runs past the white
   matter into grey matter or CSF ends where the fibre signal ends, as with MRtrix3's fODF
   amplitude cut-off);
2. it is kept only when what remains is supported at every point (no gap in the middle) and keeps
   at least ``min_length_fraction`` of its arc length;
3. both ends are extended along the fODF (steps of ``extension_step_mm``, each along the largest
   fODF amplitude within ``extension_cone_deg`` of the current direction) while that amplitude,
   here and at the next point, stays at or above ``extension_threshold``, for at most
   ``max_extension_mm``: a streamline that
   stops short inside its bundle reaches where the fibre signal ends;
4. the result is resampled back to the original number of points.

Sampling then draws batches until enough streamlines are kept (rejection sampling of the model's
distribution restricted to fODF-supported streamlines), see
:func:`gentract_bids.model.inference.sample_tractogram`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

DEFAULT_THRESHOLD = 0.05
DEFAULT_MIN_LENGTH_FRACTION = 0.85
DEFAULT_EXTENSION_THRESHOLD = 0.15
DEFAULT_MAX_EXTENSION_MM = 20.0
REFERENCE_PERCENTILE = 99.0
# draws per kept streamline to plan batches for: the shipped model keeps about 1 in 4 of its
# samples on held-out phantoms (README, Measured)
EXPECTED_OVERSAMPLING = 4.0


@dataclass(frozen=True)
class SupportSettings:
    threshold: float = DEFAULT_THRESHOLD  # relative to the reference fODF amplitude
    min_length_fraction: float = DEFAULT_MIN_LENGTH_FRACTION
    n_check: int = 96  # points at which a streamline is checked
    max_oversampling: float = 20.0  # stop after drawing this many times the requested number
    extension_threshold: float = DEFAULT_EXTENSION_THRESHOLD  # relative, like ``threshold``
    max_extension_mm: float = DEFAULT_MAX_EXTENSION_MM  # 0: no extension
    extension_step_mm: float = 0.5
    extension_cone_deg: float = 30.0

    def __post_init__(self):
        if not 0 < self.threshold < 1:
            raise ValueError(f"support threshold must lie in (0, 1), got {self.threshold}")
        if not 0 < self.min_length_fraction <= 1:
            raise ValueError("min_length_fraction must lie in (0, 1]")
        if self.n_check < 4 or self.max_oversampling < 1:
            raise ValueError("n_check must be >= 4 and max_oversampling >= 1")
        if self.max_extension_mm < 0 or self.extension_step_mm <= 0 or not (
                0 < self.extension_cone_deg < 90):
            raise ValueError("extension: max_extension_mm >= 0, a positive step and a cone "
                             "in (0, 90) degrees")

    def as_dict(self) -> dict:
        return {"Threshold": self.threshold, "MinLengthFraction": self.min_length_fraction,
                "CheckPoints": self.n_check, "MaxOversampling": self.max_oversampling,
                "ReferencePercentile": REFERENCE_PERCENTILE,
                "Extension": {"Threshold": self.extension_threshold,
                              "MaxMillimetres": self.max_extension_mm,
                              "StepMillimetres": self.extension_step_mm,
                              "ConeDegrees": self.extension_cone_deg}}


def resample_polyline(points: np.ndarray, n: int) -> np.ndarray:
    """``n`` points equally spaced in arc length along the polyline ``points`` (m, 3)."""
    points = np.asarray(points, np.float64)
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))]
    if arc[-1] <= 0:
        return np.repeat(points[:1], n, axis=0)
    t = np.linspace(0.0, arc[-1], n)
    return np.stack([np.interp(t, arc, points[:, k]) for k in range(3)], axis=1)


class FodSupport:
    """The support test of one subject: SH volume ``sh`` (X, Y, Z, m), descoteaux07 basis, with
    the coefficients in the RAS+ world frame, on the grid ``affine``; ``mask`` the brain mask."""

    def __init__(self, sh: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                 settings: SupportSettings | None = None, sh_order: int | None = None):
        from dipy.data import get_sphere
        from dipy.reconst.shm import order_from_ncoef, sh_to_sf_matrix

        self.settings = settings or SupportSettings()
        sh = np.asarray(sh, np.float32)
        mask = np.asarray(mask, bool)
        if sh.shape[:3] != mask.shape:
            raise ValueError(f"mask {mask.shape} does not match the fODF {sh.shape[:3]}")
        if not mask.any():
            raise ValueError("empty brain mask: no fODF support to test")
        self.sh_order = order = int(sh_order or order_from_ncoef(sh.shape[-1]))
        self.sphere = get_sphere(name="repulsion724")
        self._B, _ = sh_to_sf_matrix(self.sphere, sh_order_max=order,
                                     basis_type="descoteaux07", legacy=False)  # (m, V)
        sh = np.where(mask[..., None], sh, 0.0).astype(np.float32)
        self._coeffs = [np.ascontiguousarray(sh[..., c]) for c in range(sh.shape[-1])]
        self._inv = np.linalg.inv(np.asarray(affine, np.float64))
        inside = sh[mask][:: max(1, int(mask.sum()) // 200_000)]  # a fixed subsample of voxels
        peaks = np.concatenate([np.maximum(c @ self._B, 0).max(1)
                                for c in np.array_split(inside, max(1, len(inside) // 20_000))])
        self.reference = float(np.percentile(peaks, REFERENCE_PERCENTILE))
        if not self.reference > 0:
            raise ValueError("the fODF has no positive amplitude inside the brain mask")

    def _coefficients(self, points: np.ndarray) -> np.ndarray:
        """(n, m) SH coefficients at ``points`` (n, 3, mm): trilinear, 0 outside mask and grid."""
        ijk = (points @ self._inv[:3, :3].T + self._inv[:3, 3]).T
        return np.stack([ndimage.map_coordinates(v, ijk, order=1, mode="constant", cval=0.0)
                         for v in self._coeffs], axis=1)

    def amplitude(self, points: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """fODF amplitude at ``points`` (n, 3, mm) along ``directions`` (n, 3), relative to
        :attr:`reference`."""
        from dipy.core.geometry import cart2sphere
        from dipy.reconst.shm import real_sh_descoteaux

        _, theta, phi = cart2sphere(*np.asarray(directions, np.float64).T)
        basis, _, _ = real_sh_descoteaux(self.sh_order, theta, phi, legacy=False)  # (n, m)
        return np.einsum("nm,nm->n", self._coefficients(points), basis) / self.reference

    def extend(self, ends: np.ndarray, directions: np.ndarray) -> list[np.ndarray]:
        """Follow the fODF from ``ends`` (n, 3) onward along ``directions`` (n, 3, unit): the
        points added to each end, (k, 3) with k >= 0, in order away from the streamline."""
        st = self.settings
        added = [[] for _ in range(len(ends))]
        cos_cone = np.cos(np.deg2rad(st.extension_cone_deg))
        verts = self.sphere.vertices
        p, d = np.array(ends, np.float64), np.array(directions, np.float64)
        active = np.arange(len(p))
        for _ in range(int(st.max_extension_mm / st.extension_step_mm)):
            if not len(active):
                break
            amp = np.maximum(self._coefficients(p[active]) @ self._B, 0) / self.reference
            amp[d[active] @ verts.T < cos_cone] = 0.0
            best = np.argmax(amp, axis=1)
            step = p[active] + st.extension_step_mm * verts[best]
            go = amp[np.arange(len(active)), best] >= st.extension_threshold
            go[go] = self.amplitude(step[go], verts[best[go]]) >= st.extension_threshold
            moving = active[go]  # the new point must be supported too
            p[moving] = step[go]
            d[moving] = verts[best[go]]
            for i in moving:
                added[i].append(p[i].copy())
            active = moving
        return [np.reshape(a, (-1, 3)) for a in added]

    def profile(self, streamlines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Check points (n, k, 3) of ``streamlines`` (n, p, 3) and their relative amplitudes (n, k)."""
        k = self.settings.n_check
        fine = np.stack([resample_polyline(s, k) for s in streamlines])
        tangent = np.gradient(fine, axis=1)
        tangent /= np.linalg.norm(tangent, axis=2, keepdims=True) + 1e-12
        amp = self.amplitude(fine.reshape(-1, 3), tangent.reshape(-1, 3)).reshape(len(fine), k)
        return fine, amp

    def filter(self, streamlines: np.ndarray) -> np.ndarray:
        """The supported streamlines of ``streamlines`` (n, p, 3), trimmed, as (kept, p, 3)."""
        streamlines = np.asarray(streamlines, np.float64)
        n, p = streamlines.shape[:2]
        if n == 0:
            return streamlines
        fine, amp = self.profile(streamlines)
        ok = amp >= self.settings.threshold
        k = self.settings.n_check
        kept = []
        for s, o in zip(fine, ok):
            idx = np.flatnonzero(o)
            if len(idx) < 2:
                continue
            i0, i1 = idx[0], idx[-1]
            if not o[i0:i1 + 1].all() or (i1 - i0) < self.settings.min_length_fraction * (k - 1):
                continue
            kept.append(s[i0:i1 + 1])
        if not kept:
            return np.empty((0, p, 3))
        if self.settings.max_extension_mm > 0:
            heads, tails = self._extend_ends(kept)
            kept = [np.vstack([h[::-1], s, t]) for s, h, t in zip(kept, heads, tails)]
        return np.stack([resample_polyline(s, p) for s in kept])

    def _extend_ends(self, kept: list[np.ndarray]):
        def unit(v):
            return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-12)

        first = np.array([s[0] for s in kept])
        last = np.array([s[-1] for s in kept])
        return (self.extend(first, unit(first - np.array([s[1] for s in kept]))),
                self.extend(last, unit(last - np.array([s[-2] for s in kept]))))
