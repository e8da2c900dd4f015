"""``gentract`` on a human-anatomy phantom in scanner space with the shipped human-anatomy model:
registration, sampling in the model's space, streamlines back in the subject's space, scored by
the ground truth."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from gentract_bids.cli.run import main
from gentract_bids.io.tractogram import load_tractogram
from gentract_bids.model.inference import shipped_models
from gentract_bids.phantom.cohort import make_cohort

MODEL = "gentract_human_phantom"
pytestmark = pytest.mark.skipif(MODEL not in shipped_models(), reason="no shipped human model")


@pytest.mark.slow
def test_human_phantom_with_the_human_model(tmp_path):
    # development seed 7 (not the held-out 1000), stored LPS and turned 12 degrees
    bids = make_cohort(tmp_path / "bids", seed=7, voxel_size=2.5, anatomy_kind="human",
                       human_poses=[{"index": 2, "storage": "LPS", "angles": [7, -7, 7]}])
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--model", MODEL, "--n-streamlines", "1000", "--random-seed", "3"])
    assert code == 0
    d = out / "sub-01" / "dwi"
    xfm = json.loads((d / "sub-01_from-dwi_to-MNI152NLin6Asym_mode-image_xfm.json").read_text())
    assert xfm["Registration"]["BrainMaskDice"] > 0.85
    sl, _ = load_tractogram(d / "sub-01_space-dwi_model-gentract_streamlines.trx")
    mask_img = nb.load(d / "sub-01_space-dwi_desc-brain_mask.nii.gz")
    mask = np.asarray(mask_img.dataobj) > 0
    pts = np.concatenate(sl)
    inv = np.linalg.inv(mask_img.affine)
    ijk = np.round(pts @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    ok = np.all((ijk >= 0) & (ijk < np.array(mask.shape)), axis=1)
    inside = mask[tuple(ijk[ok].T)].sum() / len(ijk)
    metrics = json.loads((d / "sub-01_space-dwi_desc-eval_model-gentract_metrics.json")
                         .read_text())
    print(f"human phantom, human model: {inside:.1%} of points in the brain mask, precision "
          f"{metrics['precision']:.1%}, {metrics['valid_bundles']}/{metrics['n_bundles']} bundles")
    assert inside > 0.95
    assert metrics["n_bundles"] == 72
    assert metrics["precision"] > 0.5
    assert metrics["valid_bundles"] >= 20
    assert (out / "sub-01" / "figures"
            / "sub-01_space-MNI152NLin6Asym_desc-registration_dwi.png").is_file()
