#!/usr/bin/env python
"""Inference speed and memory: GenTract sampling next to MRtrix3 iFOD2 + SIFT and tckglobal.

One held-out phantom subject (seed 1000, 2 mm, SNR 30; made or reused under ``--out`` with the
phantom benchmark's helpers) is tracked by GenTract
(:func:`gentract_bids.model.inference.sample_tractogram`: context once per subject, the context's
cross-attention K/V once per layer for all batches and steps, ``torch.inference_mode``, bf16
autocast on CUDA, batch size from free memory, streamlines written in chunks to a memory map) at
``--sizes`` (default 10k, 100k), and by iFOD2 (``--sift-factor`` x N, then ``tcksift`` to N) and
tckglobal (``--tckglobal-niter``; at most N of its tracks >= 5 voxels: its count is an equilibrium,
not a request) at ``--baseline-sizes`` (default 10k). fODF estimation is untimed preprocessing.

Each run is a fresh process (``--worker JOB``). ``wall_s``/``cpu_s``: the tracker call only (CPU =
user + system, MRtrix3 programs included). ``peak_rss_mib``: the worker's ``VmHWM``, its exact peak
RSS since exec (``ru_maxrss`` of a child is not per run on Linux: it keeps the parent's high-water
mark across fork/vfork + exec); for MRtrix3 runs at least the largest program's ``ru_maxrss`` and
the process tree's RSS sampled every 0.1 s. GenTract's phases come from its sidecar.

GenTract samples in ``--precision`` (default ``auto``, as the app: bfloat16 on CUDA and on CPUs with
native bfloat16, else float32). Throughput: ``torch.matmul`` of two square float32 matrices (and
bfloat16 ones when sampling runs in bfloat16) at ``--threads``, before and after the GenTract runs,
the larger being the peak; sampling FLOPs from ``FlopCounterMode`` over one transformer call
(context cache prebuilt) x calls per streamline x N; achieved GFLOP/s = FLOPs / sampling seconds,
quoted as a fraction of the float32 peak (``fraction_of_matmul_peak``) and of the peak in the
sampling's own format (``fraction_of_precision_peak``). Writes ``speed.json`` and ``speed.md`` to
``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (REPO, HERE):  # run from a checkout: the package and the phantom benchmark's helpers
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import phantom_benchmark as pb  # noqa: E402

LABELS = {"gentract": "GenTract", "ifod2": "iFOD2 + SIFT", "tckglobal": "tckglobal"}


@dataclass
class Settings:
    sizes: tuple = (10_000, 100_000)
    baseline_sizes: tuple = (10_000,)
    voxel_size: float = 2.0
    seed: int = pb.TEST_SEED
    threads: int = 1
    device: str = "cpu"
    steps: int | None = None  # None: the checkpoint's
    batch_size: int | None = None  # None: from available memory
    precision: str = "auto"  # GenTract's number format while sampling (the app's --precision)
    sift_factor: float = 10.0
    tckglobal_niter: float = 2e7
    matmul_size: int = 2048


QUICK = dict(sizes=(200, 400), baseline_sizes=(200,), voxel_size=3.0, sift_factor=2.0,
             tckglobal_niter=1e6, matmul_size=512)


# ----------------------------------------------------------------------------- worker side
def _cpu_s() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _gentract_job(job: dict) -> dict:
    import nibabel as nib
    import torch

    from gentract_bids.model.inference import load_model, sample_tractogram

    torch.set_num_threads(job["threads"])
    model, meta = load_model(job["model"], device=job["device"])
    ref, fod, out_file = nib.load(job["ref"]), np.load(job["fod"]), Path(job["workdir"]) / "g.trx"
    w0, c0 = time.perf_counter(), _cpu_s()
    info = sample_tractogram(model, meta, fod, out_file, n_streamlines=job["n"],
                             ref_affine=ref.affine, ref_shape=ref.shape[:3], steps=job["steps"],
                             batch_size=job["batch_size"], seed=job["seed"], device=job["device"],
                             precision=job["precision"])
    rec = {"wall_s": time.perf_counter() - w0, "cpu_s": _cpu_s() - c0, "sidecar": info,
           "n_streamlines": info["NumberOfStreamlines"], "batch_size": info["BatchSize"],
           "file_mib": out_file.stat().st_size / 2**20}
    out_file.unlink()
    return rec


def _baseline_job(job: dict) -> dict:
    track = {"ifod2": pb.track_ifod2, "tckglobal": pb.track_tckglobal}[job["kind"]]
    w0, c0 = time.perf_counter(), _cpu_s()
    streamlines, meta = track(pb.SubjectInputs(**job["inputs"]), None, job["n"], job["seed"],
                              job["workdir"], **job["options"])
    return {"wall_s": time.perf_counter() - w0, "cpu_s": _cpu_s() - c0,
            "n_streamlines": len(streamlines), "options": job["options"],
            "children_maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "info": {k: meta[k] for k in ("NGenerated", "NAfterSIFT", "NRaw", "NAboveMinLength",
                                          "Timings") if k in meta}}


def worker_main(job_file: str) -> int:
    """``--worker JOB``: run one job and write its record (or its error) next to the job file."""
    import shutil
    import traceback

    job = json.loads(Path(job_file).read_text())
    try:
        rec = (_gentract_job if job["kind"] == "gentract" else _baseline_job)(job)
        rec["worker_hwm_mib"] = pb._vm_hwm_kb() / 1024
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        rec = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    shutil.rmtree(Path(job["workdir"]) / "work", ignore_errors=True)  # MRtrix3 intermediates
    for tck in Path(job["workdir"]).glob("*.tck"):
        tck.unlink()
    (Path(job_file).parent / "result.json").write_text(json.dumps(pb._jsonable(rec)) + "\n")
    return 0 if "error" not in rec else 1


# ----------------------------------------------------------------------------- parent side
def run_worker(job: dict, threads: int, flops: dict) -> dict:
    """Run ``job`` in a fresh worker, sampling its process tree's RSS every 0.1 s; a failure is
    recorded (``status``/``error``), not raised."""
    wdir = Path(job["workdir"])
    wdir.mkdir(parents=True, exist_ok=True)
    (wdir / "result.json").unlink(missing_ok=True)
    (wdir / "job.json").write_text(json.dumps(job, indent=1) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NIPYPE_NO_ET="1")
    c0, tree = resource.getrusage(resource.RUSAGE_CHILDREN), 0
    with open(wdir / "worker.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(HERE / "inference_speed.py"), "--worker",
                                 str(wdir / "job.json")], env=env, stdout=log, stderr=log)
        while proc.poll() is None:
            tree = max(tree, pb.tree_rss_kb(proc.pid))
            time.sleep(0.1)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    rec = {"tracker": job["kind"], "n_requested": job["n"]}
    died = f"worker died ({proc.returncode}): {(wdir / 'worker.log').read_text()[-999:]}"
    res = (json.loads((wdir / "result.json").read_text()) if (wdir / "result.json").exists()
           else {"error": died})
    if "error" in res:
        pb._log(f"{job['kind']} N={job['n']}: FAILED {res['error']}")
        return dict(rec, status="failed", error=res["error"])
    rec.update(res, status="ok", tree_peak_mib=tree / 1024,
               process_cpu_s=c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime,
               streamlines_per_s=res["n_streamlines"] / res["wall_s"],
               streamlines_per_cpu_s=res["n_streamlines"] / res["cpu_s"])
    rec["peak_rss_mib"] = max(res["worker_hwm_mib"], res.get("children_maxrss_mib", 0),
                              0 if job["kind"] == "gentract" else tree / 1024)
    if job["kind"] == "gentract":
        t = res["sidecar"]["Timings"]
        rec["phases"] = {"context": t["ContextSeconds"], "sampling": t["SamplingSeconds"],
                         "write": t["WritingSeconds"]}
        rec["sampling_gflop"] = flops["flops_per_streamline"] * res["n_streamlines"] / 1e9
        rec["achieved_gflops"] = rec["sampling_gflop"] / t["SamplingSeconds"]
    pb._log(f"{LABELS[job['kind']]} N={job['n']}: {rec['n_streamlines']} streamlines, "
            f"{rec['wall_s']:.1f} s wall, {rec['cpu_s']:.1f} s CPU, "
            f"peak {rec['peak_rss_mib']:.0f} MiB")
    return rec


def matmul_gflops(n: int, threads: int, device: str = "cpu", dtype: str = "float32",
                  seconds: float = 1.0) -> dict:
    """Best-of-3 throughput of ``torch.matmul`` on n x n (2 n^3 FLOPs per product) in GFLOP per
    wall second and per CPU second of this process (which other load on the machine does not
    lower; meaningful on CPU only)."""
    import torch

    torch.set_num_threads(threads)
    a, b = (torch.randn(n, n).to(device, getattr(torch, dtype)) for _ in range(2))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.matmul(a, b)  # warm-up
    best = {"wall": 0.0, "cpu": 0.0}
    for _ in range(3):
        sync()
        k, t0, c0 = 0, time.perf_counter(), time.process_time()
        while k == 0 or time.perf_counter() - t0 < seconds / 3:
            torch.matmul(a, b)
            k += 1
            sync()
        gflop = 2.0 * n**3 * k / 1e9
        best = {"wall": max(best["wall"], gflop / (time.perf_counter() - t0)),
                "cpu": max(best["cpu"], gflop / max(time.process_time() - c0, 1e-9))}
    return best


def _sdpa_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(q, k, v)


def sampling_flops(model, steps: int | None = None, batch: int = 8) -> dict:
    """FLOPs of sampling one streamline: one transformer call on ``batch`` streamlines with the
    context cache prebuilt (as sampling does), times the calls per streamline, counted by a forward
    hook over a real 2-streamline sampling loop. FLOPs depend on the token grid, not on the
    context's values, so a zero context of the model's token grid is used."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    tf, dev = model.transformer, next(model.parameters()).device
    grid = model.token_grid(model.config.grid_shape)
    model.context_grid_shape = grid
    ctx = torch.zeros((1, math.prod(grid), tf.context_dim), device=dev)
    x = torch.zeros((batch, model.config.n_points, 3), device=dev)
    volume = (torch.zeros((1, model.config.n_coeffs) + tuple(model.config.grid_shape), device=dev)
              if model.uses_volume else None)  # local fODF features: sampled at every call
    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}
    calls = []
    with torch.inference_mode():
        cache = tf.precompute_context(ctx, grid)
        with FlopCounterMode(display=False, custom_mapping=custom) as counter:
            model.model_fn(cache, volume)(x, torch.full((batch,), 0.5, device=dev))
        hook = tf.register_forward_hook(lambda *_: calls.append(1))
        try:
            for _ in model.sample_batches(ctx, 2, steps=steps, batch_size=2, volume=volume):
                pass
        finally:
            hook.remove()
    per_call = counter.get_total_flops() / batch
    return {"flops_per_call": per_call, "calls_per_streamline": len(calls),
            "flops_per_streamline": per_call * len(calls), "tokens": math.prod(grid),
            "n_points": model.config.n_points}


def prepare_subject(s: Settings, out: Path) -> pb.SubjectInputs:
    """The phantom subject with its dipy and MRtrix3 fODFs and responses (made or reused)."""
    ps = pb.Settings(n_subjects=1, seed=s.seed, clean_voxel_size=s.voxel_size)
    cond = pb.make_conditions(ps, ["clean"])[0]
    root = pb.build_cohort(cond.cohort, ps, out / "cohorts")
    wdir = out / "work" / cond.cohort.name / "sub-01"
    fods = pb.prepare_fods(root, "01", wdir, nthreads=s.threads)
    return pb.subject_inputs(cond, root, "01", fods, ps, wdir / cond.name)


def canonical_fod(inputs: pb.SubjectInputs, meta: dict, path: Path) -> Path:
    """The subject's dipy CSD SH on the model's canonical grid, z-scored with its statistics."""
    from gentract_bids.fodf.grid import to_canonical, zscore

    sh, affine = pb._load(inputs.dipy_sh)
    mask, mask_affine = pb._load(inputs.mask)
    sh_c, mask_c, _ = to_canonical(sh, affine, mask > 0, mask_affine, meta["grid_spacing"],
                                   meta["grid_shape"])
    np.save(path, zscore(sh_c, meta["zscore"]["mean"], meta["zscore"]["std"], mask_c))
    return path


def run_benchmark(s: Settings, model_path, out: Path, argv=None) -> dict:
    """Every run; writes ``speed.json`` and ``speed.md`` under ``out`` and returns the results."""
    import torch

    from gentract_bids.model.inference import load_model, resolve_precision

    t_start, loads = time.perf_counter(), [os.getloadavg()[0]]
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(s.threads)
    inputs = prepare_subject(s, out)
    model, meta = load_model(model_path, device=s.device)
    fod = canonical_fod(inputs, meta, out / "work" / f"canonical_{meta['sha256'][:12]}.npy")
    flops = sampling_flops(model, steps=s.steps)
    del model
    if s.device.startswith("cuda"):  # leave the GPU's memory to the workers' batch sizes
        torch.cuda.empty_cache()
    precision = resolve_precision(s.device, s.precision)
    dtypes = ["float32"] + (["bfloat16"] if precision == "bfloat16" else [])
    matmul = {dt: [matmul_gflops(s.matmul_size, s.threads, s.device, dt)] for dt in dtypes}
    jobs = [{"kind": "gentract", "n": n, "model": str(model_path) if model_path else None,
             "fod": str(fod), "ref": inputs.mask, "steps": s.steps, "batch_size": s.batch_size,
             "device": s.device, "threads": s.threads, "precision": precision} for n in s.sizes]
    options = {"ifod2": {"sift_factor": s.sift_factor, "nthreads": s.threads},
               "tckglobal": {"niter": s.tckglobal_niter, "nthreads": s.threads}}
    jobs += [{"kind": k, "n": n, "inputs": asdict(inputs), "options": options[k]}
             for n in s.baseline_sizes for k in options]
    runs = []
    for job in jobs:
        if job["kind"] != "gentract" and len(matmul[dtypes[0]]) == 1:  # again after GenTract
            for dt in dtypes:
                matmul[dt].append(matmul_gflops(s.matmul_size, s.threads, s.device, dt))
        job.update(seed=s.seed, workdir=str(out / "runs" / f"{job['kind']}_{job['n']}"))
        runs.append(run_worker(job, s.threads, flops))
        loads.append(os.getloadavg()[0])
    peak = max(m["wall"] for m in matmul["float32"])
    peak_cpu = max(m["cpu"] for m in matmul["float32"])
    own_peak = max(m["wall"] for m in matmul[precision])
    gen = [r for r in runs if r["tracker"] == "gentract" and r["status"] == "ok"]
    for r in gen:
        r["fraction_of_matmul_peak"] = r["achieved_gflops"] / peak
        r["fraction_of_precision_peak"] = r["achieved_gflops"] / own_peak
        r["gflop_per_cpu_s"] = r["sampling_gflop"] / r["cpu_s"]  # whole call: a lower bound
        r["cpu_fraction_of_matmul_peak"] = r["gflop_per_cpu_s"] / peak_cpu
    lo, hi = (min(gen, key=lambda r: r["n_requested"]), max(gen, key=lambda r: r["n_requested"])
              ) if len(gen) > 1 else (None, None)
    res = {
        "command": " ".join(argv) if argv else None, "settings": asdict(s),
        "model": {"path": str(model_path or "shipped"), "sha256": meta["sha256"],
                  "objective": meta["model_config"].get("objective")},
        "subject": inputs.cohort_root,
        "matmul": {"size": s.matmul_size, "threads": s.threads, "gflops": matmul,
                   "peak_dtype": "float32", "peak_gflops": peak, "peak_gflop_per_cpu_s": peak_cpu,
                   "sampling_precision": precision, "precision_peak_gflops": own_peak},
        "sampling_flops": flops, "runs": runs,
        "memory_scaling": lo and {"n": [lo["n_streamlines"], hi["n_streamlines"]],
                                  "peak_rss_mib": [lo["peak_rss_mib"], hi["peak_rss_mib"]],
                                  "ratio": hi["peak_rss_mib"] / lo["peak_rss_mib"]},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "loadavg_1min": [min(loads), max(loads)]},
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    (out / "speed.json").write_text(json.dumps(pb._jsonable(res), indent=2) + "\n")
    (out / "speed.md").write_text(markdown_report(res))
    pb._log(f"done in {res['total_seconds']:.0f} s: {out / 'speed.md'}")
    return res


def markdown_report(res: dict) -> str:
    s, mm, fl, m = res["settings"], res["matmul"], res["sampling_flops"], res["machine"]
    labels = dict(LABELS, ifod2=f"iFOD2 + SIFT (x{s['sift_factor']:g})",
                  tckglobal=f"tckglobal ({s['tckglobal_niter']:.0e} it.)")
    lines = ["# Inference speed and memory", "",
             f"One phantom subject ({s['voxel_size']:g} mm, seed {s['seed']}), {s['device']}, "
             f"{s['threads']} thread(s); {m['platform']}, {m['cpu_count']} CPUs, 1-min load "
             f"{m['loadavg_1min'][0]:.1f}-{m['loadavg_1min'][1]:.1f}. Model "
             f"{res['model']['sha256'][:12]} ({res['model']['objective']}).", "",
             "| method | N | wall s | CPU s | streamlines/s | streamlines/CPU-s | peak RSS MiB "
             "| context s | sampling s | write s |", "| --- |" + " ---: |" * 9]
    for r in res["runs"]:
        if r["status"] != "ok":
            lines.append(f"| {labels[r['tracker']]} | {r['n_requested']} | failed: "
                         f"{r['error'][:80]} |" + " |" * 7)
            continue
        ph = [f"{r['phases'][k]:.2f}" if "phases" in r else "" for k in
              ("context", "sampling", "write")]
        lines.append(f"| {labels[r['tracker']]} | {r['n_streamlines']} | {r['wall_s']:.1f} | "
                     f"{r['cpu_s']:.1f} | {r['streamlines_per_s']:.0f} | "
                     f"{r['streamlines_per_cpu_s']:.0f} | {r['peak_rss_mib']:.0f} | "
                     + " | ".join(ph) + " |")
    ms = res["memory_scaling"]
    if ms:
        lines += ["", f"GenTract peak memory vs N: {ms['peak_rss_mib'][0]:.0f} MiB at N = "
                      f"{ms['n'][0]}, {ms['peak_rss_mib'][1]:.0f} MiB at N = {ms['n'][1]} "
                      f"(ratio {ms['ratio']:.2f} for {ms['n'][1] / ms['n'][0]:g}x the "
                      "streamlines)."]
    mat = "; ".join(f"{dt} " + " / ".join(f"{v['wall']:.1f} ({v['cpu']:.1f} per CPU-s)"
                                          for v in vals) for dt, vals in mm["gflops"].items())
    lines += ["", "## Sampling throughput", "",
              f"Matmul {mm['size']} x {mm['size']} at {mm['threads']} thread(s), before / after "
              f"the GenTract runs: {mat} GFLOP/s; peak ({mm['peak_dtype']}) "
              f"{mm['peak_gflops']:.1f} GFLOP/s, {mm['peak_gflop_per_cpu_s']:.1f} per CPU-s; sampling "
              f"in {mm['sampling_precision']} (peak {mm['precision_peak_gflops']:.1f}). One "
              f"streamline: {fl['calls_per_streamline']} transformer calls x "
              f"{fl['flops_per_call'] / 1e6:.2f} MFLOP = {fl['flops_per_streamline'] / 1e6:.1f} "
              f"MFLOP ({fl['tokens']} context tokens, {fl['n_points']} points). Per CPU-s: over "
              "the whole call's CPU seconds (context and write included), a lower bound that "
              "other load on the machine does not lower.", "",
              "| N | batch size | sampling GFLOP | sampling s | GFLOP/s | of matmul peak | "
              f"GFLOP per CPU-s | of matmul per CPU-s | of {mm['sampling_precision']} peak |",
              "|" + " ---: |" * 9]
    lines += [f"| {r['n_streamlines']} | {r['batch_size']} | {r['sampling_gflop']:.2f} | "
              f"{r['phases']['sampling']:.2f} | {r['achieved_gflops']:.2f} | "
              f"{r['fraction_of_matmul_peak']:.1%} | {r['gflop_per_cpu_s']:.2f} | "
              f"{r['cpu_fraction_of_matmul_peak']:.1%} | {r['fraction_of_precision_peak']:.1%} |"
              for r in res["runs"]
              if r["tracker"] == "gentract" and r["status"] == "ok"]
    lines += ["", "CPU s: user + system of the tracker call (MRtrix3 programs included). Peak RSS: "
              "the worker's VmHWM (MRtrix3: at least its largest program's ru_maxrss and the "
              "process tree's sampled RSS). fODF estimation is preprocessing, not timed.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    from gentract_bids.config import PRECISIONS

    d = Settings()
    p = argparse.ArgumentParser(prog="inference_speed", description=(
        "GenTract sampling speed and memory on one phantom subject, next to MRtrix3 iFOD2 + SIFT "
        "and tckglobal."))
    p.add_argument("--out", type=Path, default=HERE / "results" / "speed")
    p.add_argument("--model", type=Path, help="GenTract checkpoint (default: the shipped one)")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 mm, 200/400 streamlines, "
                   "baselines at 200 (SIFT x2, tckglobal 1e6 iterations), 512 x 512 matmul")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="threads of torch, MRtrix3 and the matmul (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--sizes", type=int, nargs="+", help="GenTract N (default 10000 100000)")
    p.add_argument("--baseline-sizes", type=int, nargs="*",
                   help="iFOD2/tckglobal N (default 10000; give none to skip them)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, help="default: from available memory")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="GenTract's number format while sampling (default auto, as the app)")
    p.add_argument("--sift-factor", type=float, help=f"default {d.sift_factor:g} (--quick 2)")
    p.add_argument("--tckglobal-niter", type=float, help=f"default {d.tckglobal_niter:g}")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    kw = dict(QUICK) if args.quick else {}
    for key in ("sizes", "baseline_sizes", "sift_factor", "tckglobal_niter", "steps",
                "batch_size", "precision"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    if args.threads < 1 or min([*kw.get("sizes", [1]), *kw.get("baseline_sizes", [1])]) < 1:
        p.error("--threads, --sizes and --baseline-sizes must be positive")
    import torch

    auto = "cuda" if torch.cuda.is_available() else "cpu"
    settings = Settings(threads=args.threads, device=auto if args.device == "auto" else args.device,
                        **kw)
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    res = run_benchmark(settings, args.model, args.out, ["benchmarks/inference_speed.py", *argv])
    return 0 if all(r["status"] == "ok" for r in res["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
