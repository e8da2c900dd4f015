"""Tractogram files: .trx (trx-python, with groups), .tck and .trk (nibabel). RAS+ mm everywhere."""

from __future__ import annotations

import shutil
import tempfile
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


def save_tractogram(path, streamlines, affine, shape, groups: dict | None = None) -> Path:
    """Write ``streamlines`` (list of (n, 3) arrays, RAS+ mm) to .trx/.tck/.trk.

    ``affine``/``shape`` describe the reference image (voxel-to-RAS+ mm). ``groups`` maps a name to
    an index array of streamlines; it is stored as TRX groups (ignored by .tck/.trk).

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
        tmm.save(trx, str(path))
        trx.close()
    elif ext == ".tck":
        nib.streamlines.save(tractogram, str(path))
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
