"""scilpy's ``scil_tractogram_segment_with_bundleseg`` run as a subprocess (scilpy lives in its
own environment); its ``results.json`` is read back by :func:`parse_bundleseg_results`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ...errors import BadDataError, NoInputError, UsageError
from .common import (DEGENERATE, UNRECOGNIZED, AtlasRecognition, AtlasToolFailed,
                     MissingToolError, _finish, degenerate_mask)

BUNDLESEG_SCRIPT = "scil_tractogram_segment_with_bundleseg"


def bundleseg_atlas_paths(atlas_dir, config=None) -> tuple[Path, Path]:
    """(models parent folder, config JSON) of a BundleSeg atlas folder.

    Layout (as in scilpy's example atlas): ``DIR/<config>.json`` mapping each model file name to
    its pruning distance (e.g. ``{"AF_L.trk": 10, ...}``) and one or more atlas sub-folders
    ``DIR/<atlas>/AF_L.trk ...`` (each sub-folder is one atlas of the multi-atlas vote). ``config``
    overrides the JSON (needed when DIR holds several)."""
    atlas_dir = Path(atlas_dir)
    if not atlas_dir.is_dir():
        raise NoInputError(f"BundleSeg atlas folder not found: {atlas_dir}")
    if config is None:
        jsons = sorted(atlas_dir.glob("*.json"))
        if len(jsons) != 1:
            raise UsageError(f"BundleSeg atlas {atlas_dir}: expected exactly one config *.json, "
                             f"found {[p.name for p in jsons]}; pass the config explicitly")
        config = jsons[0]
    config = Path(config)
    if not config.is_file():
        raise NoInputError(f"BundleSeg config not found: {config}")
    if not any(p.is_dir() for p in atlas_dir.iterdir()):
        raise NoInputError(f"BundleSeg atlas {atlas_dir}: no atlas sub-folder with model bundles")
    return atlas_dir, config


def bundleseg_bundle_names(config) -> list[str]:
    """Bundle names (model file stems) in the order of the config JSON."""
    try:
        cfg = json.loads(Path(config).read_text())
    except ValueError as exc:
        raise BadDataError(f"BundleSeg config {config}: invalid JSON ({exc})") from exc
    if not isinstance(cfg, dict) or not cfg:
        raise BadDataError(f"BundleSeg config {config}: expected {{model file: distance}}")
    return [os.path.splitext(k)[0] for k in cfg]


def parse_bundleseg_results(results_json, n_streamlines: int, bundle_names=None):
    """Read scilpy's ``results.json`` (scilpy 2.x: ``{bundle: {"indices": [...], "scores":
    [...]}}``, indices into the input tractogram, scores = distance in mm to the nearest model
    streamline) into (labels, scores). scilpy may list a streamline in several bundles; it goes to
    the one with the smallest score (ties: first listed). Unknown bundles are an error when
    ``bundle_names`` is given."""
    path = Path(results_json)
    if not path.is_file():
        raise NoInputError(f"BundleSeg results not found: {path}")
    try:
        res = json.loads(path.read_text())
    except ValueError as exc:
        raise BadDataError(f"BundleSeg results {path}: invalid JSON ({exc})") from exc
    labels = np.full(int(n_streamlines), UNRECOGNIZED, dtype=object)
    best = np.full(int(n_streamlines), np.inf)
    for name, entry in res.items():
        if bundle_names is not None and name not in bundle_names:
            raise BadDataError(f"BundleSeg results {path}: unknown bundle {name}")
        idx = np.asarray(entry.get("indices", []), np.int64).reshape(-1)
        sc = entry.get("scores")
        sc = np.zeros(len(idx)) if sc is None or len(sc) != len(idx) else np.asarray(sc, float)
        if len(idx) and (idx.min() < 0 or idx.max() >= n_streamlines):
            raise BadDataError(f"BundleSeg results {path}: bundle {name} has indices outside "
                               f"0..{n_streamlines - 1}")
        better = sc < best[idx]
        labels[idx[better]] = name
        best[idx[better]] = sc[better]
    return labels.astype(str), np.where(np.isfinite(best), best, np.nan)


def find_bundleseg_script(script: str = BUNDLESEG_SCRIPT) -> str:
    """Full path of scilpy's BundleSeg script, or :class:`MissingToolError`."""
    found = shutil.which(script)
    if found is None:
        raise MissingToolError(
            f"BundleSeg needs scilpy's '{script}' on PATH (scilpy pins numpy 1.x: install it in "
            "its own environment, e.g. python3 -m venv ~/scilpy && ~/scilpy/bin/pip install "
            "scilpy, and add ~/scilpy/bin to PATH)")
    return found


def recognize_bundleseg(streamlines, atlas_dir, *, affine, shape, config=None, transform=None,
                        inverse: bool = False, script: str = BUNDLESEG_SCRIPT, processes: int = 1,
                        seed: int = 0, minimal_vote_ratio: float = 0.5, work_dir=None,
                        timeout_s: float | None = None,
                        min_streamlines: int = 1) -> AtlasRecognition:
    """Run scilpy's BundleSeg on ``streamlines`` and read its ``results.json`` back.

    The tractogram is written as ``.trk`` (reference grid ``affine``/``shape``) and the script is
    called as ``script TRK CONFIG ATLAS_DIR TRANSFO --out_dir OUT --seed S --processes P
    --minimal_vote_ratio R [--inverse]``. ``transform``: 4x4 matrix file (.txt/.npy/.mat) to the
    atlas space; None writes an identity (atlas already in subject space). scilpy always writes
    ``results.json`` with per-bundle indices (no extra option needed in scilpy 2.x).
    ``scores`` = BundleSeg's distance to the nearest model streamline (mm)."""
    exe = find_bundleseg_script(script)
    models_dir, cfg = bundleseg_atlas_paths(atlas_dir, config)
    names = bundleseg_bundle_names(cfg)
    from ...io.tractogram import save_tractogram

    n = len(streamlines)
    degenerate = degenerate_mask(streamlines)
    valid_idx = np.nonzero(~degenerate)[0]
    labels = np.full(n, UNRECOGNIZED, dtype=object)
    scores = np.full(n, np.nan)
    tmp = tempfile.TemporaryDirectory(prefix="bundleseg_") if work_dir is None else None
    work = Path(tmp.name if tmp else work_dir)
    try:
        work.mkdir(parents=True, exist_ok=True)
        if len(valid_idx):
            trk = save_tractogram(work / "tractogram.trk", [streamlines[i] for i in valid_idx],
                                  affine, shape)
            transfo = transform
            if transfo is None:
                transfo = work / "identity.txt"
                np.savetxt(transfo, np.eye(4))
            out = work / "bundleseg"
            if out.exists():
                shutil.rmtree(out)
            cmd = [exe, str(trk), str(cfg), str(models_dir), str(transfo), "--out_dir",
                   str(out), "--seed", str(int(seed)), "--processes", str(int(processes)),
                   "--minimal_vote_ratio", str(float(minimal_vote_ratio))]
            if inverse:
                cmd.append("--inverse")
            env = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                  timeout=timeout_s, check=False)
            if proc.returncode != 0 or not (out / "results.json").is_file():
                tail = (proc.stderr or proc.stdout or "")[-2000:]
                raise AtlasToolFailed(f"BundleSeg failed (exit {proc.returncode}): "
                                      f"{' '.join(cmd)}\n{tail}")
            lab, sc = parse_bundleseg_results(out / "results.json", len(valid_idx), names)
            labels[valid_idx] = lab
            scores[valid_idx] = sc
    finally:
        if tmp is not None:
            tmp.cleanup()
    labels[degenerate] = DEGENERATE
    params = {"atlas_dir": str(atlas_dir), "config": str(cfg), "seed": int(seed),
              "minimal_vote_ratio": float(minimal_vote_ratio),
              "transform": "identity" if transform is None else str(transform),
              "min_streamlines": int(min_streamlines)}
    return _finish("bundleseg", labels, names, np.zeros(n, bool), scores, min_streamlines, params)
