#!/usr/bin/env python
"""Time to N valid streamlines (issue 16): GenTract, SD_Stream + SIFT and iFOD2 + SIFT on one
held-out phantom subject, every tracker in this one script call.

    python benchmarks/time_to_n.py --out /tmp/ttn [--anatomy tubes] [--subject 01] \\
        [--n 3000 30000] [--trackers gentract sdstream ifod2]

The subject is the phantom benchmark's base cohort (held-out seed 1000, 2 mm, SNR 30), built or
reused under ``--out`` with its fODFs (dipy CSD for GenTract, MRtrix3 for iFOD2/SD_Stream:
preprocessing, untimed). Every run is one spawned worker of the phantom benchmark
(:func:`phantom.runners.run_tracker`): GenTract with the app's sampler defaults (support filter,
guidance, SMC, density acceptance; ``--connectivity-prior`` as the app's), the MRtrix3 trackers
generating ``--sift-factor`` times the request and ``tcksift`` keeping the request; one thread
each. Its ``cpu_seconds`` count the worker's own threads and the programs it ran.

"Time to N valid" is the CPU time of a run whose written tractogram holds at least N streamlines
that the ground truth counts valid. A run cannot stop at the N-th valid streamline (SIFT is a
global filter; GenTract keeps what it is asked for), so the request is searched: the first try
asks for N / p streamlines (p: the tracker's precision at the previous N or ``--guess``, 1 at the
first; times ``--margin`` where p was measured), and
while fewer than N are valid the request grows by N / valid (2 % more), at most ``--max-tries``
times. The figure is the first run that reaches N; the search's total is printed beside it.
A 10-streamline GenTract run first fills the registration cache (to the model's template), which
is preprocessing like the fODF.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from phantom.cohorts import cohort_specs, make_conditions  # noqa: E402
from phantom.common import Settings, _jsonable, _log  # noqa: E402
from phantom.inputs import prepare_cohorts, subject_inputs  # noqa: E402
from phantom.runners import run_tracker, score_run  # noqa: E402

TRACKERS = ("gentract", "sdstream", "ifod2")


def gentract_options(anatomy: str, connectivity_prior: bool | None = None) -> dict:
    """The app's defaults for the shipped model of ``anatomy`` (``connectivity_prior``: None,
    the model's default)."""
    from gentract_bids.io.checkpoint import read_checkpoint_metadata
    from gentract_bids.model.inference import HUMAN_MODEL, TUBE_MODEL, sampler_defaults
    from gentract_bids.model.support import DEFAULT_THRESHOLD

    model = HUMAN_MODEL if anatomy == "human" else TUBE_MODEL
    d = sampler_defaults(model)
    if connectivity_prior is None:
        connectivity_prior = d["connectivity_prior"] == "on"
    return {"model": str(model), "sha256": read_checkpoint_metadata(model)["sha256"],
            "support_threshold": DEFAULT_THRESHOLD, "guidance_scale": d["guidance_scale"],
            "smc_times": list(d["smc_times"]), "density_strength": d["density_acceptance"],
            "connectivity_prior": connectivity_prior}


def one_run(tracker, inputs, cond, root, label, request, seed, workdir, options,
            min_streamlines) -> dict:
    from gentract_bids.io.tractogram import load_tractogram

    r = run_tracker(tracker, inputs, cond, request, seed, workdir / f"{tracker}_{request}",
                    options)
    streamlines, _ = load_tractogram(r["file"])
    s = score_run(streamlines, root, label, min_streamlines)
    Path(r["file"]).unlink()
    valid = int(round(s["precision"] * s["n_scored"]))
    return {"tracker": tracker, "request": request, "written": len(streamlines), "valid": valid,
            "precision": s["precision"], "valid_bundles": s["valid_bundles"],
            "n_bundles": s["n_bundles"], "mean_f1": s["mean_f1"], "cpu_s": r["cpu_seconds"],
            "wall_s": r["seconds"], "peak_mb": r["peak_mb"],
            "n_sampled": r["meta"].get("Parameters", {}).get("n_sampled")}


def time_to(n: int, tracker, precision_guess: float, run, max_tries: int,
            margin: float = 1.0) -> dict:
    """Search the request until a run writes >= n valid streamlines (see the module text)."""
    request, tries = int(math.ceil(n / max(precision_guess, 1e-3) * margin)), []
    for _ in range(max_tries):
        r = run(tracker, request)
        tries.append(r)
        _log(f"{tracker} N={n}: asked {request}, wrote {r['written']}, valid {r['valid']}, "
             f"{r['cpu_s']:.0f} CPU s")
        if r["valid"] >= n:
            break
        request = int(math.ceil(request * n / max(r["valid"], 1) * 1.02))
    last = tries[-1]
    return {"tracker": tracker, "n": n, "reached": last["valid"] >= n, "final": last,
            "tries": tries, "search_cpu_s": sum(t["cpu_s"] for t in tries)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("work/time_to_n"))
    ap.add_argument("--anatomy", choices=("tubes", "human"), default="tubes")
    ap.add_argument("--seed", type=int, default=1000, help="phantom cohort seed (held out)")
    ap.add_argument("--subject", default="01")
    ap.add_argument("--n-subjects", type=int, default=Settings().n_subjects,
                    help="subjects of the cohort (the phantom benchmark's: its --out is reused)")
    ap.add_argument("--n", type=int, nargs="+", default=[3000, 30000])
    ap.add_argument("--trackers", nargs="+", choices=TRACKERS, default=list(TRACKERS))
    ap.add_argument("--sift-factor", type=float, default=2.0)
    ap.add_argument("--max-tries", type=int, default=3)
    ap.add_argument("--connectivity-prior", choices=("on", "off"), default=None,
                    help="default: the app's for the model")
    ap.add_argument("--guess", nargs="+", default=[], metavar="TRACKER=PRECISION",
                    help="a measured precision to size the first request at the smallest N "
                         "(e.g. from an earlier run); default 1")
    ap.add_argument("--margin", type=float, default=1.03,
                    help="the first request at N is N / precision x this, where the precision "
                         "was measured (at a smaller N or by --guess)")
    a = ap.parse_args(argv)
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    t0 = time.perf_counter()
    st = Settings(n_subjects=max(a.n_subjects, int(a.subject)), seed=a.seed, anatomy=a.anatomy)
    cond = make_conditions(st, ["clean"])[0]
    cohorts, fods, prep = prepare_cohorts(cohort_specs([cond], st), st, [a.subject], a.out)
    root = cohorts[cond.cohort.name]
    work = a.out / "work" / cond.cohort.name / f"sub-{a.subject}"
    inputs = subject_inputs(cond, root, a.subject, fods[cond.cohort.name, a.subject], st,
                            work / "clean")
    options = {"gentract": gentract_options(a.anatomy, None if a.connectivity_prior is None
                                             else a.connectivity_prior == "on"),
               "sdstream": {"sift_factor": a.sift_factor, "nthreads": 1},
               "ifod2": {"sift_factor": a.sift_factor, "nthreads": 1}}
    seed = a.seed + int(a.subject)
    runs = work / "time_to_n"

    def run(tracker, request):
        return one_run(tracker, inputs, cond, root, a.subject, request, seed, runs,
                       options[tracker], st.min_streamlines)

    if "gentract" in a.trackers:  # fills the registration cache: preprocessing, untimed
        run("gentract", 10)
    rows = []
    measured = {t: float(p) for t, p in (g.split("=") for g in a.guess)}  # tracker -> precision
    for n in sorted(a.n):
        for tracker in a.trackers:
            known = tracker in measured
            r = time_to(n, tracker, measured.get(tracker, 1.0), run, a.max_tries,
                        a.margin if known else 1.0)
            measured[tracker] = max(r["final"]["precision"], 1e-3)
            rows.append(r)
    lines = ["| tracker | N | reached | asked | written | valid | precision % | VB | CPU s "
             "| search CPU s | peak MB |", "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: "
             "| ---: | ---: | ---: |"]
    for r in rows:
        f = r["final"]
        lines.append(f"| {r['tracker']} | {r['n']} | {'yes' if r['reached'] else 'no'} | "
                     f"{f['request']} | {f['written']} | {f['valid']} | "
                     f"{100 * f['precision']:.1f} | {f['valid_bundles']}/{f['n_bundles']} | "
                     f"{f['cpu_s']:.0f} | {r['search_cpu_s']:.0f} | {f['peak_mb']:.0f} |")
    for n in sorted(a.n):
        by = {r["tracker"]: r["final"]["cpu_s"] for r in rows if r["n"] == n and r["reached"]}
        if "gentract" in by and "ifod2" in by:
            lines.append(f"\nN={n}: GenTract / iFOD2 + SIFT = {by['gentract'] / by['ifod2']:.2f}"
                         + (f", GenTract / SD_Stream + SIFT = "
                            f"{by['gentract'] / by['sdstream']:.2f}" if "sdstream" in by else ""))
    table = "\n".join(lines)
    print(table, flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "time_to_n.json").write_text(json.dumps(_jsonable({
        "command": " ".join(["benchmarks/time_to_n.py", *(argv or sys.argv[1:])]),
        "subject": a.subject, "seed": a.seed, "anatomy": a.anatomy, "options": options,
        "loadavg": os.getloadavg(), "rows": rows, "preprocessing": prep,
        "total_s": time.perf_counter() - t0}), indent=1) + "\n")
    (a.out / "time_to_n.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
