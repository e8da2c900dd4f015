"""Group level: tables across participants (``group_bundlestats.tsv``) and ``group.html``.

Everything is read back from the committed participant-level derivatives in ``OUTPUT_DIR``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import NoInputError
from ..io.bids import SERIES_ENTITIES
from ..io.commit import write_atomic
from .html import fmt, render, write_html
from .subject import (
    FOD_GLOB, TRACKER_NAMES, find_models, series_entities, series_prefix, tracker_files,
    tracker_summary, tracking_seconds,
)

ID_COLUMNS = tuple(SERIES_ENTITIES)
NA = "n/a"


def find_all_series(output_dir) -> list[dict]:
    """Every committed DWI series in ``output_dir`` (all subjects), sorted by file name."""
    output_dir = Path(output_dir)
    out = []
    for fod in sorted(output_dir.glob(f"sub-*/**/dwi/{FOD_GLOB}")):
        ents = series_entities(fod.name)
        out.append({"entities": ents, "prefix": series_prefix(ents), "dir": fod.parent,
                    "fod": fod})
    return out


def _id_columns(series_list) -> list[str]:
    """subject and session always; acquisition, reconstruction, direction, run, ... only when
    some series has them."""
    return [c for c in ID_COLUMNS
            if c in ("subject", "session") or any(c in s["entities"] for s in series_list)]


def collect_results(output_dir) -> tuple[list[dict], list[dict], list[str]]:
    """Read every series x tracker of ``output_dir``.

    Returns ``(summaries, bundle_rows, bundle_columns)``: one summary per series x tracker
    (ids, model, mode, n_streamlines, precision, valid_bundles, n_bundles, mean_f1,
    tracking_seconds, streamlines_per_second) and one row per series x tracker x bundle with the
    bundle table's values copied verbatim. Raises :class:`NoInputError` when a tractogram's
    bundle table or metrics file is missing (an incomplete participant-level output)."""
    output_dir = Path(output_dir)
    series_list = find_all_series(output_dir)
    ids = _id_columns(series_list)
    summaries, rows, columns = [], [], []
    for s in series_list:
        for model in find_models(s):
            files = tracker_files(s, model)
            missing = [p for k, p in files.items() if k != "sidecar" and not p.exists()]
            if missing:
                raise NoInputError(
                    "incomplete participant-level output: "
                    + ", ".join(str(p.relative_to(output_dir)) for p in missing)
                    + " missing; run 'participant' again for this subject")
            t = tracker_summary(s, model)
            key = {c: s["entities"].get(c, NA) for c in ids}
            met = t["metrics"]
            summaries.append({
                **key, "model": model, "mode": met.get("mode", NA),
                "n_streamlines": t["n_streamlines"], "precision": met.get("precision"),
                "valid_bundles": met.get("valid_bundles"), "n_bundles": met.get("n_bundles"),
                "mean_f1": met.get("mean_f1"),
                "tracking_seconds": tracking_seconds(t["sidecar"]),
                "streamlines_per_second": t["streamlines_per_second"],
            })
            for row in t["bundles"]:
                for c in row:
                    if c not in columns:
                        columns.append(c)
                rows.append({**key, "model": model, **row})
    return summaries, rows, columns


def write_group_bundlestats(output_dir, rows: list[dict], bundle_columns: list[str]) -> Path:
    """``OUTPUT_DIR/group_bundlestats.tsv``: one row per series x tracker x bundle; the id
    columns (subject, session[, acquisition, run]) and ``model``, then the per-subject bundle
    table's columns (values as written there; ``n/a`` where a table lacks a column)."""
    path = Path(output_dir) / "group_bundlestats.tsv"
    ids = [c for c in ID_COLUMNS if rows and c in rows[0]]
    header = [*ids, "model", *bundle_columns]
    lines = ["\t".join(header)]
    lines += ["\t".join(str(r.get(c, NA)) for c in header) for r in rows]
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def group_figures(output_dir, summaries: list[dict], rows: list[dict]) -> list[tuple[str, Path]]:
    """The group figures under ``OUTPUT_DIR/figures/`` (matplotlib Agg): precision and mean F1
    per tracker (a point per subject), mean per-bundle F1 per tracker (when any bundle has F1).
    Returns ``[(caption, path), ...]``."""
    from ..io.bids import build_path
    from .figures import plot_group_bundle_heatmap, plot_group_metrics

    def figure(desc: str) -> Path:  # named by io_spec.json: figures/group_desc-<d>_...png
        return Path(output_dir) / build_path({"datatype": "figures", "desc": desc,
                                              "suffix": "bundlestats", "extension": ".png"})

    (Path(output_dir) / "figures").mkdir(exist_ok=True)
    out = []
    keys = [(k, label) for k, label in (("precision", "precision"), ("mean_f1", "mean F1"))
            if any(s.get(k) is not None for s in summaries)]
    if keys:
        out.append(("Precision (fraction of valid streamlines) and mean bundle F1 per tracker",
                    plot_group_metrics(summaries, figure("trackers"), keys=keys)))
    f1_rows = [r for r in rows if r.get("f1") not in (None, "", NA)]
    if f1_rows:
        out.append(("Mean per-bundle F1 over subjects",
                    plot_group_bundle_heatmap(f1_rows, figure("f1"))))
    return out


def write_group_report(output_dir, fodf_rows: list[dict], summaries: list[dict],
                       rows: list[dict]) -> Path:
    """``OUTPUT_DIR/group.html``: the per-subject x tracker table (precision, bundles found,
    mean F1, streamlines per second), the group figures, per-tracker means and the fODF table;
    links to each participant's ``sub-<label>.html`` when present."""
    output_dir = Path(output_dir)
    figures = group_figures(output_dir, summaries, rows) if summaries else []
    ids = [c for c in ID_COLUMNS if summaries and c in summaries[0]]
    subjects = sorted({s["subject"] for s in summaries} | {
        series_entities(r["file"]).get("subject") for r in fodf_rows})
    links = [{"href": f"sub-{s}.html", "text": f"sub-{s}"}
             if (output_dir / f"sub-{s}.html").exists() else f"sub-{s}" for s in subjects]
    trs = [[str(s[c]) for c in ids]
           + [s["model"], s["mode"], fmt(s["n_streamlines"]), fmt(s["precision"]),
              f"{s['valid_bundles']} / {s['n_bundles']}" if s["n_bundles"] else "–",
              fmt(s["mean_f1"]), fmt(s["tracking_seconds"], 1),
              fmt(s["streamlines_per_second"], 1)] for s in summaries]
    means = []
    for m in sorted({s["model"] for s in summaries}):
        sel = [s for s in summaries if s["model"] == m]

        def mean(key, sel=sel):
            vals = [float(s[key]) for s in sel if s.get(key) is not None]
            return sum(vals) / len(vals) if vals else None

        means.append([f"{m} ({TRACKER_NAMES.get(m, m)})", str(len(sel)),
                      fmt(mean("precision")), fmt(mean("valid_bundles"), 1),
                      fmt(mean("mean_f1")), fmt(mean("streamlines_per_second"), 1)])
    cols = list(fodf_rows[0]) if fodf_rows else []
    html = render(
        "group.html.j2", title="gentract: group report", subjects=links,
        n_series=len(fodf_rows), models=sorted({s["model"] for s in summaries}),
        subject_header=[*ids, "tracker", "evaluation", "streamlines", "precision",
                        "bundles found", "mean F1", "tracking (s)", "streamlines/s"],
        subject_rows=trs, mean_rows=means,
        figures=[(c, p.relative_to(output_dir).as_posix()) for c, p in figures],
        fodf_header=cols, fodf_rows=[[str(r[c]) for c in cols] for r in fodf_rows],
        tables=bool(rows))
    return write_html(output_dir / "group.html", html)
