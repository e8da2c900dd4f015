"""Ground-truth scoring of a tractogram on a phantom, in the manner of Tractometer 2.0.

Inputs are the phantom cohort's truth derivatives (``derivatives/phantom-truth/sub-XX/dwi/``):
per-bundle voxel masks of the whole tube, of its head and tail caps (4-D, one volume per bundle,
names in the sidecar's ``BundleNames``), tissue probability maps, a brain mask and the truth
tractogram (TRX, one group per bundle).

Classification of each streamline (labels follow :mod:`gentract_bids.evaluation.metrics`):

* **valid (VS)**, labelled with its bundle ``b``: one endpoint in ``head_b`` and the other in
  ``tail_b`` (either order), at least ``inside_tolerance`` (default 98 %) of its points inside
  ``b``'s tube mask dilated by ``mask_dilation`` voxels, and a length within ``b``'s plausible range
  (default: [0.8 x shortest, 1.2 x longest] truth streamline of ``b``). When several bundles qualify
  (overlapping caps), the one with the largest inside fraction wins (then the first in order).
* **IC** (invalid connection): not valid, and its two endpoints lie in two *different* endpoint
  regions (the 2B head/tail caps). This includes wrong-path connections (WPC: a valid head/tail pair
  but leaving the bundle mask or implausible length), also counted separately in ``n_wpc``.
* **NC** (no connection): every other non-degenerate streamline (an endpoint in no region, or both
  endpoints only in the same single region).
* **degenerate**: fewer than 2 points or a non-finite coordinate.

IB (invalid bundles) = number of distinct unordered endpoint-region pairs, excluding valid
(head_b, tail_b) pairs, reached by IC streamlines (each IC streamline contributes its
lexicographically smallest such pair; a pure WPC contributes none).

Voxel scores per bundle (Tractometer): with ``V`` the voxels traversed by the bundle's valid
streamlines and ``G`` its (undilated) tube mask: OL = |V ∩ G| / |G|, OR = |V \\ G| / |G|,
F1 = 2 |V ∩ G| / (|V| + |G|) (the Dice of the voxel masks). Globally, the binary and weighted
Dice of the track-density maps of the whole tractogram (and of its valid part) against the truth
tractogram's density map are reported.

The classification depends only on endpoint sets, inside fractions and lengths, so reversing the
point order of any streamline changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .metrics import summarise
from .sanity import (non_finite, pack_streamlines, step_lengths, streamline_voxels, unique_int,
                     voxel_index_of_points)

LENGTH_MARGIN = 0.2  # default plausible length: [(1 - m) min, (1 + m) max] of the truth lengths


@dataclass
class GroundTruth:
    """Ground truth of one phantom subject (voxel arrays on the DWI grid, RAS+ ``affine``)."""

    bundle_names: list[str]
    affine: np.ndarray
    bundle_masks: np.ndarray  # (X, Y, Z, B) bool
    head_masks: np.ndarray  # (X, Y, Z, B) bool
    tail_masks: np.ndarray  # (X, Y, Z, B) bool
    streamlines: list = field(default_factory=list)  # truth tractogram (RAS+ mm)
    groups: dict = field(default_factory=dict)  # bundle name -> indices into ``streamlines``
    wm: np.ndarray | None = None  # probseg (X, Y, Z) float
    gm: np.ndarray | None = None
    csf: np.ndarray | None = None
    brain_mask: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.bundle_masks.shape[:3])

    def bundle_streamlines(self, name: str) -> list:
        return [self.streamlines[i] for i in self.groups.get(name, [])]

    def length_ranges(self, margin: float = LENGTH_MARGIN) -> dict[str, tuple[float, float]]:
        """Plausible length (mm) per bundle from its truth streamlines; (0, inf) without any."""
        out = {}
        for name in self.bundle_names:
            sl = self.bundle_streamlines(name)
            if not sl:
                out[name] = (0.0, float("inf"))
                continue
            lens = streamline_lengths(sl)
            out[name] = (float(lens.min() * (1 - margin)), float(lens.max() * (1 + margin)))
        return out


def streamline_lengths(streamlines) -> np.ndarray:
    """(N,) length in mm of each streamline (vectorised)."""
    pk = pack_streamlines(streamlines)
    return pk.reduce(np.add, step_lengths(pk), 0.0)


def _truth_files(truth_dir, subject) -> tuple[Path, str]:
    sub = subject if str(subject).startswith("sub-") else f"sub-{subject}"
    truth_dir = Path(truth_dir)
    for d in (truth_dir / "derivatives" / "phantom-truth" / sub / "dwi", truth_dir / sub / "dwi",
              truth_dir):
        if (d / f"{sub}_space-dwi_desc-bundles_mask.nii.gz").exists():
            return d, f"{sub}_space-dwi"
    raise FileNotFoundError(f"no phantom truth for {sub} under {truth_dir}")


def load_groundtruth(truth_dir, subject) -> GroundTruth:
    """Read one subject's phantom truth. ``truth_dir`` may be the BIDS root, its
    ``derivatives/phantom-truth`` folder or the subject's ``dwi`` folder; ``subject`` is ``"01"``
    or ``"sub-01"``."""
    from ..io.tractogram import load_tractogram

    d, p = _truth_files(truth_dir, subject)
    img = nib.load(str(d / f"{p}_desc-bundles_mask.nii.gz"))
    names = json.loads((d / f"{p}_desc-bundles_mask.json").read_text())["BundleNames"]

    def _mask4(desc):
        arr = np.asarray(nib.load(str(d / f"{p}_desc-{desc}_mask.nii.gz")).dataobj) > 0
        return arr.reshape(*arr.shape[:3], -1)

    def _opt(fname, binary=False):
        f = d / fname
        if not f.exists():
            return None
        arr = np.asarray(nib.load(str(f)).dataobj)
        return arr > 0 if binary else arr.astype(np.float32)

    streamlines, groups = [], {}
    trx = d / f"{p}_model-truth_streamlines.trx"
    if trx.exists():
        streamlines, groups = load_tractogram(trx)
    return GroundTruth(
        bundle_names=list(names), affine=img.affine.copy(), bundle_masks=_mask4("bundles"),
        head_masks=_mask4("heads"), tail_masks=_mask4("tails"), streamlines=streamlines,
        groups=groups, wm=_opt(f"{p}_label-WM_probseg.nii.gz"),
        gm=_opt(f"{p}_label-GM_probseg.nii.gz"), csf=_opt(f"{p}_label-CSF_probseg.nii.gz"),
        brain_mask=_opt(f"{p}_desc-brain_mask.nii.gz", binary=True))


def groundtruth_from_subject(subj) -> GroundTruth:
    """Ground truth of an in-memory :class:`gentract_bids.phantom.cohort.Subject`."""
    streamlines, groups = [], {}
    for name in subj.bundle_names:
        groups[name] = np.arange(len(streamlines), len(streamlines) + len(subj.streamlines[name]))
        streamlines += list(subj.streamlines[name])
    return GroundTruth(list(subj.bundle_names), np.asarray(subj.affine, float),
                       subj.bundle_masks > 0, subj.head_masks > 0, subj.tail_masks > 0,
                       streamlines, groups, subj.wm, subj.gm, subj.csf, subj.brain_mask > 0)


# ----------------------------------------------------------------------------- helpers


def dilate_masks_voxel(masks: np.ndarray, iterations: int) -> np.ndarray:
    """Dilate each volume of a (X, Y, Z, B) bool array by ``iterations`` voxels (26-neighbours)."""
    if iterations <= 0:
        return masks.astype(bool)
    st = np.ones((3, 3, 3), bool)
    out = np.empty(masks.shape, bool)
    for b in range(masks.shape[3]):
        out[..., b] = ndimage.binary_dilation(masks[..., b], st, iterations=int(iterations))
    return out


def _flat_with_sentinel(masks: np.ndarray) -> np.ndarray:
    """(X*Y*Z + 1, B) bool; the last row (all False) is where out-of-grid points look up."""
    flat = masks.reshape(-1, masks.shape[-1])
    return np.vstack([flat, np.zeros((1, flat.shape[1]), bool)])


def _ragged_arange(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each (s, c)."""
    total = int(counts.sum())
    base = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return base + np.arange(total)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Binary Dice of two boolean arrays (1.0 when both are empty)."""
    s = int(a.sum()) + int(b.sum())
    return float(2 * int((a & b).sum()) / s) if s else 1.0


def weighted_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Weighted Dice of two density maps (Cousineau et al. 2017): sum over the common support of
    both normalised densities, divided by 2."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    sa, sb = a.sum(), b.sum()
    if sa == 0 or sb == 0:
        return 1.0 if sa == sb else 0.0
    common = (a > 0) & (b > 0)
    return float((a[common] / sa + b[common] / sb).sum() / 2.0)


def _density(sid_vox: tuple[np.ndarray, np.ndarray], nvox: int, select=None) -> np.ndarray:
    sid, vox = sid_vox
    if select is not None:
        keep = select[sid]
        vox = vox[keep]
    return np.bincount(vox, minlength=nvox)


# ----------------------------------------------------------------------------- scoring


def score_groundtruth(
    streamlines,
    gt: GroundTruth,
    *,
    mask_dilation: int = 1,
    length_range=None,
    inside_tolerance: float = 0.98,
    min_streamlines: int = 1,
) -> tuple[np.ndarray, dict]:
    """Score ``streamlines`` (RAS+ mm) against ``gt``. Returns ``(labels, summary)``.

    ``length_range``: None (per-bundle range from the truth streamlines, see module docstring), a
    ``(lo, hi)`` pair in mm for every bundle, or a dict ``{bundle: (lo, hi)}``.
    ``summary`` is :func:`~gentract_bids.evaluation.metrics.summarise` output (mode
    ``"groundtruth"``) with extra keys: ``vs_ratio`` (= precision), ``is_ratio``, ``n_vs``,
    ``n_is``, ``n_ic``, ``ic_ratio``, ``n_nc``, ``nc_ratio``, ``n_wpc``, ``ib`` (invalid bundles),
    ``ib_pairs``, ``density_dice``, ``density_weighted_dice``, ``density_dice_valid``,
    ``inside_tolerance``, ``mask_dilation`` and ``length_ranges``. The valid streamlines of each
    bundle are ``valid_indices(labels, gt.bundle_names)`` (index arrays, for per-bundle
    tractograms).
    """
    pk = pack_streamlines(streamlines)
    n = len(pk)
    names = list(gt.bundle_names)
    nb = len(names)
    shape = gt.shape
    nvox = int(np.prod(shape))

    # --- endpoints -> endpoint regions (2B): region 2b = head_b, 2b + 1 = tail_b
    nz = (pk.counts >= 2) & ~non_finite(pk)  # the others are "degenerate"
    flat_raw = voxel_index_of_points(pk.points, gt.affine, shape)
    flat = np.where(flat_raw < 0, nvox, flat_raw)
    heads = _flat_with_sentinel(gt.head_masks)
    tails = _flat_with_sentinel(gt.tail_masks)
    first_v = flat[pk.offsets[nz]]
    last_v = flat[pk.last[nz]]
    s_head, s_tail = heads[first_v], tails[first_v]  # (n', B)
    e_head, e_tail = heads[last_v], tails[last_v]
    conn = (s_head & e_tail) | (s_tail & e_head)  # a valid pair of bundle b

    # --- inside fraction for candidate (streamline, bundle) pairs only
    cand_s, cand_b = np.nonzero(conn)
    sidx = np.flatnonzero(nz)[cand_s]  # streamline indices of candidates
    frac = np.zeros(len(cand_s))
    if len(cand_s):
        inside_masks = _flat_with_sentinel(dilate_masks_voxel(gt.bundle_masks, mask_dilation))
        cnt = pk.counts[sidx]
        pts = _ragged_arange(pk.offsets[sidx], cnt)
        inside = inside_masks[flat[pts], np.repeat(cand_b, cnt)]
        starts = np.r_[0, np.cumsum(cnt)[:-1]]
        frac = np.add.reduceat(inside.astype(np.int64), starts) / cnt

    # --- lengths
    lengths = streamline_lengths(pk)
    if length_range is None:
        rng = gt.length_ranges()
    elif isinstance(length_range, dict):
        rng = {b: tuple(length_range.get(b, (0.0, np.inf))) for b in names}
    else:
        rng = {b: (float(length_range[0]), float(length_range[1])) for b in names}
    lo = np.array([rng[b][0] for b in names])
    hi = np.array([rng[b][1] for b in names])
    ok_len = (lengths[sidx] >= lo[cand_b]) & (lengths[sidx] <= hi[cand_b])
    ok = ok_len & (frac >= inside_tolerance - 1e-12)

    # --- valid: best qualifying bundle per streamline (largest inside fraction, then first bundle)
    bundle_of = np.full(n, -1, np.int64)
    if ok.any():
        cs, cb, cf = sidx[ok], cand_b[ok], frac[ok]
        order = np.lexsort((cb, -cf, cs))
        cs, cb = cs[order], cb[order]
        firsts = np.r_[True, cs[1:] != cs[:-1]]
        bundle_of[cs[firsts]] = cb[firsts]
    valid = bundle_of >= 0

    # --- IC / NC / WPC / IB
    s_reg = np.zeros((n, 2 * nb), bool)
    e_reg = np.zeros((n, 2 * nb), bool)
    s_reg[nz, 0::2], s_reg[nz, 1::2] = s_head, s_tail
    e_reg[nz, 0::2], e_reg[nz, 1::2] = e_head, e_tail
    s_any, e_any = s_reg.any(1), e_reg.any(1)
    # two different regions: not (both endpoints only in the same single region)
    single_same = (s_reg.sum(1) == 1) & (e_reg.sum(1) == 1) & np.all(s_reg == e_reg, axis=1)
    ic = ~valid & nz & s_any & e_any & ~single_same
    conn_full = np.zeros((n, nb), bool)
    conn_full[nz] = conn
    ib_pairs = _invalid_pairs(s_reg, e_reg, np.flatnonzero(ic), nb)
    has_pair = ib_pairs[:, 0] >= 0
    n_wpc = int((ic & conn_full.any(1)).sum())

    labels = np.full(n, "NC", dtype=object)
    labels[~nz] = "degenerate"
    labels[ic] = "IC"
    names_arr = np.array(names, dtype=object)
    labels[valid] = names_arr[bundle_of[valid]]
    labels = labels.astype(str)

    # --- voxel scores (OL / OR / F1) of valid streamlines, and density Dice
    sid_vox = streamline_voxels(pk, gt.affine, shape, point_voxels=flat_raw)
    sid, vox = sid_vox
    gt_flat = gt.bundle_masks.reshape(-1, nb)
    scores: dict = {}
    vb = bundle_of[sid]
    keep = vb >= 0
    key = unique_int(vb[keep] * nvox + vox[keep])  # unique (bundle, voxel) of valid streamlines
    kb, kv = key // nvox, key % nvox
    bounds = np.searchsorted(kb, np.arange(nb + 1))
    in_gt = gt_flat[kv, kb]
    g_size = gt_flat.sum(0)
    n_per_bundle = np.bincount(bundle_of[valid], minlength=nb)
    for b, name in enumerate(names):
        a, z = bounds[b], bounds[b + 1]
        v_size = z - a
        inter = int(in_gt[a:z].sum())
        g = int(g_size[b])
        if n_per_bundle[b] == 0:
            scores[name] = {"overlap": 0.0, "overreach": 0.0, "f1": 0.0}
            continue
        scores[name] = {
            "overlap": inter / g if g else 0.0,
            "overreach": (v_size - inter) / g if g else 0.0,
            "f1": 2 * inter / (v_size + g) if (v_size + g) else 0.0,
        }

    dens = _density(sid_vox, nvox)
    dens_valid = _density(sid_vox, nvox, select=valid)
    if gt.streamlines:
        gt_dens = _density(streamline_voxels(pack_streamlines(gt.streamlines), gt.affine, shape),
                           nvox)
        d_dice = dice(dens > 0, gt_dens > 0)
        d_wdice = weighted_dice(dens, gt_dens)
        d_dice_valid = dice(dens_valid > 0, gt_dens > 0)
    else:
        d_dice = d_wdice = d_dice_valid = None

    n_vs = int(valid.sum())
    n_ic = int(ic.sum())
    n_nc = int((labels == "NC").sum())
    uniq_pairs = sorted({(int(a), int(b)) for a, b in ib_pairs[has_pair]})
    region_names = [f"{b}:{part}" for b in names for part in ("head", "tail")]
    extra = {
        "vs_ratio": n_vs / n if n else 0.0,
        "is_ratio": (n - n_vs) / n if n else 0.0,
        "n_vs": n_vs,
        "n_is": n - n_vs,
        "n_ic": n_ic,
        "ic_ratio": n_ic / n if n else 0.0,
        "n_nc": n_nc,
        "nc_ratio": n_nc / n if n else 0.0,
        "n_wpc": n_wpc,
        "ib": len(uniq_pairs),
        "ib_pairs": [[region_names[a], region_names[b]] for a, b in uniq_pairs],
        "density_dice": d_dice,
        "density_weighted_dice": d_wdice,
        "density_dice_valid": d_dice_valid,
        "inside_tolerance": float(inside_tolerance),
        "mask_dilation": int(mask_dilation),
        "length_ranges": {b: [rng[b][0], rng[b][1]] for b in names},
    }
    summary = summarise("groundtruth", labels, names, min_streamlines=min_streamlines,
                        bundle_scores=scores, extra=extra)
    return labels, summary


def _invalid_pairs(s_reg: np.ndarray, e_reg: np.ndarray, rows: np.ndarray, nb: int,
                   chunk: int = 4096) -> np.ndarray:
    """For each row in ``rows``, the lexicographically smallest unordered pair (r1 < r2) of
    endpoint regions with r1 at one end and r2 at the other, excluding valid (head_b, tail_b)
    pairs; (-1, -1) where there is none. Chunked (n, 2B, 2B) boolean products."""
    nr = 2 * nb
    out = np.full((len(rows), 2), -1, np.int64)
    forbid = np.eye(nr, dtype=bool)
    for b in range(nb):
        forbid[2 * b, 2 * b + 1] = forbid[2 * b + 1, 2 * b] = True
    upper = np.triu(np.ones((nr, nr), bool), 1) & ~forbid
    for a in range(0, len(rows), chunk):
        r = rows[a:a + chunk]
        s, e = s_reg[r], e_reg[r]
        pair = (s[:, :, None] & e[:, None, :]) | (e[:, :, None] & s[:, None, :])
        pair &= upper[None]
        flat = pair.reshape(len(r), -1)
        has = flat.any(1)
        first = flat.argmax(1)
        out[a:a + len(r)][has] = np.stack(np.divmod(first[has], nr), 1)
    return out


def valid_indices(labels, bundle_names) -> dict[str, np.ndarray]:
    """{bundle: int64 index array of the streamlines labelled with it} (all bundles, in order)."""
    labels = np.asarray(labels, dtype=str)
    return {b: np.flatnonzero(labels == b) for b in bundle_names}


def valid_bundle_streamlines(streamlines, labels, bundle_names) -> dict[str, list]:
    """Per-bundle lists of the valid streamlines (for per-bundle tractograms)."""
    return {b: [streamlines[i] for i in idx]
            for b, idx in valid_indices(labels, bundle_names).items()}
