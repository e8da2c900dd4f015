#!/usr/bin/env python
"""Density acceptance at scale (issue 16): replay references of the density step on one pool.

One pool of supported streamlines is drawn once with the app's sampler defaults minus the
density step (guidance, SMC, support filter; the sampler bench's cohort and registration), on
one dev subject, and saved under ``--out`` (reused when there). Each ``--reference`` is then
replayed on the same candidates in the same order with the same uniforms: the density step does
not feed back into the sampler, so the replay keeps what ``sample_tractogram`` would. Prints one
line per reference: kept per draw at each ``--at``, the rate kept per supported candidate in the
last 1000 before it, and ground-truth scores at 1000 and 3000::

    python benchmarks/density_replay.py --out /tmp/dens/tube --pool 20000
    python benchmarks/density_replay.py --anatomy human --model gentract_human_phantom \\
        --out /tmp/dens/human --pool 15000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from phantom.cohorts import CohortSpec, build_cohort  # noqa: E402
from phantom.common import Settings  # noqa: E402
from phantom.runners import score_run  # noqa: E402


def reference(rule: str, counts: dict, total: int, sum_sq: int, ent: float, n1: int) -> float:
    """The density step's reference count m under ``rule``."""
    if rule == "off":
        return np.inf
    if not total:
        return 0.0
    if rule == "weighted":  # the app's: sum c^2 / sum c
        return sum_sq / total
    if rule == "mean":  # the first one: mean over occupied cells
        return total / len(counts)
    if rule == "entropy":  # N / exp(Shannon entropy of the cell shares)
        return total / np.exp(np.log(total) - ent / total)
    if rule == "mean2":  # mean over cells seen twice or more
        k = len(counts) - n1
        return (total - n1) / k if k else total / len(counts)
    raise SystemExit(f"unknown reference {rule}")


def replay(cells: list, rule: str, strength: float, seed: int = 0) -> np.ndarray:
    """Indices of the candidates kept, in order."""
    u = np.random.default_rng(seed).random(len(cells))
    counts, total, sum_sq, ent, n1, kept = {}, 0, 0, 0.0, 0, []
    for i, cell in enumerate(cells):
        c = counts.get(cell, 0)
        m = reference(rule, counts, total, sum_sq, ent, n1)
        if u[i] < min(1.0, ((m + 1) / (c + 1)) ** strength):
            kept.append(i)
            n1 += (c == 0) - (c == 1)
            counts[cell] = c + 1
            total += 1
            sum_sq += 2 * c + 1
            ent += (c + 1) * np.log(c + 1) - (c * np.log(c) if c else 0.0)
    return np.array(kept, int)


def draw_pool(a) -> dict:
    """The supported pool (model mm and subject mm) of the first subject, drawn once."""
    from gentract_bids.io.tractogram import load_tractogram
    from gentract_bids.model.inference import sample_tractogram
    from gentract_bids.model.support import DEFAULT_GUIDANCE_SCALE, DEFAULT_SMC_TIMES
    from sampler_bench import subject_setup

    st = Settings(n_subjects=2, seed=a.seed, anatomy=a.anatomy)
    spec = CohortSpec("human-base" if a.anatomy == "human" else "base", st.clean_snr,
                      st.clean_voxel_size, anatomy=a.anatomy)
    cohort = build_cohort(spec, st, a.out / f"seed{a.seed}")
    info_file = a.out / "pool.json"
    if not info_file.exists():
        s = subject_setup(a.model, cohort, "01")
        c0 = time.process_time()
        info = sample_tractogram(s["net"], s["meta"], s["z"], a.out / "pool.trx",
                                 n_streamlines=a.pool, steps=10, seed=0,
                                 ref_affine=s["ref_affine"], ref_shape=s["ref_shape"],
                                 support=s["support"], to_subject=s["to_subject"],
                                 guidance_scale=DEFAULT_GUIDANCE_SCALE,
                                 smc_times=DEFAULT_SMC_TIMES)
        to_model = np.linalg.inv(s["to_subject"]) if s["to_subject"] is not None else np.eye(4)
        info_file.write_text(json.dumps({"drawn": info["NumberSampled"],
                                         "kept": info["NumberOfStreamlines"],
                                         "cpu_s": time.process_time() - c0,
                                         "to_model": to_model.tolist()}))
    info = json.loads(info_file.read_text())
    subject = list(load_tractogram(a.out / "pool.trx")[0])
    t = np.asarray(info["to_model"])
    model_mm = np.stack(subject) @ t[:3, :3].T + t[:3, 3]
    return {**info, "subject": subject, "model_mm": model_mm, "cohort": cohort}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--anatomy", choices=("tubes", "human"), default="tubes")
    ap.add_argument("--model", default="gentract_phantom")
    ap.add_argument("--seed", type=int, default=7, help="cohort seed (7: dev)")
    ap.add_argument("--pool", type=int, default=20000, help="supported streamlines to draw")
    ap.add_argument("--reference", nargs="+", default=["off", "mean", "weighted"],
                    help="off, mean, weighted (the app's), entropy, mean2")
    ap.add_argument("--strength", type=float, default=2.0)
    ap.add_argument("--cell-mm", type=float, default=8.0)
    ap.add_argument("--at", type=int, nargs="+", default=[1000, 3000, 6000, 10000])
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from gentract_bids.model.support import DensityAcceptance

    pool = draw_pool(a)
    cells = DensityAcceptance(a.strength, a.cell_mm).cells(pool["model_mm"])
    per_draw = pool["kept"] / pool["drawn"]
    for rule in a.reference:
        kept = replay(cells, rule, a.strength)
        row = {"reference": rule, "strength": a.strength, "cell_mm": a.cell_mm}
        for n in a.at:
            if len(kept) < n:
                row[f"kept_per_draw@{n}"] = None  # not reached from this pool
                continue
            row[f"kept_per_draw@{n}"] = round(n / (kept[n - 1] + 1) * per_draw, 3)
            if n > 1000:
                row[f"rate@{n - 1000}-{n}"] = round(1000 / (kept[n - 1] - kept[n - 1001]), 3)
        for n in (1000, 3000):
            if len(kept) >= n:
                s = score_run([pool["subject"][i] for i in kept[:n]], pool["cohort"], "01", 10)
                row.update({f"{k}@{n}": round(s[k], 4) for k in
                            ("precision", "valid_bundles", "mean_f1")})
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
