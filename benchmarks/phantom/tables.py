"""Results of the phantom benchmark: the per-condition summary over subjects
(:func:`summarise_runs`), the Markdown tables (the paper's Tables 2-5, :func:`markdown_tables`)
and the precision figure (:func:`plot_precision`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cohorts import Condition
from .common import Settings

METRICS = ("precision", "valid_bundles", "mean_overlap", "mean_f1", "mean_overreach", "seconds",
           "peak_mb")
TRACKER_LABELS = {"gentract": "GenTract", "gentract-other": "GenTract, other subject's context",
                  "gentract-zero": "GenTract, zero context",
                  "gentract-alone": "GenTract, model alone", "ifod2": "iFOD2 + SIFT", "sdstream": "SD_Stream + SIFT",
                  "tckglobal": "tckglobal", "dipy-det": "dipy det", "dipy-prob": "dipy prob"}


def summarise_runs(runs: list[dict], conditions: list[str], trackers: list[str]) -> dict:
    """{condition: {tracker: {metric: [mean, sd, n]} or {"status": "n/a"}}} over subjects."""
    out: dict = {}
    for c in conditions:
        out[c] = {}
        for t in trackers:
            rs = [r for r in runs if r["condition"] == c and r["tracker"] == t]
            ok = [r for r in rs if r["status"].startswith("run") and "precision" in r]
            if not ok:
                out[c][t] = {"status": rs[0]["status"] if rs else "missing"}
                continue
            row = {"status": ok[0]["status"], "n_subjects": len(ok),
                   "n_bundles": ok[0]["n_bundles"]}
            for m in METRICS:
                v = np.array([r[m] for r in ok], float)
                row[m] = [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0]
            failed = [r for r in rs if r["status"] == "failed"]
            if failed:
                row["failed"] = len(failed)
            out[c][t] = row
    return out


def _pm(ms, scale=1.0, fmt="{:.2f}"):
    m, s = ms
    return f"{fmt.format(m * scale)} ± {fmt.format(s * scale)}"


def markdown_tables(summary: dict, conditions: list[Condition], trackers: list[str]) -> str:
    """One Markdown table per condition, like the paper's Tables 2-5 (mean ± sd over subjects)."""
    lines = []
    for cond in conditions:
        lines += [f"### {cond.name}: {cond.description}", "",
                  "| tracker | precision % | VB | mean OL | mean F1 | mean OR | time s | peak MB |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        notes = set()
        for t in trackers:
            row = summary[cond.name][t]
            label = TRACKER_LABELS.get(t, t)
            if "precision" not in row:
                why = {"n/a": "n/a (reads the DWI: same input as without fODF noise)",
                       "failed": "failed"}.get(row["status"], row["status"])
                lines.append(f"| {label} | {why} | | | | | | |")
                continue
            if row["status"] == "run-dwi-only":
                label += " ¹"
                notes.add("¹ reads the DWI: gets this cohort's resolution/SNR, not the fODF "
                          "noise.")
            if row.get("failed"):
                label += f" ({row['failed']} failed)"
            lines.append(
                f"| {label} | {_pm(row['precision'], 100, '{:.1f}')} | "
                f"{_pm(row['valid_bundles'], 1, '{:.1f}')} / {row['n_bundles']} | "
                f"{_pm(row['mean_overlap'])} | {_pm(row['mean_f1'])} | "
                f"{_pm(row['mean_overreach'])} | {_pm(row['seconds'], 1, '{:.0f}')} | "
                f"{_pm(row['peak_mb'], 1, '{:.0f}')} |")
        lines += [""] + sorted(notes) + ([""] if notes else [])
    return "\n".join(lines)


def plot_precision(summary: dict, conditions: list[str], trackers: list[str], path: Path) -> Path:
    """Grouped bars: mean precision (%) per condition, one bar per tracker (sd as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(conditions), 3.6))
    width = 0.8 / max(len(trackers), 1)
    x = np.arange(len(conditions))
    for i, t in enumerate(trackers):
        mean = [summary[c][t]["precision"][0] * 100 if "precision" in summary[c][t] else np.nan
                for c in conditions]
        sd = [summary[c][t]["precision"][1] * 100 if "precision" in summary[c][t] else 0.0
              for c in conditions]
        ax.bar(x + (i - (len(trackers) - 1) / 2) * width, mean, width, yerr=sd, capsize=2,
               label=TRACKER_LABELS.get(t, t))
    ax.set_xticks(x, conditions)
    ax.set_ylabel("precision (valid streamlines, %)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=min(len(trackers), 3), loc="upper right")
    ax.set_title("Phantom benchmark: precision by condition (mean ± sd over subjects)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path



def write_report(summary: dict, conditions: list[Condition], trackers: list[str],
                 settings: Settings, out: Path) -> None:
    """``tables.md`` and ``precision_by_condition.png`` under ``out``."""
    head = (f"Phantom benchmark, held-out seed {settings.seed}, {settings.n_subjects} subject(s), "
            f"{settings.n_streamlines} streamlines per tracker; mean ± sd over subjects.\n\n")
    (out / "tables.md").write_text(head + markdown_tables(summary, conditions, trackers))
    plot_precision(summary, [c.name for c in conditions], trackers,
                   out / "precision_by_condition.png")
