"""fODF estimation with dipy: gradient tables, brain mask, response, CSD, peaks.

Plain functions on numpy arrays (no file I/O). Every SH volume that leaves this module is in dipy's
*non-legacy* ``descoteaux07`` basis (real, symmetric; ``L_max = 6`` gives 28 coefficients), the
basis MRtrix/BEP016 readers call ``descoteaux07`` with ``LegacyBasis: false``.

Gradient directions are expected in the voxel-array frame (what dipy assumes); see
:mod:`gentract_bids.io.dwi` for the conversion from BIDS/FSL ``.bvec`` files.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

SH_BASIS = "descoteaux07"
LEGACY = False
B0_THRESHOLD = 50.0
SHELL_ROUNDING = 100.0  # b-values within +-50 s/mm^2 of a multiple of 100 form one shell
PREFERRED_SHELL = 3000.0  # single-shell CSD on the shell closest to this (see choose_shell)


def n_coeffs(sh_order: int) -> int:
    """Number of coefficients of a real symmetric SH basis up to even order ``sh_order``."""
    if sh_order < 0 or sh_order % 2:
        raise ValueError(f"sh_order must be a non-negative even integer, got {sh_order}")
    return (sh_order + 1) * (sh_order + 2) // 2


def sh_order_from_ncoeffs(n: int) -> int:
    order = int(round((np.sqrt(8 * n + 1) - 3) / 2))
    if n_coeffs(order) != n:
        raise ValueError(f"{n} is not the size of a symmetric SH basis")
    return order


def _round_bvals(bvals, b0_threshold=B0_THRESHOLD) -> np.ndarray:
    b = np.asarray(bvals, float).ravel()
    r = np.round(b / SHELL_ROUNDING) * SHELL_ROUNDING
    r[b <= b0_threshold] = 0.0
    return r


def shells(bvals, b0_threshold=B0_THRESHOLD) -> list[float]:
    """Sorted distinct non-zero shells (b-values rounded to the nearest 100 s/mm^2)."""
    r = _round_bvals(bvals, b0_threshold)
    return sorted(float(v) for v in np.unique(r[r > 0]))


def make_gtab(bvals, bvecs, b0_threshold=B0_THRESHOLD):
    """A dipy GradientTable from b-values (N,) and b-vectors (N, 3) or (3, N).

    b-values are rounded to shells (nearest 100 s/mm^2, <= ``b0_threshold`` -> 0); non-zero
    b-vectors are normalised, those of b=0 volumes are set to zero."""
    from dipy.core.gradients import gradient_table

    bvals = np.asarray(bvals, float).ravel()
    bvecs = np.asarray(bvecs, float)
    if bvecs.ndim != 2 or 3 not in bvecs.shape:
        raise ValueError(f"b-vectors must be (N, 3) or (3, N), got {bvecs.shape}")
    if bvecs.shape[1] != 3 or (bvecs.shape[0] == 3 and bvals.size != 3):
        bvecs = bvecs.T  # (3, N) -> (N, 3)
    if bvecs.shape[0] != bvals.size:
        raise ValueError(f"{bvecs.shape[0]} b-vectors for {bvals.size} b-values")
    b = _round_bvals(bvals, b0_threshold)
    norm = np.linalg.norm(bvecs, axis=1)
    bad = (b > 0) & (norm < 1e-6)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} diffusion-weighted volume(s) have a zero b-vector")
    vecs = np.where((b > 0)[:, None], bvecs / np.maximum(norm, 1e-12)[:, None], 0.0)
    return gradient_table(b, bvecs=vecs, b0_threshold=b0_threshold)


def _mean_b0(data, gtab) -> np.ndarray:
    if not gtab.b0s_mask.any():
        raise ValueError("the DWI series has no b=0 volume")
    return np.asarray(data[..., gtab.b0s_mask], np.float32).mean(-1)


def compute_brain_mask(data, gtab, median_radius=2, numpass=2) -> np.ndarray:
    """Brain mask from the mean b=0 image: dipy ``median_otsu``.

    Thin slabs (fewer than 8 slices) are filtered slice by slice (2-D median filter, via
    ``median_otsu`` on each slice) so the few slices do not erode each other; a plain Otsu threshold
    of the mean b=0 is the fallback when that leaves nothing."""
    from dipy.segment.mask import median_otsu
    from dipy.segment.threshold import otsu

    b0 = _mean_b0(data, gtab)
    if b0.ndim != 3:
        raise ValueError(f"expected a 4-D DWI series, got {data.ndim}-D")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if min(b0.shape) >= 8:
            _, mask = median_otsu(b0, median_radius=median_radius, numpass=numpass)
        else:
            mask = np.zeros(b0.shape, bool)
            axis = int(np.argmin(b0.shape))
            for k in range(b0.shape[axis]):
                sl = [slice(None)] * 3
                sl[axis] = k
                sl = tuple(sl)
                img = b0[sl]
                if img.max() > img.min():
                    _, m = median_otsu(img, median_radius=median_radius, numpass=numpass)
                    mask[sl] = m
    if not mask.any() and b0.max() > b0.min():
        mask = b0 > otsu(b0)
    return np.asarray(mask, bool)


def choose_shell(bvals) -> float:
    """The shell used by single-shell CSD on multi-shell data: the one closest to b=3000.

    Higher b gives sharper fibre responses and better-resolved crossings. On our phantom (SNR 30,
    crossings >= 60 deg, see tests/test_fodf_accuracy.py) both fibres were found in 98 % of
    crossings at b=3000, 99 % at b=2000 (a tie) and 82 % at b=1000; single-fibre peaks were
    equally good on every shell. Ties go to the higher b."""
    sh = shells(bvals)
    if not sh:
        raise ValueError("no diffusion-weighted volumes")
    return float(min(sh, key=lambda b: (abs(b - PREFERRED_SHELL), -b)))


def on_shell(bvals, shell) -> np.ndarray:
    """Boolean (N,): the volumes of ``shell`` (b-values rounded as in :func:`shells`)."""
    return np.isclose(_round_bvals(bvals), shell)


def csd_min_directions(sh_order: int) -> int:
    """Independent diffusion-weighted directions one shell needs for CSD at ``sh_order``: the
    number of SH coefficients up to order ``min(sh_order, 4)`` (15 from order 4 on, 6 at order 2).

    CSD starts from an unconstrained fit truncated at order 4 (Tournier 2007; dipy's ``csdeconv``
    uses its first 15 coefficients), which the data must determine; the higher orders come from
    the non-negativity constraint (super-resolution), so 32 directions at order 8 (45
    coefficients) remain allowed."""
    return n_coeffs(min(sh_order, 4))


def independent_directions(bvecs, sh_order: int) -> int:
    """How many SH coefficients up to ``min(sh_order, 4)`` the unit ``bvecs`` (N, 3) determine:
    the rank of the SH basis sampled there (repeated and antipodal directions count once)."""
    from .basis import INTERNAL, _basis

    bvecs = np.asarray(bvecs, float).reshape(-1, 3)
    if not len(bvecs):
        return 0
    return int(np.linalg.matrix_rank(_basis(INTERNAL, min(sh_order, 4), bvecs)))


def _select_shell(data, gtab, shell):
    from dipy.core.gradients import gradient_table

    keep = gtab.b0s_mask | np.isclose(gtab.bvals, shell)
    sub = gradient_table(gtab.bvals[keep], bvecs=gtab.bvecs[keep],
                         b0_threshold=gtab.b0_threshold)
    return data[..., keep], sub


def estimate_response_ssst(data, gtab, mask, fa_thr=0.7, min_voxels=50):
    """Single-fibre response (evals, S0) from the data, as a user's pipeline would.

    Voxels of the brain mask with FA > ``fa_thr`` (lowered in steps down to 0.5 until at least
    ``min_voxels`` are found; if that still fails, the 300 highest-FA voxels) feed dipy's
    ``response_from_mask_ssst`` (tensor fit, mean eigenvalues, mean S0)."""
    import dipy.reconst.dti as dti
    from dipy.reconst.csdeconv import response_from_mask_ssst

    idx = np.flatnonzero(mask)
    if idx.size == 0:
        raise ValueError("empty mask: cannot estimate a response function")
    rng = np.random.default_rng(0)
    if idx.size > 60000:  # the FA of a random subset is enough to find the WM voxels
        idx = np.sort(rng.choice(idx, 60000, replace=False))
    flat = data.reshape(-1, data.shape[-1])[idx].astype(np.float64)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        fa = dti.TensorModel(gtab).fit(flat).fa
    fa = np.nan_to_num(fa)
    sel = None
    for thr in np.arange(fa_thr, 0.499, -0.05):
        if (fa > thr).sum() >= min_voxels:
            sel, used = fa > thr, float(thr)
            break
    if sel is None:
        order = np.argsort(fa)[::-1][: min(300, fa.size)]
        sel = np.zeros(fa.size, bool)
        sel[order] = True
        used = float(fa[order].min())
    resp_mask = np.zeros(data.shape[:3], bool)
    resp_mask.reshape(-1)[idx[sel]] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        response, ratio = response_from_mask_ssst(gtab, data, resp_mask)
    return response, {"fa_threshold": round(used, 3), "n_voxels": int(sel.sum()),
                      "ratio": float(ratio)}


def _fit_in_mask(model, data, mask, sh_order, **fit_kw):
    """Fit a dipy SH deconvolution model on the voxels of ``mask`` only.

    Returns ``(sh, idx)``: float32 (X, Y, Z, n_coeffs) in the non-legacy basis (dipy's deconvolution
    models work in the legacy one), zeros outside the mask, and the flat indices fitted."""
    from dipy.reconst.shm import convert_sh_from_legacy

    sh = np.zeros(data.shape[:3] + (n_coeffs(sh_order),), np.float32)
    idx = np.flatnonzero(mask)
    if idx.size:
        flat = data.reshape(-1, data.shape[-1])[idx].astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            coef = model.fit(flat[:, None, None, :], **fit_kw).shm_coeff[:, 0, 0]
        sh.reshape(-1, sh.shape[-1])[idx] = np.nan_to_num(convert_sh_from_legacy(coef, SH_BASIS))
    return sh, idx


def fit_csd(data, gtab, mask, sh_order=6, method="auto", shell=None, *, lambda_=1.0, tau=0.1,
            response_mask=None, n_jobs=1):
    """Constrained spherical deconvolution.

    ``method``: ``"ssst"`` single-shell single-tissue CSD (Tournier 2007) on one shell (``shell``,
    default :func:`choose_shell`); ``"msmt"`` dipy's multi-shell multi-tissue CSD (needs cvxpy,
    not a project dependency, and is slow); ``"auto"`` = ``"ssst"`` (on multi-shell data too).

    Returns ``(sh, info)``: ``sh`` float32 (X, Y, Z, n_coeffs(sh_order)) in the non-legacy
    descoteaux07 basis (zeros outside ``mask``) and a JSON-serialisable ``info`` dict.
    The response is estimated from the voxels of ``response_mask`` (default: ``mask``, which should
    then be a brain mask); ``n_jobs > 1`` uses dipy's joblib engine."""
    from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel

    t0 = time.perf_counter()
    data = np.asarray(data)
    mask = np.asarray(mask, bool)
    if data.ndim != 4 or mask.shape != data.shape[:3]:
        raise ValueError(f"data {data.shape} and mask {mask.shape} do not match")
    all_shells = shells(gtab.bvals)
    if method not in ("auto", "ssst", "msmt"):
        raise ValueError(f"unknown CSD method {method!r}")
    if method == "msmt":
        rmask = mask if response_mask is None else np.asarray(response_mask, bool)
        return _fit_msmt(data, gtab, mask, rmask, sh_order, t0)
    if shell is None:
        shell = choose_shell(gtab.bvals)
    shell = float(shell)
    if not any(np.isclose(shell, s) for s in all_shells):
        raise ValueError(f"shell b={shell:g} not in the data (shells: {all_shells})")
    sdata, sgtab = _select_shell(data, gtab, shell)
    response, rinfo = estimate_response_ssst(
        sdata, sgtab, mask if response_mask is None else np.asarray(response_mask, bool))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "more parameters than data points" for L=8, 32 dirs
        model = ConstrainedSphericalDeconvModel(sgtab, response, sh_order_max=sh_order,
                                                lambda_=lambda_, tau=tau)
    kw = {} if n_jobs == 1 else {"engine": "joblib", "n_jobs": int(n_jobs)}
    sh, idx = _fit_in_mask(model, sdata, mask, sh_order, **kw)
    evals, s0 = response
    info = {
        "method": "ssst",
        "requested_method": method,
        "shells_available": all_shells,
        "shells_used": [shell],
        "response": {"evals": [float(v) for v in evals], "S0": float(s0), **rinfo},
        "sh_order": int(sh_order),
        "basis": SH_BASIS,
        "legacy": LEGACY,
        "lambda": float(lambda_),
        "tau": float(tau),
        "n_voxels": int(idx.size),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return sh, info


def _fit_msmt(data, gtab, mask, response_mask, sh_order, t0):
    """dipy's multi-shell multi-tissue CSD (Jeurissen 2014): WM/GM/CSF responses from the data
    (``mask_for_response_msmt`` on ``response_mask``), then per-voxel quadratic programs (cvxpy).
    Returns the WM fODF only."""
    try:
        import cvxpy  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "method='msmt' needs cvxpy (dipy.reconst.mcsd), which is not installed; "
            "install cvxpy or use method='ssst' (the default on multi-shell data)"
        ) from None
    from dipy.reconst.mcsd import (
        MultiShellDeconvModel,
        mask_for_response_msmt,
        multi_shell_fiber_response,
        response_from_mask_msmt,
    )
    from dipy.core.gradients import unique_bvals_tolerance

    if len(shells(gtab.bvals)) < 2:
        raise ValueError("multi-shell CSD needs at least two non-zero shells")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wm_m, gm_m, csf_m = mask_for_response_msmt(gtab, data * response_mask[..., None])
        r_wm, r_gm, r_csf = response_from_mask_msmt(gtab, data, wm_m, gm_m, csf_m)
        resp = multi_shell_fiber_response(sh_order, unique_bvals_tolerance(gtab.bvals),
                                          wm_rf=r_wm, gm_rf=r_gm, csf_rf=r_csf)
        model = MultiShellDeconvModel(gtab, resp, sh_order_max=sh_order)
    sh, idx = _fit_in_mask(model, data, mask, sh_order)  # WM fODF part only
    info = {"method": "msmt", "shells_used": shells(gtab.bvals), "sh_order": int(sh_order),
            "response": {"wm": np.asarray(r_wm).tolist(), "gm": np.asarray(r_gm).tolist(),
                         "csf": np.asarray(r_csf).tolist()},
            "basis": SH_BASIS, "legacy": LEGACY, "n_voxels": int(idx.size),
            "seconds": round(time.perf_counter() - t0, 3)}
    return sh, info


def sh_anisotropy(sh, max_order=2) -> np.ndarray:
    """Scale-free fODF anisotropy in [0, 1]: sqrt(sum_{0<l<=L} c^2 / sum_{l<=L} c^2).

    ``L = max_order`` (default 2; ``None`` = all orders). For the orthonormal real SH basis this is
    the fraction of the fODF's L2 norm carried by the non-isotropic orders: 0 for an isotropic
    fODF, 0 where the fODF is 0. Orders above 2 are left out by default because deconvolution
    turns noise into sharp high-order lobes everywhere: with all orders (L=6), CSD on noisy
    isotropic voxels of our phantom scores ~0.80 against ~0.95 in WM; with L=2, ~0.36 against
    ~0.90 (the ordering of voxels is about the same either way)."""
    from dipy.reconst.shm import sph_harm_ind_list

    sh = np.asarray(sh, np.float64)
    order = sh_order_from_ncoeffs(sh.shape[-1])
    _, l_values = sph_harm_ind_list(order)
    keep = l_values <= (order if max_order is None else max_order)
    sq = sh[..., keep] ** 2
    total = sq.sum(-1)
    aniso = sq[..., l_values[keep] > 0].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.sqrt(np.where(total > 0, aniso / np.where(total > 0, total, 1.0), 0.0))
    return np.nan_to_num(out).astype(np.float32)


def default_sphere():
    from dipy.data import get_sphere

    return get_sphere(name="repulsion724")


def peaks_from_sh(sh, mask=None, npeaks=3, relative_peak_threshold=0.25,
                  min_separation_angle=25, sphere=None, chunk=20000):
    """Peaks of the fODF in every masked voxel with dipy's ``peak_directions``.

    The SH (non-legacy descoteaux07) is evaluated on ``sphere`` (default repulsion724) in chunks;
    peak search runs per voxel. Returns ``dirs`` (X, Y, Z, npeaks, 3) unit vectors in the
    voxel-array frame and ``values`` (X, Y, Z, npeaks) fODF amplitudes, largest first, zeros
    where absent."""
    from dipy.direction.peaks import peak_directions
    from dipy.reconst.shm import sh_to_sf_matrix

    sh = np.asarray(sh)
    spatial = sh.shape[:-1]
    order = sh_order_from_ncoeffs(sh.shape[-1])
    if sphere is None:
        sphere = default_sphere()
    if mask is None:
        mask = np.any(sh != 0, axis=-1)
    mask = np.asarray(mask, bool) & np.any(sh != 0, axis=-1)
    B, _ = sh_to_sf_matrix(sphere, sh_order_max=order, basis_type=SH_BASIS, legacy=LEGACY)
    dirs = np.zeros(spatial + (npeaks, 3), np.float32)
    vals = np.zeros(spatial + (npeaks,), np.float32)
    fd = dirs.reshape(-1, npeaks, 3)
    fv = vals.reshape(-1, npeaks)
    idx = np.flatnonzero(mask)
    flat = sh.reshape(-1, sh.shape[-1])
    for a in range(0, idx.size, chunk):
        ii = idx[a:a + chunk]
        sf = flat[ii].astype(np.float64) @ B
        for j, odf in zip(ii, sf):
            if odf.max() <= 0:
                continue
            d, v, _ = peak_directions(odf, sphere,
                                      relative_peak_threshold=relative_peak_threshold,
                                      min_separation_angle=min_separation_angle)
            n = min(npeaks, len(v))
            fd[j, :n] = d[:n]
            fv[j, :n] = v[:n]
    return dirs, vals
