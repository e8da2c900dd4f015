"""Loss curves of a ``gentract-train`` run (offscreen PNG)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    return {k: np.array([float(r[k]) if r[k] not in ("", None) else np.nan for r in rows])
            for k in rows[0]}


def _smooth(y: np.ndarray, n: int = 25) -> np.ndarray:
    if len(y) < n:
        return y
    return np.convolve(y, np.ones(n) / n, mode="valid")


def plot_losses(run_dir) -> Path:
    """``losses.png`` in ``run_dir``: VAE L1 per coefficient and generator train/val losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    vae = _read(run_dir / "losses_vae.csv")
    gen = _read(run_dir / "losses_generator.csv")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if vae:
        for c in np.unique(vae["coefficient"]).astype(int):
            sel = vae["coefficient"] == c
            ax.plot(vae["step"][sel], vae["l1"][sel], lw=0.8, alpha=0.6)
        ax.set_yscale("log")
    ax.set(title="VAE reconstruction (L1), one line per SH coefficient", xlabel="step",
           ylabel="L1 (z-scored units)")
    ax = axes[1]
    if gen:
        ax.plot(gen["step"], gen["loss"], lw=0.5, alpha=0.3, color="C0")
        sm = _smooth(gen["loss"])
        ax.plot(gen["step"][len(gen["step"]) - len(sm):], sm, color="C0", label="train")
        ok = ~np.isnan(gen["val_loss"])
        if ok.any():
            ax.plot(gen["step"][ok], gen["val_loss"][ok], "o-", color="C3", label="validation")
        ax.set_yscale("log")
        ax.legend()
    ax.set(title="generator loss", xlabel="step", ylabel="MSE")
    fig.tight_layout()
    out = run_dir / "losses.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_training_report(run_dir, summary: dict) -> Path:
    """``report.html`` in ``run_dir``: the run's summary (checkpoint and the scalar results),
    its timings and ``losses.png`` (from the shared templates, like the BIDS-App's reports)."""
    from .html import fmt, render, write_html

    run_dir = Path(run_dir)
    scalars = [(k, fmt(v, 4) if not isinstance(v, str) else v) for k, v in summary.items()
               if k != "timings" and (v is None or isinstance(v, (str, int, float)))]
    l1 = [v["final_l1"] for v in summary.get("vae") or [] if isinstance(v, dict)
          and v.get("final_l1") is not None]
    if l1:
        scalars.append((f"VAE final L1, mean / max over {len(l1)} coefficients",
                        f"{fmt(float(np.mean(l1)), 4)} / {fmt(float(np.max(l1)), 4)}"))
    timings = [(k, fmt(v, 1)) for k, v in (summary.get("timings") or {}).items()]
    losses = run_dir / "losses.png"
    html = render("training.html.j2", title=f"gentract-train: {run_dir.name}",
                  run_name=run_dir.name, summary_rows=scalars, timing_rows=timings,
                  losses=losses.name if losses.exists() else None)
    return write_html(run_dir / "report.html", html)
