"""The connectivity prior of a model: which endpoint pairs its training streamlines join.

*Ours* (not in the GenTract paper; issue 15). The model's space is shared by every subject, so
the training cohort's reference streamlines, mapped into it, say which pairs of places the white
matter connects. Both ends of every training streamline are binned into ``cell_mm`` cubes of the
model's coordinates; the prior is the set of unordered cell pairs seen (at least ``min_count``
times). A sampled streamline passes when its two end cells, or cells within ``reach`` cells of
them (a cube of (2 ``reach`` + 1)^3 cells about each end), form a seen pair. It rejects the
streamlines that join two places no training streamline joins (the phantom scorer's invalid
connections), after the fODF support filter and before the density acceptance
(:func:`gentract_bids.model.inference.sample_tractogram`); and as a factor of the sequential Monte
Carlo weight. It is learned from the training cohort only and stored beside the checkpoint
(``<stem>_connectivity.npz``, checksum in the checkpoint's ``connectivity`` entry).

On phantoms made from one atlas (every human-anatomy phantom shares the TractSeg anatomy) the
training cohort's connections are the held-out subjects' connections too: the prior transfers
trivially there, and it says nothing about how it would transfer between real brains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_CELL_MM = 8.0
DEFAULT_REACH = 0
_OFFSET, _BASE = 1 << 9, 1 << 10  # cell index -> [0, 1024) per axis: +-4 m at 8 mm
_PAIR = np.int64(1) << 30


def _cell_ids(points: np.ndarray, cell_mm: float) -> np.ndarray:
    ijk = np.floor(np.asarray(points, np.float64) / cell_mm).astype(np.int64) + _OFFSET
    ijk = np.clip(ijk, 0, _BASE - 1)
    return (ijk[..., 0] * _BASE + ijk[..., 1]) * _BASE + ijk[..., 2]


def _pair_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.minimum(a, b) * _PAIR + np.maximum(a, b)


def _neighbour_offsets(reach: int) -> np.ndarray:
    r = np.arange(-reach, reach + 1)
    d = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    return (d[:, 0] * _BASE + d[:, 1]) * _BASE + d[:, 2]


class ConnectivityPrior:
    """The endpoint-pair set of a training cohort (see the module)."""

    def __init__(self, keys: np.ndarray, cell_mm: float = DEFAULT_CELL_MM,
                 reach: int = DEFAULT_REACH, n_streamlines: int = 0):
        if not cell_mm > 0 or reach < 0:
            raise ValueError("connectivity prior: the cell size must be positive, reach >= 0")
        self.keys = np.unique(np.asarray(keys, np.int64))
        self.cell_mm, self.reach = float(cell_mm), int(reach)
        self.n_streamlines = int(n_streamlines)
        self._offsets = _neighbour_offsets(self.reach)

    @classmethod
    def from_streamlines(cls, streamlines, cell_mm: float = DEFAULT_CELL_MM,
                         reach: int = DEFAULT_REACH, min_count: int = 1) -> "ConnectivityPrior":
        """From training streamlines in model coordinates: one (n, p, 3) array or a list of
        them (one per subject), or any sequence of (k, 3) polylines."""
        ends = []
        for group in ([streamlines] if isinstance(streamlines, np.ndarray) else streamlines):
            if isinstance(group, np.ndarray) and group.ndim == 3:
                ends.append(np.stack([group[:, 0], group[:, -1]], 1))
            else:  # one polyline
                g = np.asarray(group)
                ends.append(np.stack([g[0], g[-1]])[None])
        ends = np.concatenate(ends) if ends else np.empty((0, 2, 3))
        if not len(ends):
            raise ValueError("connectivity prior: no training streamline")
        ids = _cell_ids(ends, cell_mm)
        keys, counts = np.unique(_pair_keys(ids[:, 0], ids[:, 1]), return_counts=True)
        return cls(keys[counts >= min_count], cell_mm, reach, len(ends))

    def allowed(self, streamlines: np.ndarray) -> np.ndarray:
        """Boolean (n,): the streamlines (n, p, 3), model coordinates, whose end cells (within
        ``reach``) form a pair of the training set."""
        streamlines = np.asarray(streamlines)
        if not len(streamlines):
            return np.zeros(0, bool)
        a = _cell_ids(streamlines[:, 0], self.cell_mm)
        b = _cell_ids(streamlines[:, -1], self.cell_mm)
        ok = np.zeros(len(a), bool)
        for da in self._offsets:  # (2 reach + 1)^3 shifts of one end, all of the other at once
            keys = _pair_keys((a + da)[:, None], b[:, None] + self._offsets[None])
            pos = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
            ok |= (self.keys[pos] == keys).any(1)
        return ok

    def as_dict(self) -> dict:
        return {"CellMillimetres": self.cell_mm, "Reach": self.reach, "Pairs": int(len(self.keys)),
                "TrainingStreamlines": self.n_streamlines}

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            np.savez_compressed(fh, keys=self.keys, cell_mm=self.cell_mm, reach=self.reach,
                                n_streamlines=self.n_streamlines)
        return path

    @classmethod
    def load(cls, path) -> "ConnectivityPrior":
        with np.load(path) as z:
            return cls(z["keys"], float(z["cell_mm"]), int(z["reach"]), int(z["n_streamlines"]))


CONNECTIVITY_SUFFIX = "_connectivity.npz"


def connectivity_path(checkpoint_path) -> Path:
    """``<stem>_connectivity.npz`` beside a checkpoint (either file or their stem)."""
    from ..io.checkpoint import checkpoint_paths

    weights, _ = checkpoint_paths(checkpoint_path)
    return weights.with_name(weights.name[: -len(".safetensors")] + CONNECTIVITY_SUFFIX)


def attach_connectivity(checkpoint_path, prior: ConnectivityPrior, source: str) -> dict:
    """Write ``prior`` beside the checkpoint and record it (file, checksum, settings, where it
    was learned) in the checkpoint's metadata, sealed again; returns the new metadata."""
    import json

    from ..io.checkpoint import checkpoint_paths, file_sha256, read_checkpoint_metadata, seal_metadata

    path = prior.save(connectivity_path(checkpoint_path))
    meta = read_checkpoint_metadata(checkpoint_path)
    meta["connectivity"] = {"file": path.name, "sha256": file_sha256(path),
                            "learned_from": source, **prior.as_dict()}
    meta = seal_metadata(meta)
    checkpoint_paths(checkpoint_path)[1].write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def load_connectivity(checkpoint_path, meta: dict) -> ConnectivityPrior | None:
    """The prior a checkpoint carries (checksum verified), or None for one without."""
    from ..io.checkpoint import CheckpointError, file_sha256

    entry = meta.get("connectivity")
    if not entry:
        return None
    path = connectivity_path(checkpoint_path).with_name(entry["file"])
    if not path.is_file() or file_sha256(path) != entry.get("sha256"):
        raise CheckpointError(f"the model's connectivity prior {path} is missing or fails its "
                              "checksum")
    return ConnectivityPrior.load(path)
