"""Shared pieces of atlas-mode bundle recognition: the result object, label categories, conflict
resolution between bundles and the flat point store used by the vectorised recognisers.

Labels: a bundle name when recognised, :data:`UNRECOGNIZED` otherwise, :data:`DEGENERATE` for
streamlines with fewer than two points or non-finite coordinates. Streamlines are lists of (n, 3)
arrays in RAS+ millimetres; voxel space only appears inside functions named ``*_vox*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ...errors import GenTractError, UsageError
from ..metrics import summarise

UNRECOGNIZED = "unrecognized"
DEGENERATE = "degenerate"
MODE = "atlas"


class MissingToolError(UsageError):
    """An optional recognition tool (pyAFQ, scilpy) is not installed / not on PATH."""


class AtlasToolFailed(GenTractError):
    """An external recognition tool ran but failed."""


# ----------------------------------------------------------------------------- results
@dataclass
class AtlasRecognition:
    """Result of one recognition method.

    ``labels``: str array (N,), bundle name / ``"unrecognized"`` / ``"degenerate"``.
    ``flipped``: bool (N,), True where the streamline runs against its bundle's orientation
    (reverse it to orient the bundle consistently; always False where a method has no notion of
    orientation). ``scores``: float (N,), the method's score of the winning bundle (see each
    method; NaN where unrecognised). ``summary``: the shared metrics dict.
    """

    method: str
    labels: np.ndarray
    flipped: np.ndarray
    scores: np.ndarray
    summary: dict

    def bundles(self, streamlines, oriented: bool = True) -> dict[str, list[np.ndarray]]:
        """``{bundle: [streamlines]}`` for every recognised bundle (reversed where ``flipped``
        when ``oriented``)."""
        out: dict[str, list[np.ndarray]] = {}
        for i, lab in enumerate(self.labels):
            if lab in (UNRECOGNIZED, DEGENERATE):
                continue
            s = np.asarray(streamlines[i])
            out.setdefault(str(lab), []).append(s[::-1] if oriented and self.flipped[i] else s)
        return out


def _finish(method: str, labels, bundle_names, flipped, scores, min_streamlines: int,
            parameters: dict) -> AtlasRecognition:
    labels = np.asarray(labels, dtype=object).astype(str)
    summary = summarise(MODE, labels, list(bundle_names), min_streamlines=min_streamlines,
                        extra={"atlas_method": method, "atlas_parameters": parameters})
    return AtlasRecognition(method, labels, np.asarray(flipped, bool),
                            np.asarray(scores, float), summary)


def degenerate_mask(streamlines) -> np.ndarray:
    """True for streamlines with < 2 points or any non-finite coordinate."""
    return np.array([len(s) < 2 or not np.all(np.isfinite(np.asarray(s, float)))
                     for s in streamlines], bool)


def _resolve_conflicts(accepted: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per streamline (column), the accepted bundle (row) with the lowest cost; ties go to the
    first bundle in atlas order; -1 where none accepted."""
    c = np.where(accepted, np.nan_to_num(cost, nan=1e30, posinf=1e30), np.inf)
    best = np.argmin(c, axis=0) if len(c) else np.zeros(accepted.shape[1], int)
    any_acc = accepted.any(axis=0) if len(c) else np.zeros(accepted.shape[1], bool)
    return np.where(any_acc, best, -1)


def _labels_from_winner(winner, names, degenerate) -> np.ndarray:
    labels = np.full(len(winner), UNRECOGNIZED, dtype=object)
    for b, name in enumerate(names):
        labels[winner == b] = name
    labels[degenerate] = DEGENERATE
    return labels


def _winners(accepted, cost, flip_all, names, degenerate):
    """Per streamline: the winning bundle's label, its orientation flag and its score."""
    n = accepted.shape[1]
    winner = _resolve_conflicts(accepted, cost)
    labels = _labels_from_winner(winner, names, degenerate)
    cols = np.arange(n)
    w = np.maximum(winner, 0)
    flipped = np.where(winner >= 0, flip_all[w, cols], False) if n else np.zeros(0, bool)
    scores = np.where(winner >= 0, cost[w, cols], np.nan) if n else np.zeros(0)
    return labels, flipped, scores



class _Flat:
    """All points of a tractogram in one (P, 3) array + offsets, for vectorised queries."""

    def __init__(self, streamlines, valid: np.ndarray):
        self.n = len(streamlines)
        self.lengths = np.array([len(s) if v else 0 for s, v in zip(streamlines, valid)], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        pts = [np.asarray(s, float) for s, v in zip(streamlines, valid) if v]
        self.points = np.concatenate(pts) if pts else np.zeros((0, 3))

    def gather(self, idx: np.ndarray):
        """Points of streamlines ``idx``: (pts, local offsets, lengths)."""
        lens = self.lengths[idx]
        starts = self.offsets[idx]
        local_off = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        rel = np.arange(int(lens.sum())) - np.repeat(local_off, lens)
        return self.points[np.repeat(starts, lens) + rel], local_off, lens

    def first(self, idx):
        return self.points[self.offsets[idx]]

    def last(self, idx):
        return self.points[self.offsets[idx] + self.lengths[idx] - 1]


def _voxel_sizes(affine) -> np.ndarray:
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(0))


def _sample_volume_vox_trilinear(volume: np.ndarray, affine: np.ndarray, pts: np.ndarray):
    """Trilinear value of ``volume`` at world points (0 outside the grid)."""
    ijk = (pts - np.asarray(affine)[:3, 3]) @ np.linalg.inv(np.asarray(affine)[:3, :3]).T
    return ndimage.map_coordinates(np.asarray(volume, float), ijk.T, order=1, mode="constant",
                                   cval=0.0)

