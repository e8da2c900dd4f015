#!/usr/bin/env python
"""Sampler benchmark (issue 16): acceptance, precision, VB and time of GenTract sampling with the
fODF support filter, per fODF-guidance scale, on tube-phantom subjects.

For each ``--seed`` a ``gentract-phantom`` cohort (the phantom benchmark's base cohort: 2 mm,
SNR 30, ``--subjects`` subjects) is made or reused under ``--out``, its dipy CSD fODF fitted once
(cached), and each subject is sampled in this process on ``--threads`` threads, through the app's
own path (canonical grid, z-score, registration to the model's template, support filter,
:func:`gentract_bids.model.inference.sample_tractogram`), once per ``--guidance`` scale, and
scored against the ground truth. Prints one line per run and writes ``sampler.json``::

    python benchmarks/sampler_bench.py --seed 7 --n 1000 --guidance 0 1 3
    python benchmarks/sampler_bench.py --seed 1000 --labels 01 02 03 --n 3000 --alone  # no filter
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

from phantom.cohorts import ISBI_GEOMETRY, CohortSpec, build_cohort, subject_files  # noqa: E402
from phantom.common import Settings, _load  # noqa: E402
from phantom.runners import score_run  # noqa: E402
from gentract_bids.io.tractogram import clip_to_mask, resample_streamlines  # noqa: E402


def dipy_fod(cohort: Path, label: str) -> Path:
    """The subject's dipy CSD fODF (L_max 6), fitted once and cached beside the cohort."""
    import nibabel as nib

    from gentract_bids.fodf.csd import fit_csd, make_gtab
    from gentract_bids.io.dwi import read_dwi

    out = cohort.parent / "fod" / cohort.name / f"sub-{label}_dipy_sh.nii.gz"
    if not out.exists():
        f = subject_files(cohort, label)
        dwi = read_dwi(f["dwi"], f["bval"], f["bvec"])
        sh, _ = fit_csd(dwi.data, make_gtab(dwi.bvals, dwi.bvecs), _load(f["mask"])[0] > 0)
        out.parent.mkdir(parents=True, exist_ok=True)
        nib.Nifti1Image(sh, dwi.affine).to_filename(str(out))
    return out


def subject_setup(model_name: str, cohort: Path, label: str, register: bool = True) -> dict:
    """Model, z-scored canonical fODF, support test and model -> subject map of one subject."""
    from gentract_bids.fodf.grid import to_canonical, zscore
    from gentract_bids.model.inference import fod_support, load_model, resolve_model_path
    from gentract_bids.registration.template import load_model_template, model_to_subject
    from gentract_bids.train.dataset import SubjectSource, subject_registration

    net, meta = load_model(model_name)
    f = subject_files(cohort, label)
    template = load_model_template(resolve_model_path(model_name), meta)
    to_subject = None
    if template is not None and register:
        src = SubjectSource(label, f["dwi"], f["bval"], f["bvec"], f["mask"], [])
        reg = subject_registration(src, template, cohort.parent / "registration" / cohort.name)
        to_subject = model_to_subject(template, reg)
    sh, affine = _load(dipy_fod(cohort, label))
    mask, mask_affine = _load(f["mask"])
    cfg = net.config
    sh_c, mask_c, affine_c = to_canonical(sh, affine, mask > 0, mask_affine, cfg.grid_spacing,
                                          cfg.grid_shape, to_subject=to_subject)
    z = zscore(sh_c, np.asarray(meta["zscore"]["mean"]), np.asarray(meta["zscore"]["std"]),
               mask_c)
    return {"net": net, "meta": meta, "z": z, "model_name": model_name, "support": fod_support(meta, z, mask_c, affine_c),
            "to_subject": to_subject, "ref_affine": mask_affine, "ref_shape": mask.shape[:3],
            "mask": mask > 0}


def connectivity_variant(spec: str, s: dict, ends):
    """``off``, ``model`` (the prior the checkpoint carries) or ``CELL:REACH`` (a prior of that
    cell size and reach from ``--connectivity-ends``)."""
    from gentract_bids.model.connectivity import ConnectivityPrior, load_connectivity
    from gentract_bids.model.inference import resolve_model_path

    if spec == "off":
        return None
    if spec == "model":
        return load_connectivity(resolve_model_path(s["model_name"]), s["meta"])
    if ends is None:
        raise SystemExit("--connectivity CELL:REACH needs --connectivity-ends")
    cell, reach = spec.split(":")
    return ConnectivityPrior.from_streamlines(ends, float(cell), int(reach))


def run_one(s: dict, n: int, steps: int, seed: int, guidance: float, workdir: Path,
            smc=(), density: float = 0.0, connectivity=None, batch_size: int | None = None,
            schedule: str = "uniform", smc_density: bool = False,
            density_cell_mm: float | None = None) -> dict:
    from gentract_bids.io.tractogram import load_tractogram
    from gentract_bids.model.inference import sample_tractogram

    extra = {"guidance_scale": guidance} if guidance else {}
    extra.update({"smc_times": smc} if smc else {})
    extra.update({"density_strength": density} if density else {})
    extra.update({"smc_density": True} if smc_density else {})
    extra.update({"density_cell_mm": density_cell_mm} if density_cell_mm else {})
    extra.update({"connectivity": connectivity} if connectivity is not None else {})
    extra.update({"time_schedule": schedule} if schedule != "uniform" else {})
    out = workdir / "sampled.trx"
    support, filter_cpu = s["support"], [0.0]
    if support is not None:
        def timed_filter(x, _filter=type(support).filter):  # the filter's own CPU seconds
            c = time.process_time()
            kept = _filter(support, x)
            filter_cpu[0] += time.process_time() - c
            return kept

        support.filter = timed_filter
    c0, w0 = time.process_time(), time.perf_counter()
    info = sample_tractogram(s["net"], s["meta"], s["z"], out, n_streamlines=n, steps=steps,
                             seed=seed, ref_affine=s["ref_affine"], ref_shape=s["ref_shape"],
                             support=support, to_subject=s["to_subject"],
                             batch_size=batch_size, **extra)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    if support is not None:
        del support.filter
    streamlines, _ = load_tractogram(out)
    out.unlink()
    t = info["Timings"]
    return {"kept": info["NumberOfStreamlines"], "drawn": info["NumberSampled"],
            "acceptance": (info["SupportFilter"] or {}).get("AcceptanceRate"),  # supported / drawn
            "batch_size": info["BatchSize"], "sampling_s": t["SamplingSeconds"],
            "support_s": t["SupportSeconds"], "support_cpu_s": filter_cpu[0], "cpu_s": cpu,
            "wall_s": wall,
            "model_fit": info.get("ModelFit"), "density": info.get("DensityAcceptance"),
            "connectivity": info.get("ConnectivityPrior"),
            "streamlines": list(streamlines)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, nargs="+", default=[7], help="cohort seeds (7: dev)")
    ap.add_argument("--subjects", type=int, default=1, help="subjects per cohort to sample")
    ap.add_argument("--labels", nargs="+", help="sample these subjects (default: the first "
                    "--subjects)")
    ap.add_argument("--n", type=int, default=1000, help="streamlines to keep")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, nargs="+", default=[0.0])
    ap.add_argument("--smc", nargs="+", default=["off"], help="SMC variants: comma-separated "
                    "times (e.g. 0.3,0.6) or off")
    ap.add_argument("--density", type=float, nargs="+", default=[0.0],
                    help="density-acceptance strengths (0: off)")
    ap.add_argument("--smc-density", nargs="+", choices=("off", "on"), default=["off"],
                    help="the density step's weight in the SMC resampling too (with --density "
                    "and --smc)")
    ap.add_argument("--density-cell", type=float, help="the density step's end-cell size, mm "
                    "(default: the app's, 8)")
    ap.add_argument("--schedule", nargs="+", default=["uniform"],
                    help="flow time grids: uniform, late, early, cosine (model/flow.py)")
    ap.add_argument("--connectivity", nargs="+", default=["off"], help="connectivity-prior "
                    "variants: off, model (the checkpoint's) or CELL:REACH (from "
                    "--connectivity-ends)")
    ap.add_argument("--connectivity-ends", type=Path, help="training ends (.npy, "
                    "scripts/build_connectivity.py --ends)")
    ap.add_argument("--anatomy", choices=("tubes", "human"), default="tubes",
                    help="the base cohort's anatomy (human: 72 TractSeg bundles in scanner "
                         "space; use --model gentract_human_phantom)")
    ap.add_argument("--model", default="gentract_phantom")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, help="streamlines per batch (default: the app's)")
    ap.add_argument("--sample-seed", type=int, default=0)
    ap.add_argument("--no-score", action="store_true", help="timings only")
    ap.add_argument("--written", action="store_true",
                    help="also score the streamlines as the app writes them (--step-size 1: "
                    "1 mm cubic spline, ends clipped to the brain mask; here the phantom's), as "
                    "written_* keys")
    ap.add_argument("--alone", action="store_true", help="the model alone: no support filter "
                    "(so no guidance, SMC or density step either), --n raw draws")
    ap.add_argument("--isbi", action="store_true", help="the ISBI 2013 geometry's cohort (out "
                    "of the tube model's family) instead of the base cohort, not registered "
                    "(its brain is not the tubes' template)")
    ap.add_argument("--out", type=Path, default=Path("work/sampler"))
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    rows = []
    ends = None if a.connectivity_ends is None else np.load(a.connectivity_ends)
    for seed in a.seed:
        labels = a.labels or [f"{k + 1:02d}" for k in range(a.subjects)]
        st = Settings(n_subjects=max(2, len(labels), *map(int, labels)), seed=seed,
                      anatomy=a.anatomy)
        spec = (CohortSpec("isbi", st.clean_snr, st.clean_voxel_size, str(ISBI_GEOMETRY))
                if a.isbi else
                CohortSpec("human-base" if a.anatomy == "human" else "base", st.clean_snr,
                           st.clean_voxel_size, anatomy=a.anatomy))
        cohort = build_cohort(spec, st, a.out / f"seed{seed}")
        for label in labels:
            s = subject_setup(a.model, cohort, label, register=not a.isbi)
            if a.alone:
                s["support"] = None
            variants = [(g, sm, d, c, sc, sd) for g in a.guidance for sm in a.smc
                        for d in a.density for c in a.connectivity for sc in a.schedule
                        for sd in a.smc_density]
            for g, sm, d, c, sc, sd in variants:
                smc = () if sm == "off" else tuple(float(t) for t in sm.split(","))
                r = run_one(s, a.n, a.steps, a.sample_seed, g, a.out, smc, d,
                            connectivity_variant(c, s, ends), a.batch_size, sc, sd == "on",
                            a.density_cell)
                sl = r.pop("streamlines")
                if not a.no_score:
                    r.update(score_run(sl, cohort, label, st.min_streamlines))
                if a.written and not a.no_score:
                    written = clip_to_mask(resample_streamlines(sl, 1.0), s["mask"],
                                           s["ref_affine"])
                    r.update({f"written_{k}": v for k, v in
                              score_run(written, cohort, label, st.min_streamlines).items()
                              if k != "ib"})
                r.update(seed=seed, subject=label, guidance=g, smc=sm, density_strength=d,
                         schedule=sc, smc_density=sd, density_cell=a.density_cell,
                         connectivity_variant=c,
                         n=a.n, steps=a.steps,
                         threads=a.threads)
                rows.append(r)
                print(json.dumps({k_: (round(v, 4) if isinstance(v, float) else v)
                                  for k_, v in r.items() if k_ not in ("ib",)}), flush=True)
    out = a.out / f"sampler_{int(time.time())}.json"
    out.write_text(json.dumps(rows, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
