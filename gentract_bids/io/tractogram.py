"""Tractogram files: .trx (trx-python, with groups), .tck and .trk (nibabel). RAS+ mm everywhere."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np


def _reference_header(affine, shape) -> nib.Nifti1Header:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(tuple(int(s) for s in shape[:3]))
    hdr.set_zooms(tuple(float(z) for z in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))))
    hdr.set_sform(np.asarray(affine, float), code=1)
    hdr.set_qform(np.asarray(affine, float), code=1)
    return hdr


# the shortest segment the resampling leaves: trx-python's trx_validate (and dipy's checks)
# drop a streamline with a segment under 0.001 mm as "overlapping points"
MIN_SEGMENT_MM = 0.002


def resample_streamlines(streamlines, step: float, oversample: int = 20) -> list[np.ndarray]:
    """Resample each streamline (RAS+ mm) to points ``step`` mm apart along a smooth curve.

    The points are joined by a cubic spline (through every point, parameterised by the point
    index), which is evaluated ``oversample`` times per segment; the dense curve is then cut at
    equal arc lengths, the last point kept; where it would lie closer than
    :data:`MIN_SEGMENT_MM` to the regular point before it, that point moves to the end instead
    (the last segment is then up to ``step + MIN_SEGMENT_MM`` long). Deterministic: plain
    arithmetic, no randomness."""
    from scipy.interpolate import CubicSpline

    out = []
    for s in streamlines:
        s = np.asarray(s, np.float64)
        if len(s) < 2:
            continue
        t = np.arange(len(s), dtype=np.float64)
        spline = CubicSpline(t, s, axis=0) if len(s) >= 4 else None
        dense_t = np.linspace(0, len(s) - 1, (len(s) - 1) * oversample + 1)
        dense = spline(dense_t) if spline else np.stack(
            [np.interp(dense_t, t, s[:, k]) for k in range(3)], 1)
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
        n = max(int(np.floor(arc[-1] / step)), 1)
        at = np.arange(n + 1) * step
        if arc[-1] - n * step >= MIN_SEGMENT_MM:
            at = np.append(at, arc[-1])
        else:  # a tiny last segment: the last regular point moves to the end instead
            at[-1] = arc[-1]
        out.append(np.stack([np.interp(at, arc, dense[:, k]) for k in range(3)], 1))
    return [o.astype(np.float32) for o in out]


def clip_to_mask(streamlines, mask, affine) -> list[np.ndarray]:
    """Trim both ends of each streamline (RAS+ mm) back to its first/last point whose nearest
    voxel is inside ``mask`` (on the grid of ``affine``); streamlines with fewer than 2 points
    left are dropped. Every endpoint of the result lies in the mask."""
    mask = np.asarray(mask) > 0
    inv = np.linalg.inv(np.asarray(affine, float))
    out = []
    for s in streamlines:
        s = np.asarray(s)
        ijk = np.rint(s @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        ok = np.all((ijk >= 0) & (ijk < mask.shape[:3]), axis=1)
        inside = np.zeros(len(s), bool)
        inside[ok] = mask[tuple(ijk[ok].T)]
        idx = np.flatnonzero(inside)
        if len(idx) >= 2 and idx[-1] > idx[0]:
            out.append(s[idx[0]:idx[-1] + 1])
    return out


def _fix_zip_times(path: Path) -> None:
    """Date every entry of the TRX zip 1980-01-01 (trx-python stamps the time of writing), so
    the same streamlines give the same bytes (a rerun, a resumed run)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
            for info in src.infolist():
                fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
                fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
                big = info.file_size >= 1 << 31
                with src.open(info) as fin, dst.open(fixed, "w", force_zip64=big) as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_tractogram(path, streamlines, affine, shape, groups: dict | None = None,
                    step_size: float | None = None) -> Path:
    """Write ``streamlines`` (list of (n, 3) arrays, RAS+ mm) to .trx/.tck/.trk.

    ``affine``/``shape`` describe the reference image (voxel-to-RAS+ mm). ``groups`` maps a name to
    an index array of streamlines; it is stored as TRX groups (ignored by .tck/.trk).
    ``step_size`` (mm) is recorded in the header: ``step_size`` in .tck (as MRtrix3 writes it),
    ``STEP_SIZE`` in the TRX header.json.

    For .tck/.trk, ``streamlines`` may also be a function returning an iterator: the file is then
    written streaming (nibabel's lazy tractogram), without holding all streamlines in memory."""
    path = Path(path)
    ext = "".join(path.suffixes[-1:]).lower()
    if callable(streamlines):
        if ext == ".trx":
            raise ValueError("streaming writes are for .tck/.trk; write .trx from its layout")
        tractogram = nib.streamlines.LazyTractogram(
            lambda: (np.asarray(s, np.float32) for s in streamlines()), affine_to_rasmm=np.eye(4))
    else:
        sl = nib.streamlines.ArraySequence([np.asarray(s, np.float32) for s in streamlines])
        tractogram = nib.streamlines.Tractogram(sl, affine_to_rasmm=np.eye(4))
    if ext == ".trx":
        from trx import trx_file_memmap as tmm

        trx = tmm.TrxFile.from_tractogram(tractogram, reference=_reference_header(affine, shape))
        for name, idx in (groups or {}).items():
            trx.groups[name] = np.asarray(idx, dtype=np.uint32)
        if step_size is not None:
            trx.header["STEP_SIZE"] = float(step_size)
        tmm.save(trx, str(path))
        trx.close()
        _fix_zip_times(path)
    elif ext == ".tck":
        hdr = {} if step_size is None else {"step_size": f"{float(step_size):g}"}
        nib.streamlines.save(nib.streamlines.TckFile(tractogram, header=hdr), str(path))
    elif ext == ".trk":
        hdr = {
            nib.streamlines.Field.VOXEL_TO_RASMM: np.asarray(affine, float),
            nib.streamlines.Field.DIMENSIONS: np.asarray(shape[:3], np.int16),
            nib.streamlines.Field.VOXEL_SIZES: np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)),
            nib.streamlines.Field.VOXEL_ORDER: "".join(nib.aff2axcodes(affine)),
        }
        nib.streamlines.save(nib.streamlines.TrkFile(tractogram, header=hdr), str(path))
    else:
        raise ValueError(f"unsupported tractogram extension: {path.name}")
    return path


def load_tractogram(path):
    """Read a .trx/.tck/.trk file: (list of (n, 3) float arrays in RAS+ mm, {group: indices}).

    Groups come ordered by their first streamline (for .tck/.trk the dict is empty)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".trx":
        from trx import trx_file_memmap as tmm

        # trx-python (0.6) memory-maps a loaded file read-write ("r+"), which fails on a
        # read-only dataset (a :ro bind mount, DataLad); it has no read-only mode, so it maps a
        # private copy and the input is only ever opened for reading
        with tempfile.TemporaryDirectory(prefix="gentract-trx-") as tmp:
            copy = Path(tmp) / path.name
            if path.is_dir():  # copies of the files only, not their (read-only) modes
                shutil.copytree(path, copy, copy_function=shutil.copyfile)
            else:
                shutil.copyfile(path, copy)
            trx = tmm.load(str(copy))
            try:
                streamlines = [np.array(s, dtype=np.float32) for s in trx.streamlines]
                groups = {k: np.array(v, dtype=np.int64) for k, v in trx.groups.items()}
            finally:
                trx.close()
        # file order of groups is arbitrary: order them by their first streamline
        groups = dict(sorted(groups.items(), key=lambda kv: (kv[1].min(initial=2**62), kv[0])))
        return streamlines, groups
    if ext in (".tck", ".trk"):
        tfile = nib.streamlines.load(str(path))
        return [np.array(s, dtype=np.float32) for s in tfile.streamlines], {}
    raise ValueError(f"unsupported tractogram extension: {path.name}")
