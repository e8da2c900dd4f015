"""Shared evaluation tables: one label per streamline, one metrics structure for every mode.

Label convention (``labels``: numpy array of str, one per streamline):

* a bundle name: the streamline is valid (ground truth) / recognised (atlas modes);
* otherwise a category: ``"IC"`` (invalid connection), ``"NC"`` (no connection),
  ``"degenerate"``, ``"unrecognized"`` (atlas modes).

:func:`summarise` turns labels (plus optional per-bundle voxel scores) into a JSON-able dict;
:func:`write_bundlestats_tsv` and :func:`write_metrics_json` write it to disk.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

CATEGORIES = ("IC", "NC", "degenerate", "unrecognized")
"""Non-bundle labels."""

BUNDLE_COLUMNS = ("bundle", "n_streamlines", "found", "overlap", "overreach", "f1")
"""Fixed leading columns of the bundle-stats table (extra per-bundle keys follow)."""


def _jsonable(value):
    """Convert numpy scalars/arrays (recursively) into plain Python; NaN/inf become None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def summarise(
    mode: str,
    labels,
    bundle_names,
    *,
    min_streamlines: int = 1,
    bundle_scores: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """Summarise per-streamline ``labels`` into the shared metrics dict.

    Parameters
    ----------
    mode : evaluation mode ("groundtruth", "atlas", ...), copied into the result.
    labels : array-like of str, length N (bundle name or a category, see module docstring).
    bundle_names : the bundles to report, in order (one row each).
    min_streamlines : a bundle is *found* (counts in ``valid_bundles``) with at least this many
        streamlines labelled with its name.
    bundle_scores : optional ``{bundle: {"overlap": .., "overreach": .., "f1": .., **more}}``
        (voxel-mask scores). Extra keys of a bundle's dict become extra columns of its row.
    extra : more top-level keys merged into the result (e.g. IC/NC/IB counts); they win on clash.

    Returns
    -------
    dict with keys ``mode, n_streamlines, precision, valid_bundles, n_bundles, mean_overlap,
    mean_overreach, mean_f1, counts, bundles``.

    ``precision`` = streamlines labelled with one of ``bundle_names`` / N (0 when N = 0).
    ``mean_overlap`` / ``mean_f1`` average over ALL ``bundle_names``; a bundle missing from
    ``bundle_scores`` (or with a None value) counts as 0. ``mean_overreach`` averages over ALL
    bundles as well, counting a missing bundle as 0 overreach (it has no streamlines, so nothing
    reaches out). All three are None when ``bundle_scores`` is None. ``counts`` holds the number of
    streamlines per category (all of :data:`CATEGORIES`, plus any other non-bundle label seen) and
    ``"valid"`` (sum over bundles).
    """
    labels = np.asarray(labels, dtype=str).reshape(-1)
    names = [str(b) for b in bundle_names]
    n = int(labels.size)
    uniq, cnt = np.unique(labels, return_counts=True)
    per_label = dict(zip(uniq.tolist(), cnt.tolist()))
    name_set = set(names)

    rows = []
    for b in names:
        k = int(per_label.get(b, 0))
        row = {
            "bundle": b,
            "n_streamlines": k,
            "found": bool(k >= min_streamlines and k > 0),
            "overlap": None,
            "overreach": None,
            "f1": None,
        }
        if bundle_scores is not None and b in bundle_scores and bundle_scores[b] is not None:
            for key, val in bundle_scores[b].items():
                if key in ("bundle", "n_streamlines", "found"):
                    continue
                row[key] = val
        rows.append(row)

    n_valid = int(sum(per_label.get(b, 0) for b in names))
    counts = {c: int(per_label.get(c, 0)) for c in CATEGORIES}
    for lab, k in per_label.items():
        if lab not in name_set and lab not in counts:
            counts[lab] = int(k)
    counts["valid"] = n_valid

    def _mean(key):
        if bundle_scores is None:
            return None
        if not rows:
            return 0.0
        vals = [float(r[key]) if r.get(key) is not None else 0.0 for r in rows]
        return float(np.mean(vals))

    summary = {
        "mode": str(mode),
        "n_streamlines": n,
        "precision": float(n_valid / n) if n else 0.0,
        "valid_bundles": int(sum(r["found"] for r in rows)),
        "n_bundles": len(names),
        "mean_overlap": _mean("overlap"),
        "mean_overreach": _mean("overreach"),
        "mean_f1": _mean("f1"),
        "counts": counts,
        "bundles": rows,
    }
    if extra:
        summary.update(extra)
    return _jsonable(summary)


def _tsv_value(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_bundlestats_tsv(summary: dict, path) -> Path:
    """Write one row per bundle (columns ``bundle, n_streamlines, found, overlap, overreach, f1``
    then any extra per-bundle keys, in first-seen order); missing values are ``n/a`` (BIDS)."""
    path = Path(path)
    rows = summary.get("bundles", [])
    columns = list(BUNDLE_COLUMNS)
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join(_tsv_value(row.get(c)) for c in columns))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_metrics_json(summary: dict, path) -> Path:
    """Write the summary as indented JSON (NaN/inf and numpy types converted)."""
    path = Path(path)
    path.write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    return path


def read_bundlestats_tsv(path) -> list[dict]:
    """Read a bundle-stats TSV back as a list of dicts of strings ("n/a" kept as is)."""
    lines = Path(path).read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]
