"""Procedural brain-like template: ellipsoidal brain, cortex shell, CSF, ventricles, named bundles.

World space is RAS+ mm with the brain centred at the origin; the mid-sagittal plane is x = 0 and
every left bundle ``*_L`` is the mirror image (x -> -x) of its right twin ``*_R``.

Designed configurations (right hemisphere; mirrored on the left):
- three-way crossing (centrum semiovale) near (26, -5, 30): CC_Body (x) x CST (z) x SLF (y), ~90 deg
- two-way crossings: AC (x) x CST (z) near (19, -9, -12); AC x IFOF (y) near (31, -9, -10)
- kissing: ILF touches IFOF near (36, -30, -5) and they diverge again
- fanning: CST radius grows from 3.5 mm at the brainstem to 8.5 mm under the cortex; CC_Body fans
  toward the cortex
Bundle ends lie in the cortex shell (projection fibres: inferior end at the bottom of the brain).
"""

from __future__ import annotations

import numpy as np

from .geometry import Bundle, Geometry

BRAIN_AXES = np.array([65.0, 80.0, 60.0])  # semi-axes (x, y, z) mm
CORTEX_MM = 3.5  # grey-matter shell thickness
HEAD_MARGIN_MM = 4.0  # CSF layer between brain and head boundary
# ventricle-like ellipsoids: (centre, semi-axes)
VENTRICLES = [
    (np.array([-9.0, 2.0, 10.0]), np.array([5.0, 20.0, 7.0])),
    (np.array([9.0, 2.0, 10.0]), np.array([5.0, 20.0, 7.0])),
]
END_RHO = 0.975  # normalised ellipsoid radius of bundle ends (mid-cortex)


def _rho(p, axes=BRAIN_AXES, center=(0.0, 0.0, 0.0)):
    return np.sqrt((((np.asarray(p, float) - center) / axes) ** 2).sum(-1))


def cortex_point(p, rho: float = END_RHO) -> np.ndarray:
    """Move ``p`` radially (from the origin) onto the ellipsoid level ``rho`` (mid-cortex)."""
    p = np.asarray(p, float)
    return p * (rho / _rho(p))


def _u_fibre(centre, along, depth=0.80, span=26.0) -> np.ndarray:
    """Control points of a short U-fibre under the cortex around ``centre``, spanning ``along``."""
    c = np.asarray(centre, float)
    along = np.asarray(along, float) / np.linalg.norm(along)
    a = cortex_point(c + along * span / 2)
    b = cortex_point(c - along * span / 2)
    mid = cortex_point(c, depth)
    qa = cortex_point(c + along * span / 3, (depth + END_RHO) / 2)
    qb = cortex_point(c - along * span / 3, (depth + END_RHO) / 2)
    return np.array([a, qa, mid, qb, b])


def _right_bundles() -> list[Bundle]:
    cp = cortex_point
    return [
        Bundle("CST_R", [[10, -18, -60], [20, -10, -15], [26, -5, 30], cp([29, -6, 52])],
               radius=5.5, radii=[3.5, 5.0, 6.5, 8.5]),
        Bundle("SLF_R", [cp([28, 50, 30]), [27, 15, 32], [26, -5, 30], [27, -30, 32],
                         cp([28, -55, 30])], radius=5.0),
        Bundle("AF_R", [cp([52, 34, 14]), [40, 20, 16], [38, -5, 22], [42, -32, 20], [49, -45, 0],
                        cp([55, -22, -24])], radius=4.0),
        Bundle("IFOF_R", [cp([30, 62, -2]), [30, 30, -8], [31, 0, -9], [33, -30, -3],
                          cp([30, -65, 2])], radius=4.0),
        Bundle("ILF_R", [cp([45, 25, -35]), [44, 0, -24], [36, -30, -7], [36, -50, -12],
                         cp([34, -62, -22])], radius=4.0),
        Bundle("UF_R", [cp([22, 55, -20]), [28, 32, -18], [35, 16, -20], [41, 20, -30],
                        cp([42, 40, -35])], radius=3.5),
        Bundle("CING_R", [cp([8, 74, -5]), [7, 40, 24], [7, 5, 37], [7, -30, 35], [8, -52, 15],
                          cp([10, -70, -10])], radius=3.5),
        Bundle("U_Frontal_R", _u_fibre([42, 25, 35], [0, 1, 0]), radius=3.5),
        Bundle("U_Parietal_R", _u_fibre([40, -40, 32], [0, 1, 0.3]), radius=3.5),
    ]


def _mirror(b: Bundle) -> Bundle:
    cp = b.control_points * np.array([-1.0, 1.0, 1.0])
    return Bundle(b.name[:-2] + "_L", cp, b.radius,
                  None if b.radii is None else b.radii.copy(), b.tangents)


def template_geometry() -> Geometry:
    """The template's named bundles (22): commissural, projection, association, cingulum, U."""
    cp = cortex_point
    commissural = [
        Bundle("CC_Genu", [cp([-38, 58, 11]), [-16, 38, 10], [0, 31, 10], [16, 38, 10],
                           cp([38, 58, 11])], radius=5.0),
        Bundle("CC_Body", [cp([-50, -5, 38]), [-26, -5, 30], [0, -5, 28], [26, -5, 30],
                           cp([50, -5, 38])], radius=5.5, radii=[8.5, 5.5, 5.5, 5.5, 8.5]),
        Bundle("CC_Splenium", [cp([-30, -64, 10]), [-15, -45, 13], [0, -38, 13], [15, -45, 13],
                               cp([30, -64, 10])], radius=5.0),
        Bundle("AC", [cp([-50, -12, -32]), [-30, -9, -12], [0, -9, -8], [30, -9, -12],
                      cp([50, -12, -32])], radius=3.0),
    ]
    right = _right_bundles()
    left = [_mirror(b) for b in right]
    bundles = commissural + [b for pair in zip(left, right) for b in pair]
    return Geometry(bundles, [])


# ----------------------------------------------------------------------------- tissue functions
def tissue_labels(x: np.ndarray) -> np.ndarray:
    """Template tissue of points ``x`` (..., 3) mm: 0 background, 1 GM (cortex or deep grey),
    2 CSF (outside the brain inside the head, or ventricles). Fibre tubes are added separately."""
    rho = _rho(x)
    lab = np.zeros(rho.shape, np.uint8)
    lab[_rho(x, BRAIN_AXES + HEAD_MARGIN_MM) <= 1] = 2
    lab[rho <= 1] = 1
    for c, ax in VENTRICLES:
        lab[_rho(x, ax, c) <= 1] = 2
    return lab


def near_tissue_boundary(x: np.ndarray, tol_mm: float) -> np.ndarray:
    """True where a point within ``tol_mm`` of ``x`` may have another tissue label than ``x``
    (rho changes by at most |d| / min(axes) for a displacement d)."""
    ells = [(np.zeros(3), BRAIN_AXES), (np.zeros(3), BRAIN_AXES + HEAD_MARGIN_MM)] + VENTRICLES
    near = np.zeros(x.shape[:-1], bool)
    for c, ax in ells:
        near |= np.abs(_rho(x, ax, c) - 1.0) <= tol_mm / ax.min()
    return near


def cortex_mask(x: np.ndarray) -> np.ndarray:
    """True where ``x`` is in the cortex shell of the template."""
    return (_rho(x) <= 1) & (_rho(x, BRAIN_AXES - CORTEX_MM) > 1)


def brain_surface_points(n: int = 2000) -> np.ndarray:
    """Points on the template brain surface (for extent checks)."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5 ** 0.5) * i
    d = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)
    return d * BRAIN_AXES
