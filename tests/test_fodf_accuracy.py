"""CSD peak accuracy against the phantom's ground-truth fibre populations.

One clean (SNR 30) 2 mm phantom subject (multi-shell b = 1000/2000/3000, 32 directions each).
The fit is the product's default path: ``fit_csd(method="auto")`` picks the b=3000 shell and
estimates the response from the brain mask's high-FA voxels (no ground truth used). To keep the
test short, deconvolution and peak search run on the evaluated voxels only; the response still
comes from the whole brain mask, exactly as on a full fit.

Measured (subject 1, seed 0, phantom code of this date): (a) 6606 single-fibre voxels, 100 % within
10 deg (median 3.1 deg, mostly the repulsion724 sphere's spacing); (b) 118 crossings >= 60 deg,
98.3 % with both fibres found within 15 deg. Same test on the other shells: b=2000 99.2 %,
b=1000 82.2 % (single fibres 100 % on every shell).
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import angle_deg
from gentract_bids.fodf import csd
from gentract_bids.phantom import cohort


@pytest.fixture(scope="module")
def phantom_fit():
    subj = cohort.make_subject(1, seed=0, snr=30.0, voxel_size=2.0)
    wm, pd, pf = subj.wm, subj.peak_dirs, subj.peak_fractions
    brain = subj.brain_mask > 0
    single = brain & (wm >= 0.8) & (pf[..., 0] >= 0.9 * wm)
    cross = (brain & (pf[..., 0] >= 0.3) & (pf[..., 1] >= 0.3)
             & (angle_deg(pd[..., 0, :], pd[..., 1, :]) >= 60))
    gtab = csd.make_gtab(subj.bvals, subj.bvecs)
    sh, info = csd.fit_csd(subj.dwi, gtab, single | cross, response_mask=brain)
    dirs, vals = csd.peaks_from_sh(sh, single | cross, npeaks=3)
    return subj, single, cross, dirs, vals, info


def test_auto_uses_b3000_and_a_data_driven_response(phantom_fit):
    subj, single, cross, dirs, vals, info = phantom_fit
    assert info["shells_used"] == [3000.0] and info["method"] == "ssst"
    assert info["response"]["n_voxels"] >= 100 and info["response"]["fa_threshold"] >= 0.5


def test_single_fibre_peaks(phantom_fit):
    subj, single, cross, dirs, vals, info = phantom_fit
    err = angle_deg(dirs[single][:, 0], subj.peak_dirs[single][:, 0])
    frac = float(np.mean(err < 10))
    print(f"(a) single-fibre voxels: {single.sum()}, main peak within 10 deg: {100 * frac:.1f} %, "
          f"median error {np.median(err):.2f} deg")
    assert single.sum() >= 1000
    assert frac >= 0.90


def test_crossings_resolved(phantom_fit):
    subj, single, cross, dirs, vals, info = phantom_fit
    d, v, t = dirs[cross], vals[cross], subj.peak_dirs[cross]
    best = []
    for k in range(2):
        e = angle_deg(d, t[:, k][:, None, :])
        e[v <= 0] = np.inf
        best.append(e)
    ok = (best[0].min(1) < 15) & (best[1].min(1) < 15)
    ok &= best[0].argmin(1) != best[1].argmin(1)  # two distinct peaks, one per fibre
    frac = float(np.mean(ok))
    print(f"(b) crossings >= 60 deg (both fractions >= 0.3): {cross.sum()}, both fibres within "
          f"15 deg: {100 * frac:.1f} %")
    assert cross.sum() >= 30
    assert frac >= 0.60
