"""Model checkpoints: weights in ``<stem>.safetensors``, everything else in ``<stem>.json``.

The JSON records the full model configuration, what the model expects of its input (SH order and
basis, canonical grid, z-scoring statistics, coordinate bounds, points per streamline), the caller's
provenance and the SHA-256 of the weights file, and ``metadata_sha256``, the SHA-256 of the JSON
itself (every other key, serialised canonically), so that an edited statistic or bound is caught
as surely as edited weights. Loading recomputes both checksums and never unpickles:
weights are read with ``safetensors`` only. Every failure is a one-line :class:`CheckpointError`
naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..fodf.csd import SH_BASIS

FORMAT = "gentract-checkpoint-v1"
SUFFIXES = (".safetensors", ".json")
COMPUTED = ("format", "weights", "model_config", "sh_order", "sh_basis", "legacy_basis",
            "grid_spacing", "grid_shape", "n_points", "sha256", "metadata_sha256")


def metadata_checksum(meta: dict) -> str:
    """SHA-256 of a checkpoint's metadata without its ``metadata_sha256`` key (sorted keys,
    compact separators: independent of the file's indentation)."""
    body = {k: v for k, v in meta.items() if k != "metadata_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def seal_metadata(meta: dict) -> dict:
    """``meta`` with its ``metadata_sha256`` (over the JSON-able form) filled in."""
    meta = _jsonable(meta)
    meta["metadata_sha256"] = metadata_checksum(meta)
    return meta


def checkpoint_paths(path) -> tuple[Path, Path]:
    """(weights, metadata) paths of a checkpoint given either file or their common stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in SUFFIXES else path
    return stem.parent / f"{stem.name}.safetensors", stem.parent / f"{stem.name}.json"


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _tensors_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the state dict; tensors sharing storage are cloned apart."""
    out, seen = {}, set()
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def save_checkpoint(path, model, metadata: dict) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json``; returns the weights path.

    ``metadata`` supplies ``zscore`` {mean, std}, ``coord_bounds`` {lo, hi}, ``provenance`` and any
    further JSON-able keys; the model-derived keys (config, grid, SH basis, checksum) are computed
    here. Both files are written through a temporary name and an atomic rename, JSON last."""
    weights, meta_path = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    tmp = weights.with_name(weights.name + ".partial")
    save_file(_tensors_for_saving(model), str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, weights)
    extra = {k: v for k, v in dict(metadata).items() if k not in COMPUTED}
    meta = {
        "format": FORMAT,
        "weights": weights.name,
        "model_config": cfg.to_dict(),
        "sh_order": cfg.sh_order,
        "sh_basis": SH_BASIS,
        "legacy_basis": False,
        "grid_spacing": cfg.grid_spacing,
        "grid_shape": list(cfg.grid_shape),
        "zscore": extra.pop("zscore", None),
        "coord_bounds": extra.pop("coord_bounds", None),
        "n_points": cfg.n_points,
        "provenance": extra.pop("provenance", {}),
        **extra,
        "sha256": file_sha256(weights),
    }
    jtmp = meta_path.with_name(meta_path.name + ".partial")
    jtmp.write_text(json.dumps(seal_metadata(meta), indent=1))
    os.replace(jtmp, meta_path)
    return weights


def read_checkpoint_metadata(path) -> dict:
    """The JSON metadata of a checkpoint (validated), without touching the weights."""
    _, meta_path = checkpoint_paths(path)
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint metadata not found: {meta_path}")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint metadata {meta_path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint metadata {meta_path} is not a JSON object")
    if not str(meta.get("format", "")).startswith("gentract-checkpoint"):
        raise CheckpointError(f"{meta_path} is not a GenTract checkpoint (format: {meta.get('format')!r})")
    missing = [k for k in ("model_config", "sha256") if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint metadata {meta_path} lacks {', '.join(missing)}")
    if "metadata_sha256" in meta and meta["metadata_sha256"] != metadata_checksum(meta):
        raise CheckpointError(f"checkpoint metadata {meta_path} fails its checksum: the JSON was "
                              "modified after the checkpoint was written")
    return meta


def load_checkpoint(path, device="cpu", expected_sha256: str | None = None):
    """Load ``(GenTract, metadata)`` from either checkpoint file or their stem.

    Verifies the weights' SHA-256 against the JSON (and ``expected_sha256`` when given), reads them
    with safetensors only (no pickle) and loads them strictly into a model built from the JSON's
    ``model_config``. The model is returned in eval mode on ``device``."""
    from ..model.gentract import GenTract, GenTractConfig

    weights, meta_path = checkpoint_paths(path)
    meta = read_checkpoint_metadata(meta_path)
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights not found: {weights}")
    digest = file_sha256(weights)
    if digest != meta["sha256"]:
        raise CheckpointError(f"checkpoint weights {weights} fail their checksum (sha256 {digest[:12]}… "
                              f"but {meta_path.name} records {str(meta['sha256'])[:12]}…): "
                              "the file is corrupt or was modified")
    if expected_sha256 and digest != expected_sha256.lower():
        raise CheckpointError(f"checkpoint weights {weights} have sha256 {digest[:12]}…, "
                              f"not the expected {expected_sha256[:12]}…")
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as err:  # safetensors refuses anything that is not its own format
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint weights {weights} are not a valid safetensors file: {msg}") from None
    try:
        cfg = GenTractConfig.from_dict(meta["model_config"])
        model = GenTract(cfg)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint {meta_path} has an invalid model_config: {err}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise CheckpointError(f"checkpoint weights {weights} do not match its model_config: "
                              + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    if meta.get("coord_bounds"):
        model.set_coordinate_bounds(meta["coord_bounds"]["lo"], meta["coord_bounds"]["hi"])
    model.to(device).eval()
    return model, meta
