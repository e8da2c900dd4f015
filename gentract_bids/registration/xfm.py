"""The registration as a file: an ITK text transform that ANTs and nitransforms read.

``..._from-dwi_to-<space>_mode-image_xfm.txt`` holds the affine that maps *template* points to
*subject* points (LPS internally, as ITK stores it; nitransforms converts), which is what
``antsApplyTransforms -i dwi_image -r template -t xfm.txt`` needs to resample a subject image into
the template, the fMRIPrep/QSIPrep convention for ``from-<subject>_to-<template>`` files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

XFM_EXTENSION = ".txt"


def write_xfm(path, matrix) -> Path:
    """Write the 4x4 RAS+ ``matrix`` (template mm -> subject mm) as an ITK affine text file."""
    from nitransforms.linear import Affine

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial.txt")
    Affine(np.asarray(matrix, float)).to_filename(str(tmp), fmt="itk")
    os.replace(tmp, path)
    return path


def read_xfm(path) -> np.ndarray:
    """The 4x4 RAS+ matrix (template mm -> subject mm) of an ITK affine file."""
    from nitransforms.linear import load

    return np.asarray(load(str(path), fmt="itk").matrix, float)


def apply_to_points(matrix, points):
    """``matrix`` (4, 4) applied to points (..., 3) or a list of (n, 3) streamlines."""
    m = np.asarray(matrix, float)
    if isinstance(points, (list, tuple)):
        return [apply_to_points(m, p) for p in points]
    pts = np.asarray(points)
    out = pts.astype(np.float64) @ m[:3, :3].T + m[:3, 3]
    return out.astype(pts.dtype) if np.issubdtype(pts.dtype, np.floating) else out
