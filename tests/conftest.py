"""Shared fixtures: small BIDS datasets made from real reference data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")
os.environ.setdefault("TEMPLATEFLOW_AUTOUPDATE", "0")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
EXTERNAL = SHARED / "data" / "external"
FIBERCUP = EXTERNAL / "fibercup"


def write_fibercup_bids(root: Path, subjects=("01",), b=1500) -> Path:
    """A BIDS dataset of FiberCup acquisitions (real scanner data, 3 mm, 3 slices).

    ``grad64.txt`` holds directions in the image's voxel axes; the image is stored with a positive
    affine determinant, so the BIDS/FSL ``.bvec`` gets its first component negated.
    """
    if not FIBERCUP.is_dir():
        pytest.skip(f"reference data not found: {FIBERCUP}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "FiberCup", "BIDSVersion": "1.9.0", "DatasetType": "raw",
                    "Authors": ["Poupon C.", "Fillard P."]}, indent=2)
    )
    (root / "README").write_text("FiberCup physical phantom (Poupon 2008; Fillard 2011).\n")
    grad = np.loadtxt(FIBERCUP / "grad64.txt")
    bvals = np.where(np.linalg.norm(grad, axis=1) > 0, b, 0)
    bvecs = grad.T.copy()
    bvecs[0] *= -1
    for sub in subjects:
        d = root / f"sub-{sub}" / "dwi"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIBERCUP / f"acq-averaged_b-{b}.nii.gz", d / f"sub-{sub}_dwi.nii.gz")
        np.savetxt(d / f"sub-{sub}_dwi.bval", bvals[None], fmt="%d")
        np.savetxt(d / f"sub-{sub}_dwi.bvec", bvecs, fmt="%.6f")
        (d / f"sub-{sub}_dwi.json").write_text(json.dumps({"PhaseEncodingDirection": "j"}))
    (root / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{s}\n" for s in subjects)
    )
    return root


@pytest.fixture
def fibercup_bids(tmp_path) -> Path:
    return write_fibercup_bids(tmp_path / "bids", subjects=("01", "02"))
