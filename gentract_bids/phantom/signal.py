"""DWI synthesis on a voxel grid: sub-voxel tube occupancy, multi-compartment signal, Rician noise.

Voxel-space helpers say so in their name; everything else is RAS+ mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.spatial import cKDTree

from .geometry import Centreline

FOV_HALF_MM = (80.0, 96.0, 80.0)  # grid half-extent: the model box (75, 90, 75) plus margin
LAMBDA_PAR, LAMBDA_PERP = 1.7e-3, 0.3e-3  # mm^2/s, axially symmetric WM response
D_GM, D_CSF = 0.8e-3, 3.0e-3
S0 = 1000.0


# ----------------------------------------------------------------------------- grid, scheme
def voxel_grid(voxel_size: float, half_extent=FOV_HALF_MM):
    """Shape and RAS+ axis-aligned affine of a grid whose centre is the world origin."""
    shape = tuple(int(np.ceil(2 * h / voxel_size)) for h in half_extent)
    affine = np.diag([voxel_size] * 3 + [1.0])
    affine[:3, 3] = [-(n - 1) / 2 * voxel_size for n in shape]
    return shape, affine


def voxel_centres(shape, affine, index=None) -> np.ndarray:
    """World coordinates (N, 3) of the voxels with flat ``index`` (all voxels if None)."""
    if index is None:
        index = np.arange(int(np.prod(shape)))
    ijk = np.stack(np.unravel_index(index, shape), axis=1).astype(float)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def world_to_voxel_index(points: np.ndarray, shape, affine) -> np.ndarray:
    """Flat index of the voxel containing each point; -1 outside the grid."""
    ijk = np.rint((points - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.array(shape)), axis=1)
    flat = np.full(len(points), -1, np.int64)
    flat[inside] = np.ravel_multi_index(ijk[inside].T, shape)
    return flat


def subvoxel_offsets(n_sub: int, voxel_size: float) -> np.ndarray:
    """(n_sub**3, 3) offsets (mm) of a regular sub-sampling of one voxel, centred."""
    g = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) * voxel_size


@lru_cache(maxsize=16)
def _shell_directions(n: int, shell: int) -> np.ndarray:
    from dipy.core.sphere import HemiSphere, disperse_charges

    rng = np.random.default_rng(1000 + shell)  # fixed: the scheme is the same for every subject
    v = rng.standard_normal((n, 3))
    hemi, _ = disperse_charges(HemiSphere(xyz=v / np.linalg.norm(v, axis=1, keepdims=True)), 2000)
    return hemi.vertices.copy()


def gradient_scheme(bvals=(0, 1000, 2000, 3000), n_dirs: int = 32, n_b0: int = 6):
    """Multi-shell scheme: ``n_b0`` b=0 volumes first, then ``n_dirs`` dispersed directions per
    non-zero shell (each shell its own electrostatic-repulsion set). Returns (bvals, bvecs)."""
    shells = [float(b) for b in bvals if b > 0]
    bv, vecs = [0.0] * n_b0, [np.zeros((n_b0, 3))]
    for k, b in enumerate(shells):
        bv += [b] * n_dirs
        vecs.append(_shell_directions(int(n_dirs), k))
    return np.array(bv), np.concatenate(vecs)


# ----------------------------------------------------------------------------- occupancy
@dataclass
class Populations:
    """Fibre populations per (voxel, bundle) pair and tissue fractions per voxel."""

    voxel: np.ndarray  # (P,) flat voxel index
    bundle: np.ndarray  # (P,) bundle index
    fraction: np.ndarray  # (P,) volume fraction of the voxel
    direction: np.ndarray  # (P, 3) unit mean direction
    wm: np.ndarray  # (X, Y, Z) fraction occupied by any tube
    in_tube: np.ndarray  # (n_voxels, n_sub**3) bool, which sub-samples lie in a tube


def tube_populations(centrelines: list[Centreline], shape, affine, n_sub: int = 3) -> Populations:
    """Which sub-samples of each voxel lie inside which tube, and the local tangent there.

    A sub-sample x is inside a tube if, for its nearest centre-line point c (KD-tree), |x - c| is
    at most the local radius and |(x - c) . t| at most one step (flat end caps).
    """
    vs = float(abs(affine[0, 0]))
    offs = subvoxel_offsets(n_sub, vs)
    ns = len(offs)
    nvox = int(np.prod(shape))
    vox_l, sub_l, bun_l, tan_l = [], [], [], []
    lo_grid = affine[:3, 3]
    for bi, cl in enumerate(centrelines):
        tree = cKDTree(cl.points)
        rmax = float(cl.radii.max())
        lo = np.floor((cl.points.min(0) - rmax - vs - lo_grid) / vs).astype(int)
        hi = np.ceil((cl.points.max(0) + rmax + vs - lo_grid) / vs).astype(int)
        lo, hi = np.maximum(lo, 0), np.minimum(hi, np.array(shape) - 1)
        if np.any(hi < lo):
            continue
        ax = [np.arange(a, b + 1) for a, b in zip(lo, hi)]
        ijk = np.stack(np.meshgrid(*ax, indexing="ij"), -1).reshape(-1, 3)
        centres = ijk * vs + lo_grid
        d, _ = tree.query(centres, distance_upper_bound=rmax + vs * 0.87 + cl.step)
        keep = np.isfinite(d)
        flat = np.ravel_multi_index(ijk[keep].T, shape)
        x = (centres[keep][:, None, :] + offs[None]).reshape(-1, 3)
        d, j = tree.query(x, distance_upper_bound=rmax + cl.step)
        ok = np.isfinite(d)
        jj = np.where(ok, j, 0)
        along = np.abs(((x - cl.points[jj]) * cl.tangents[jj]).sum(1))
        ok &= (d <= cl.radii[jj]) & (along <= cl.step)
        idx = np.nonzero(ok)[0]
        vox_l.append(flat[idx // ns])
        sub_l.append(idx % ns)
        bun_l.append(np.full(len(idx), bi))
        tan_l.append(cl.tangents[jj[idx]])
    vox = np.concatenate(vox_l) if vox_l else np.zeros(0, np.int64)
    sub = np.concatenate(sub_l) if sub_l else np.zeros(0, np.int64)
    bun = np.concatenate(bun_l) if bun_l else np.zeros(0, np.int64)
    tan = np.concatenate(tan_l) if tan_l else np.zeros((0, 3))
    # a sub-sample inside k tubes counts 1/k for each
    key = vox * ns + sub
    ukey, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    w = 1.0 / cnt[inv]
    in_tube = np.zeros((nvox, ns), bool)
    in_tube.ravel()[ukey] = True
    wm = in_tube.sum(1).reshape(shape) / ns
    # group by (voxel, bundle)
    nb = max(len(centrelines), 1)
    pkey, pinv = np.unique(vox * nb + bun, return_inverse=True)
    frac = np.bincount(pinv, weights=w, minlength=len(pkey)) / ns
    dsum = np.stack([np.bincount(pinv, weights=w * tan[:, k], minlength=len(pkey))
                     for k in range(3)], 1)
    dsum /= np.maximum(np.linalg.norm(dsum, axis=1, keepdims=True), 1e-12)
    return Populations(pkey // nb, pkey % nb, frac, dsum, wm, in_tube)


def top_peaks(pop: Populations, shape, k: int = 3):
    """Up to ``k`` populations per voxel, sorted by fraction: dirs (X,Y,Z,k,3), fracs (X,Y,Z,k)."""
    nvox = int(np.prod(shape))
    order = np.lexsort((-pop.fraction, pop.voxel))
    v = pop.voxel[order]
    first = np.r_[0, np.nonzero(np.diff(v))[0] + 1]
    rank = np.arange(len(v)) - np.repeat(first, np.diff(np.r_[first, len(v)]))
    sel = order[rank < k]
    r = rank[rank < k]
    dirs = np.zeros((nvox, k, 3), np.float32)
    fr = np.zeros((nvox, k), np.float32)
    dirs[pop.voxel[sel], r] = pop.direction[sel]
    fr[pop.voxel[sel], r] = pop.fraction[sel]
    return dirs.reshape(*shape, k, 3), fr.reshape(*shape, k)


# ----------------------------------------------------------------------------- signal
def tensor_attenuation(bvals, bvecs, directions, lam_par=LAMBDA_PAR, lam_perp=LAMBDA_PERP):
    """(P, N) signal of axially symmetric tensors along ``directions`` (P, 3)."""
    cos2 = (np.asarray(directions) @ np.asarray(bvecs).T) ** 2
    return np.exp(-np.asarray(bvals)[None] * (lam_perp + (lam_par - lam_perp) * cos2))


def synthesize_dwi(pop: Populations, f_gm, f_csf, bvals, bvecs, snr: float, rng,
                   chunk: int = 16_384) -> np.ndarray:
    """Noisy DWI (X, Y, Z, N) int16: S0 * [sum_p f_p A(v_p) + f_gm e^{-b D_gm} + f_csf e^{-b D_csf}]
    with Rician noise of sigma = S0 / snr (S0 of white matter), processed in voxel chunks."""
    shape = f_gm.shape
    nvox, nb = int(np.prod(shape)), len(bvals)
    bvals = np.asarray(bvals, float)
    e_gm = np.exp(-bvals * D_GM).astype(np.float32)
    e_csf = np.exp(-bvals * D_CSF).astype(np.float32)
    gm, csf = f_gm.ravel().astype(np.float32), f_csf.ravel().astype(np.float32)
    order = np.argsort(pop.voxel, kind="stable")
    pv, pf, pd = pop.voxel[order], pop.fraction[order], pop.direction[order]
    sigma = np.float32(S0 / snr)
    out = np.empty((nvox, nb), np.int16)
    for a in range(0, nvox, chunk):
        b = min(a + chunk, nvox)
        s = gm[a:b, None] * e_gm[None] + csf[a:b, None] * e_csf[None]
        i0, i1 = np.searchsorted(pv, [a, b])
        if i1 > i0:
            att = (pf[i0:i1, None] * tensor_attenuation(bvals, bvecs, pd[i0:i1])).astype(np.float32)
            v = pv[i0:i1]
            starts = np.r_[0, np.nonzero(np.diff(v))[0] + 1]
            s[v[starts] - a] += np.add.reduceat(att, starts, axis=0)
        s *= np.float32(S0)
        n1 = rng.standard_normal(s.shape, dtype=np.float32)
        n1 *= sigma
        s += n1
        s *= s
        n2 = rng.standard_normal(s.shape, dtype=np.float32)
        n2 *= sigma
        n2 *= n2
        s += n2
        np.sqrt(s, out=s)
        np.rint(s, out=s)
        np.minimum(s, 32767, out=s)
        out[a:b] = s
    return out.reshape(*shape, nb)
