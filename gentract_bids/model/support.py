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

DEFAULT_THRESHOLD = 0.05
DEFAULT_MIN_LENGTH_FRACTION = 0.85
DEFAULT_EXTENSION_THRESHOLD = 0.15
DEFAULT_MAX_EXTENSION_MM = 20.0
DEFAULT_GUIDANCE_SCALE = 0.03  # --guidance-scale: best on dev phantoms (docs/benchmarks.md)
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
    return resample_polylines(points[None], np.array([len(points)]), n)[0]


def resample_polylines(points: np.ndarray, lengths: np.ndarray, n: int) -> np.ndarray:
    """:func:`resample_polyline` of many polylines at once: ``points`` (N, m, 3) padded, of
    which the first ``lengths[i]`` points of row i are the polyline -> (N, n, 3)."""
    points = np.asarray(points, np.float64)
    rows, m = points.shape[:2]
    if rows == 0:
        return np.empty((0, n, 3))
    idx = np.minimum(np.arange(m)[None], np.asarray(lengths)[:, None] - 1)
    pts = np.take_along_axis(points, idx[..., None], axis=1)  # padded with the last point
    seg = np.linalg.norm(np.diff(pts, axis=1), axis=2)
    arc = np.concatenate([np.zeros((rows, 1)), np.cumsum(seg, axis=1)], axis=1)  # (N, m)
    t = np.linspace(0.0, 1.0, n)[None] * arc[:, -1:]
    # one searchsorted for all rows: shift each row's arc lengths above the previous row's
    shift = (np.arange(rows) * (arc[:, -1].max() + 1.0))[:, None]
    j = np.searchsorted((arc + shift).ravel(), (t + shift).ravel(), side="right")
    j = np.clip(j.reshape(rows, n) - np.arange(rows)[:, None] * m - 1, 0, max(m - 2, 0))
    a0, a1 = np.take_along_axis(arc, j, 1), np.take_along_axis(arc, np.minimum(j + 1, m - 1), 1)
    frac = np.where(a1 > a0, (t - a0) / np.where(a1 > a0, a1 - a0, 1.0), 0.0)[..., None]
    p0 = np.take_along_axis(pts, j[..., None], 1)
    p1 = np.take_along_axis(pts, np.minimum(j + 1, m - 1)[..., None], 1)
    return p0 + frac * (p1 - p0)


def monomial_exponents(order: int) -> np.ndarray:
    """(k, 3) exponents (a, b, c), a + b + c = ``order``: on the unit sphere the monomials
    x^a y^b z^c span the even real SH of orders 0..``order`` (k = their number)."""
    return np.array([(a, b, order - a - b) for a in range(order, -1, -1)
                     for b in range(order - a, -1, -1)])


def monomials(directions, exponents: np.ndarray):
    """(n, k) monomials of unit ``directions`` (n, 3) for ``exponents`` (k, 3); numpy or torch."""
    powers = [directions ** 0, directions]
    for _ in range(int(exponents.max()) - 1):
        powers.append(powers[-1] * directions)
    cols = [powers[a][:, 0] * powers[b][:, 1] * powers[c][:, 2] for a, b, c in exponents]
    return (np.stack if isinstance(directions, np.ndarray) else _torch_stack)(cols, 1)


def _torch_stack(cols, dim):
    import torch

    return torch.stack(cols, dim)


class FodSupport:
    """The support test of one subject: SH volume ``sh`` (X, Y, Z, m), descoteaux07 basis, with
    the coefficients in the RAS+ world frame, on the grid ``affine``; ``mask`` the brain mask.

    Every step works on all streamlines (or ends) at once: trilinear interpolation is one gather
    of the 8 neighbouring voxels' coefficients, and the SH basis along any direction is a fixed
    linear map of its degree-``sh_order`` monomials (:func:`monomial_exponents`)."""

    def __init__(self, sh: np.ndarray, mask: np.ndarray, affine: np.ndarray,
                 settings: SupportSettings | None = None, sh_order: int | None = None):
        from dipy.core.geometry import cart2sphere
        from dipy.data import get_sphere
        from dipy.reconst.shm import order_from_ncoef, real_sh_descoteaux

        self.settings = settings or SupportSettings()
        sh = np.asarray(sh, np.float32)
        mask = np.asarray(mask, bool)
        if sh.shape[:3] != mask.shape:
            raise ValueError(f"mask {mask.shape} does not match the fODF {sh.shape[:3]}")
        if not mask.any():
            raise ValueError("empty brain mask: no fODF support to test")
        self.sh_order = order = int(sh_order or order_from_ncoef(sh.shape[-1]))
        self.sphere = get_sphere(name="repulsion724")
        verts = self.sphere.vertices
        _, theta, phi = cart2sphere(*verts.T)
        basis, _, _ = real_sh_descoteaux(order, theta, phi, legacy=False)  # (V, m)
        self._B = np.ascontiguousarray(basis.T)  # (m, V)
        self.exponents = monomial_exponents(order)
        # SH basis = monomials @ _mono_to_sh on the sphere (exact: the same function space)
        self._mono_to_sh = np.linalg.lstsq(monomials(verts, self.exponents), basis, rcond=None)[0]
        cos_cone = np.cos(np.deg2rad(self.settings.extension_cone_deg))
        inside = verts @ verts.T >= cos_cone  # the cone around each vertex, padded with itself
        width = int(inside.sum(1).max())
        cone = np.argsort(~inside, axis=1, kind="stable")[:, :width]  # in-cone first, in order
        pad = np.arange(width)[None] >= inside.sum(1)[:, None]
        self._cone = np.where(pad, np.arange(len(verts))[:, None], cone)
        self.sh = np.where(mask[..., None], sh, 0.0).astype(np.float32)
        self.affine = np.asarray(affine, np.float64)
        self._inv = np.linalg.inv(self.affine)
        inside = self.sh[mask][:: max(1, int(mask.sum()) // 200_000)]  # a fixed voxel subsample
        peaks = np.concatenate([np.maximum(c @ self._B, 0).max(1)
                                for c in np.array_split(inside, max(1, len(inside) // 20_000))])
        self.reference = float(np.percentile(peaks, REFERENCE_PERCENTILE))
        if not self.reference > 0:
            raise ValueError("the fODF has no positive amplitude inside the brain mask")

    def _coefficients(self, points: np.ndarray) -> np.ndarray:
        """(n, m) SH coefficients at ``points`` (n, 3, mm): trilinear, 0 outside mask and grid."""
        shape = np.array(self.sh.shape[:3])
        ijk = points @ self._inv[:3, :3].T + self._inv[:3, 3]
        inside = np.all((ijk >= 0) & (ijk <= shape - 1), axis=1)
        i0 = np.clip(np.floor(ijk).astype(np.intp), 0, np.maximum(shape - 2, 0))
        f = ijk - i0
        out = np.zeros((len(points), self.sh.shape[-1]))
        for corner in np.ndindex(2, 2, 2):
            c = np.array(corner)
            w = np.prod(np.where(c, f, 1.0 - f), axis=1)
            idx = np.minimum(i0 + c, shape - 1)
            out += w[:, None] * self.sh[idx[:, 0], idx[:, 1], idx[:, 2]]
        out[~inside] = 0.0
        return out

    def sh_basis(self, directions: np.ndarray) -> np.ndarray:
        """(n, m) descoteaux07 SH basis along unit ``directions`` (n, 3)."""
        return monomials(np.asarray(directions, np.float64), self.exponents) @ self._mono_to_sh

    def amplitude(self, points: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """fODF amplitude at ``points`` (n, 3, mm) along ``directions`` (n, 3), relative to
        :attr:`reference`."""
        d = np.asarray(directions, np.float64)
        d = d / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-300)
        return np.einsum("nm,nm->n", self._coefficients(points), self.sh_basis(d)) / self.reference

    def extend(self, ends: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Follow the fODF from ``ends`` (n, 3) onward along ``directions`` (n, 3, unit), all ends
        at once: the points added, (n, k_max, 3) in order away from the streamline, and how many
        of them each end got, (n,)."""
        st = self.settings
        n_steps = int(st.max_extension_mm / st.extension_step_mm)
        verts = self.sphere.vertices
        added = np.zeros((len(ends), n_steps, 3))
        count = np.zeros(len(ends), np.intp)
        p = np.array(ends, np.float64)
        vertex = np.full(len(p), -1)  # the current direction's vertex (-1: the end's own)
        cos_cone = np.cos(np.deg2rad(st.extension_cone_deg))
        active = np.arange(len(p))
        for k in range(n_steps):
            if not len(active):
                break
            coef = self._coefficients(p[active])
            if k == 0:  # any direction: test all vertices
                cand = np.broadcast_to(np.arange(len(verts)), (len(active), len(verts)))
                amp = np.maximum(coef @ self._B, 0) / self.reference
                amp[np.asarray(directions, np.float64)[active] @ verts.T < cos_cone] = 0.0
            else:  # along a vertex: its cone
                cand = self._cone[vertex[active]]
                amp = np.maximum(np.einsum("am,mak->ak", coef, self._B[:, cand]), 0)
                amp /= self.reference
            pick = np.argmax(amp, axis=1)
            best = cand[np.arange(len(active)), pick]
            step = p[active] + st.extension_step_mm * verts[best]
            go = amp[np.arange(len(active)), pick] >= st.extension_threshold
            nxt = np.einsum("am,ma->a", self._coefficients(step[go]), self._B[:, best[go]])
            go[go] = nxt / self.reference >= st.extension_threshold  # the new point too
            active, best = active[go], best[go]
            p[active], vertex[active] = step[go], best
            added[active, count[active]] = step[go]
            count[active] += 1
        return added, count

    def profile(self, streamlines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Check points (n, k, 3) of ``streamlines`` (n, p, 3) and their relative amplitudes (n, k)."""
        k = self.settings.n_check
        n, p = np.shape(streamlines)[:2]
        fine = resample_polylines(streamlines, np.full(n, p), k)
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
        i0 = np.argmax(ok, axis=1)
        i1 = k - 1 - np.argmax(ok[:, ::-1], axis=1)
        keep = ((ok.sum(1) >= 2) & (ok.sum(1) == i1 - i0 + 1)  # one run, no gap
                & (i1 - i0 >= self.settings.min_length_fraction * (k - 1)))
        if not keep.any():
            return np.empty((0, p, 3))
        fine, i0, i1 = fine[keep], i0[keep], i1[keep]
        rows = np.arange(len(fine))
        if self.settings.max_extension_mm > 0:
            def unit(v):
                return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-12)

            first, last = fine[rows, i0], fine[rows, i1]
            ends = np.concatenate([first, last])
            dirs = np.concatenate([unit(first - fine[rows, i0 + 1]),
                                   unit(last - fine[rows, i1 - 1])])
            added, count = self.extend(ends, dirs)
            heads, tails = np.split(added, 2)
            nh, nt = np.split(count, 2)
        else:
            heads = tails = np.zeros((len(fine), 0, 3))
            nh = nt = np.zeros(len(fine), np.intp)
        # each row: its head reversed, the trimmed streamline, its tail (padded to the longest)
        ns = i1 - i0 + 1
        length = nh + ns + nt
        j = np.arange(length.max())[None]
        in_head, in_body = j < nh[:, None], j < (nh + ns)[:, None]
        body = np.clip(i0[:, None] + j - nh[:, None], 0, k - 1)
        pts = np.where(in_body[..., None], fine[rows[:, None], body], 0.0)
        if heads.shape[1]:
            h = np.clip(nh[:, None] - 1 - j, 0, heads.shape[1] - 1)
            t = np.clip(j - (nh + ns)[:, None], 0, tails.shape[1] - 1)
            pts = np.where(in_head[..., None], heads[rows[:, None], h], pts)
            pts = np.where(in_body[..., None], pts, tails[rows[:, None], t])
        return resample_polylines(pts, length, p)


GUIDANCE_CAP = 0.25  # relative amplitude above which a point gains nothing more from guidance
GUIDANCE_POINTS = 4  # points per segment of the predicted streamline at which it is scored


class FodGuidance:
    """fODF guidance of the flow sampler (*ours*; issue 16): the gradient, with respect to the
    predicted clean streamline (model coordinates, (b, p, 3)), of its support score, the sum
    over ``GUIDANCE_POINTS`` points per segment of min(a, ``GUIDANCE_CAP``), a the fODF amplitude
    there along the segment (relative, as in :class:`FodSupport`), times ``scale``. Torch,
    differentiable: trilinear weights of the 8 neighbouring voxels' coefficients in the monomial
    basis (:func:`monomials`), so the basis along a direction is a product of its components.
    ``scaler`` (:class:`~gentract_bids.model.gentract.CoordinateScaler`) and ``data_scale`` map
    model coordinates to mm as the sampler's output is mapped."""

    def __init__(self, support: FodSupport, scaler, data_scale: float, scale: float,
                 device="cpu"):
        import torch

        if not scale > 0:
            raise ValueError(f"the guidance scale must be positive, got {scale}")
        self.scale = float(scale)
        mono = support.sh @ support._mono_to_sh.T.astype(np.float32)  # (X, Y, Z, k)
        self.vol = torch.from_numpy(np.ascontiguousarray(mono)).to(device)
        self.exponents = support.exponents
        self.inv = torch.as_tensor(support._inv, dtype=torch.float32, device=device)
        self.scaler, self.data_scale = scaler, float(data_scale)  # model coordinates -> mm
        self.reference = support.reference
        w = (np.arange(GUIDANCE_POINTS) + 0.5) / GUIDANCE_POINTS
        self.along = torch.as_tensor(w, dtype=torch.float32, device=device)[None, None, :, None]

    def _coefficients(self, points):
        import torch

        shape = torch.tensor(self.vol.shape[:3], device=points.device)
        ijk = points @ self.inv[:3, :3].T + self.inv[:3, 3]
        inside = ((ijk >= 0) & (ijk <= shape - 1)).all(-1, keepdim=True)
        i0 = torch.minimum(torch.floor(ijk).clamp(min=0).long(), (shape - 2).clamp(min=0))
        f = ijk - i0
        out = 0.0
        for corner in np.ndindex(2, 2, 2):
            c = torch.tensor(corner, device=points.device)
            w = torch.where(c.bool(), f, 1.0 - f).prod(-1, keepdim=True)
            idx = torch.minimum(i0 + c, shape - 1)
            out = out + w * self.vol[idx[:, 0], idx[:, 1], idx[:, 2]]
        return out * inside

    def score(self, x):
        """(b,) support score of streamlines ``x`` (b, p, 3) in model coordinates."""
        import torch

        mm = self.scaler.to_mm(x / self.data_scale)
        seg = mm[:, 1:] - mm[:, :-1]  # (b, p - 1, 3)
        points = mm[:, :-1, None] + self.along * seg[:, :, None]  # (b, p - 1, G, 3)
        d = seg / (torch.linalg.norm(seg, dim=-1, keepdim=True) + 1e-6)
        d = d[:, :, None].expand_as(points).reshape(-1, 3)
        amp = (self._coefficients(points.reshape(-1, 3)) * monomials(d, self.exponents)).sum(-1)
        amp = (amp / self.reference).clamp(max=GUIDANCE_CAP)
        return amp.reshape(len(x), -1).sum(1)

    def __call__(self, x1_hat):
        import torch

        with torch.inference_mode(False), torch.enable_grad():
            x = x1_hat.detach().float().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.score(x).sum(), x)
        return self.scale * grad


# the app's defaults with the support filter: best on dev phantoms (docs/benchmarks.md, Sampler)
DEFAULT_SMC_TIMES = (0.5,)  # --smc-times
DEFAULT_DENSITY_STRENGTH = 2.0  # --density-acceptance
DEFAULT_SMC_POWER = 4.0  # SMC weight: (supported fraction of the predicted streamline)^power
# the sampler options (the CLI's dests) that a checkpoint may set for itself (``sampler_defaults``
# in its JSON, measured per model: docs/benchmarks.md "Sampler defaults per model"), else these;
# all of them need the support filter, so without it they are all off (SAMPLER_OFF)
SAMPLER_DEFAULTS = {"guidance_scale": DEFAULT_GUIDANCE_SCALE,
                    "smc_times": list(DEFAULT_SMC_TIMES),
                    "density_acceptance": DEFAULT_DENSITY_STRENGTH,
                    "connectivity_prior": "off"}
SAMPLER_OFF = {"guidance_scale": 0.0, "smc_times": [], "density_acceptance": 0.0,
               "connectivity_prior": "off"}


class SupportWeight:
    """Sequential Monte Carlo weight (*ours*; issue 16) of predicted clean streamlines (model
    coordinates, (b, p, 3) torch): ``eps`` + f^``power``, f the fraction of the
    :class:`FodSupport` check points where the fODF supports it (the filter's test)."""

    def __init__(self, support: FodSupport, scaler, data_scale: float,
                 power: float = DEFAULT_SMC_POWER, eps: float = 1e-3, connectivity=None,
                 density=None):
        self.support, self.scaler, self.data_scale = support, scaler, float(data_scale)
        self.power, self.eps = float(power), float(eps)
        self.connectivity = connectivity  # a ConnectivityPrior: its rejects weigh eps
        self.density = density  # a DensityAcceptance: crowded end cells weigh what it keeps

    def _mm(self, x) -> np.ndarray:
        return self.scaler.to_mm(x.detach().float().cpu().numpy().astype(np.float64)
                                 / self.data_scale)

    def __call__(self, x):
        import torch

        mm = self._mm(x)
        _, amp = self.support.profile(mm)
        f = (amp >= self.support.settings.threshold).mean(1)
        if self.connectivity is not None:
            f = f * self.connectivity.allowed(mm)
        w = f ** self.power
        if self.density is not None:
            w = w * self.density.weights(mm)
        return torch.from_numpy(self.eps + w)


DEFAULT_DENSITY_CELL_MM = 8.0


class DensityAcceptance:
    """Density-aware acceptance for coverage (*ours*; issue 16): each candidate's endpoint pair
    (the two end points, in a fixed order, binned into ``cell_mm`` cubes) is a cell of the kept
    pool's endpoint-pair histogram; a candidate is kept with probability
    min(1, ((m + 1) / (c + 1))^``strength``), c its cell's count so far and m the count-weighted
    mean count (sum c^2 / sum c: the count of the cell of a kept streamline picked at random), so
    crowded cells (bundle cores) give way to sparse ones. The reference is scale-free: it grows
    in proportion to N when the cells' shares settle, so the rate kept stays level as N grows
    (the plain mean over occupied cells, the first reference, fell with N, every stray cell
    counting once: of the supported streamlines of a dev tube subject it kept 0.49 of the first
    1000 and 0.23 of those from 2000 to 3000; this one 0.71, 0.63, and 0.58 from 9000 to 10 000;
    docs/benchmarks.md). Candidates are taken in order, drawn from
    ``numpy.random.default_rng(seed)``: deterministic."""

    def __init__(self, strength: float = 1.0, cell_mm: float = DEFAULT_DENSITY_CELL_MM,
                 seed: int = 0):
        if not strength > 0 or not cell_mm > 0:
            raise ValueError("density acceptance: strength and cell size must be positive")
        self.strength, self.cell_mm = float(strength), float(cell_mm)
        self.rng = np.random.default_rng(seed)
        self.counts: dict = {}
        self.total = 0
        self.sum_sq = 0  # sum over cells of count^2

    def cells(self, streamlines: np.ndarray) -> list:
        a = np.floor(streamlines[:, 0] / self.cell_mm).astype(np.int64)
        b = np.floor(streamlines[:, -1] / self.cell_mm).astype(np.int64)
        first = [tuple(x) for x in a]
        last = [tuple(x) for x in b]
        return [(f, e) if f <= e else (e, f) for f, e in zip(first, last)]

    def accept(self, streamlines: np.ndarray, limit: int | None = None) -> np.ndarray:
        """Boolean mask of the candidates (n, p, 3) kept (at most ``limit``); the kept ones
        join the histogram."""
        u = self.rng.random(len(streamlines))
        keep = np.zeros(len(streamlines), bool)
        for i, cell in enumerate(self.cells(streamlines)):
            if limit is not None and keep.sum() >= limit:
                break
            c = self.counts.get(cell, 0)
            if u[i] < min(1.0, self._ratio(c)):
                keep[i] = True
                self.counts[cell] = c + 1
                self.total += 1
                self.sum_sq += 2 * c + 1
        return keep

    def _ratio(self, count):
        """((m + 1) / (count + 1))^strength for a cell count (or an array of them), m the
        count-weighted mean count now: the keep probability before its cap at 1."""
        m = self.sum_sq / self.total if self.total else 0.0
        return ((m + 1) / (count + 1)) ** self.strength

    def weights(self, streamlines: np.ndarray) -> np.ndarray:
        """The probability (n,) each candidate would be kept with now, the histogram unchanged:
        the SMC weight's density factor (``SupportWeight(density=...)``)."""
        c = np.array([self.counts.get(cell, 0) for cell in self.cells(streamlines)], float)
        return np.minimum(1.0, self._ratio(c))

    def max_count(self) -> int:
        return max(self.counts.values(), default=0)
