"""Small helpers shared by the tests."""

import numpy as np


def angle_deg(u, v):
    """Angle between axes (sign-free), degrees; 90 where either vector is zero."""
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.abs(np.sum(u * v, -1)) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    return np.degrees(np.arccos(np.clip(np.nan_to_num(c), 0, 1)))
