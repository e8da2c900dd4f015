"""The phantom benchmark (benchmarks/phantom_benchmark.py): its fODF noise model, the tckglobal
rule under fODF noise, the --model hook, and a real ``--quick`` run (one 3 mm phantom subject, all
five trackers, clean + fodnoise) whose tables, JSON and plot are checked for sane numbers."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "phantom_benchmark.py"


@pytest.fixture(scope="module")
def pb():
    return load_script(SCRIPT)


def test_fod_noise_is_signed_rician(pb):
    rng = np.random.default_rng(0)
    sigma = 0.005
    sh = np.zeros((40, 40, 40, 28), np.float32)
    sh[..., 0] = 0.3  # large positive coefficient
    sh[..., 1] = -0.2  # large negative coefficient (c2 stays 0)
    mask = np.zeros((40, 40, 40), bool)
    mask[:, :, :30] = True
    out = pb.add_fod_noise(sh, sigma, mask, rng)
    assert np.array_equal(out[~mask], sh[~mask])  # outside the mask: untouched
    c0, c1, c2 = out[mask][:, 0], out[mask][:, 1], out[mask][:, 2]
    assert np.all(c0 > 0) and np.all(c1 < 0)  # signs kept
    # |c| >> sigma: ~Gaussian around c with sd sigma
    assert abs(c0.mean() - 0.3) < 2e-4 and abs(c0.std() - sigma) < 3e-4
    assert abs(c1.mean() + 0.2) < 2e-4 and abs(c1.std() - sigma) < 3e-4
    # c = 0: Rician floor, |c'| has mean sigma * sqrt(pi / 2), random sign
    assert abs(np.abs(c2).mean() - sigma * np.sqrt(np.pi / 2)) < 2e-4
    assert 0.45 < (c2 > 0).mean() < 0.55


def test_fod_sigma_mapping(pb):
    s = pb.fod_noise_sigmas(0.005, dipy_c00=0.30, mrtrix_c00=0.27)
    assert s["dipy"] == 0.005
    assert s["mrtrix"] == pytest.approx(0.005 * 0.27 / 0.30)
    assert s["relative_to_wm_c00"] == pytest.approx(0.005 / 0.30)
    wm = np.zeros((4, 4, 4))
    wm[:2] = 1.0
    sh = np.zeros((4, 4, 4, 28))
    sh[..., 0] = np.where(wm > 0, -0.25, 9.0)
    assert pb.median_wm_c00(sh, wm) == pytest.approx(0.25)


def test_conditions_and_tckglobal_rule(pb):
    s = pb.Settings()
    conds = pb.make_conditions(s)
    assert [c.name for c in conds] == list(pb.CONDITION_ORDER)
    by = {c.name: c for c in conds}
    assert by["clean"].cohort == by["fodnoise"].cohort and by["fodnoise"].fod_noise
    assert by["lr_noise"].cohort.voxel_size == 3.0 and by["lr_noise"].fod_noise
    assert by["lowsnr"].cohort.snr == 10.0 and not by["lowsnr"].fod_noise
    assert by["ood"].cohort.geometry.endswith("isbi_challenge_2013.json")
    st = {c.name: pb.dwi_tracker_status("tckglobal", c, conds) for c in conds}
    assert st == {"clean": "run", "fodnoise": "n/a", "lowsnr": "run",
                  "lr_noise": "run-dwi-only", "ood": "run"}
    assert all(pb.dwi_tracker_status("ifod2", c, conds) == "run" for c in conds)
    assert set(pb.BASELINES) == {"ifod2", "sdstream", "tckglobal", "dipy-det", "dipy-prob"}
    assert set(pb.TRACKERS) == set(pb.BASELINES) | set(pb.GENTRACT_TRACKERS)
    with pytest.raises(ValueError, match="unknown condition"):
        pb.make_conditions(s, ["clean", "noisy"])


def test_human_anatomy_conditions(pb, tmp_path):
    """--anatomy human: the same conditions on human-anatomy cohorts of their own names."""
    s = pb.Settings(anatomy="human")
    conds = pb.make_conditions(s, pb.HUMAN_CONDITIONS)
    assert [c.name for c in conds] == ["clean", "fodnoise", "lr_noise"]
    assert {c.cohort.anatomy for c in conds} == {"human"}
    assert [c.cohort.name for c in conds] == ["human-base", "human-base", "human-lr"]
    with pytest.raises(ValueError, match="ood"):
        pb.make_conditions(s, ["clean", "ood"])
    with pytest.raises(SystemExit):
        pb.main(["--anatomy", "human", "--conditions", "ood", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_gentract_tracker_refuses_a_missing_checkpoint(pb, tmp_path):
    """``--trackers gentract`` with a checkpoint that does not exist stops before any work."""
    from gentract_bids.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        pb.main(["--model", str(tmp_path / "m.safetensors"), "--trackers", "gentract",
                 "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_gentract_trackers_get_the_app_sampler_options(pb, tmp_path, monkeypatch):
    """The gentract trackers sample with the app's defaults (guidance, SMC, density acceptance,
    the connectivity prior as asked), and ``gentract-alone`` without the support filter."""
    import phantom.runners as runners

    captured = {}
    monkeypatch.setattr(pb, "run_benchmark",
                        lambda settings, conditions, trackers, out, **kw: captured.update(kw))
    pb.main(["--anatomy", "human", "--trackers", "gentract", "gentract-alone",
             "--connectivity-prior", "on", "--out", str(tmp_path / "o")])
    opts = captured["gentract_options"]
    from gentract_bids.model.inference import sampler_defaults
    from gentract_bids.model.support import DEFAULT_THRESHOLD
    assert Path(opts["model"]).name.startswith("gentract_human_phantom")
    # the human model's own defaults (its checkpoint JSON), not the app-wide ones
    own = sampler_defaults(opts["model"])
    assert own["smc_times"] == [0.8]
    assert opts["support_threshold"] == DEFAULT_THRESHOLD and opts["connectivity_prior"] is True
    assert opts["guidance_scale"] == own["guidance_scale"]
    assert opts["smc_times"] == list(own["smc_times"])
    assert opts["density_strength"] == own["density_acceptance"]

    calls = []
    monkeypatch.setattr(runners, "track_gentract", lambda *a, **kw: calls.append(kw) or [])
    for name in ("gentract", "gentract-alone"):
        runners.TRACKERS[name](None, None, 10, 0, tmp_path, **opts)
    assert calls[0]["support_threshold"] == DEFAULT_THRESHOLD
    assert calls[1]["support_threshold"] is None  # the model alone
    assert calls[0]["context"] == calls[1]["context"] == "own"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tckgen") is None, reason="MRtrix3 not installed")
def test_quick_run(tmp_path):
    out = tmp_path / "bench"
    env = dict(os.environ, NIPYPE_NO_ET="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    tables = (out / "tables.md").read_text()
    png = (out / "precision_by_condition.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert res["settings"]["n_subjects"] == 1 and res["held_out_seed"] == 1000
    assert [c["name"] for c in res["conditions"]] == ["clean", "fodnoise"]
    runs = {(r["condition"], r["tracker"]): r for r in res["runs"]}
    assert len(runs) == 10
    assert runs["fodnoise", "tckglobal"]["status"] == "n/a"
    for (cond, tracker), r in runs.items():
        if r["status"] == "n/a":
            continue
        assert r["status"] == "run", r.get("error")
        assert 0.0 <= r["precision"] <= 1.0
        assert 0 <= r["valid_bundles"] <= r["n_bundles"] == 22
        for k in ("mean_overlap", "mean_f1", "mean_overreach"):
            assert r[k] >= 0.0
        assert r["mean_overlap"] <= 1.0 and r["mean_f1"] <= 1.0
        assert r["seconds"] > 0 and r["peak_mb"] > 10
        assert 0 < r["n_streamlines"] <= 300
    # SD_Stream + SIFT on this phantom: well above chance (measured ~0.6-0.7)
    for cond in ("clean", "fodnoise"):
        assert runs[cond, "sdstream"]["precision"] > 0.3
        assert runs[cond, "sdstream"]["valid_bundles"] >= 5
    # the fODF noise reached the fODF trackers, with the documented sigma mapping
    sig = runs["fodnoise", "ifod2"]["fod_sigma"]
    assert sig["dipy"] == 0.005 and 0.001 < sig["mrtrix"] < 0.02
    assert runs["clean", "ifod2"]["fod_sigma"] == {"dipy": 0.0, "mrtrix": 0.0}
    assert runs["fodnoise", "ifod2"]["input"].endswith("mrtrix_wmfod_noise.nii.gz")
    assert runs["fodnoise", "dipy-prob"]["input"].endswith("dipy_csd_sh_noise.nii.gz")
    assert runs["clean", "dipy-prob"]["input"].endswith("dipy_csd_sh.nii.gz")
    assert runs["clean", "tckglobal"]["input"].endswith("_dwi.nii.gz")
    # tables: one per condition, every tracker listed, numbers as in the JSON
    assert tables.count("| tracker | precision % | VB |") == 2
    for label in ("iFOD2 + SIFT", "SD_Stream + SIFT", "tckglobal", "dipy det", "dipy prob"):
        assert tables.count(f"| {label}") == 2
    p = res["summary"]["clean"]["sdstream"]["precision"][0] * 100
    assert f"| SD_Stream + SIFT | {p:.1f} ± 0.0 |" in tables


# ----------------------------------------------------------------------------- inference speed
SPEED = REPO / "benchmarks" / "inference_speed.py"


def _load_speed():
    return load_script(SPEED)


def tiny_speed_model(objective="flow", **kw):
    """A tiny GenTract on a coarse grid of the canonical extent (150 x 180 x 150 mm)."""
    import torch

    from gentract_bids.model.encoder import EncoderConfig
    from gentract_bids.model.gentract import GenTract, GenTractConfig
    from gentract_bids.model.transformer import TransformerConfig
    from gentract_bids.model.vae import VAEConfig

    torch.manual_seed(0)
    return GenTract(GenTractConfig(
        grid_shape=(40, 48, 40), grid_spacing=3.75, objective=objective, steps=3,
        vae=VAEConfig(channels=(4, 8), norm_num_groups=2),
        encoder=EncoderConfig(channels=(8, 8), out_channels=2, emb_dim=8, downsample=2,
                              norm_num_groups=2),
        transformer=TransformerConfig(width=32, depth=2, heads=4, dropout=0.0, ff_mult=4,
                                      n_points=16), **kw)).eval()


def test_sampling_flops_match_the_transformer_and_count_every_call():
    """FlopCounterMode's count of one sampling call equals the transformer's analytic FLOPs:
    attention included (the CPU kernel gets a formula), the context K/V projection excluded (it
    is cached once per subject); calls per streamline = steps (2 x steps for the midpoint ODE)."""
    import torch

    torch.set_num_threads(1)
    speed = _load_speed()
    model = tiny_speed_model()
    fl = speed.sampling_flops(model)
    cfg = model.config.transformer
    n, p, depth, f = cfg.width, cfg.n_points, cfg.depth, cfg.ff_mult
    tokens = math.prod(model.token_grid(model.config.grid_shape))
    assert fl["tokens"] == tokens == 10 * 12 * 10
    layer = (12 + 4 * f) * n * n * p + 4 * p * p * n + 4 * p * tokens * n  # linears + attention
    expected = 2 * 3 * n * p + 2 * 8 * n * n + depth * layer + 2 * n * 3 * p  # in, time MLP, out
    assert fl["flops_per_call"] == expected
    assert fl["calls_per_streamline"] == 3 and fl["flops_per_streamline"] == 3 * expected
    assert speed.sampling_flops(model, steps=5)["calls_per_streamline"] == 5
    mid = tiny_speed_model(flow_method="midpoint")
    assert speed.sampling_flops(mid)["calls_per_streamline"] == 6
    # local fODF features add their MLP on the 7-point stencil of the 28 coefficients
    from gentract_bids.model.local import LocalConfig

    loc = tiny_speed_model(local=LocalConfig(enabled=True, offsets_mm=(2.0,), hidden=16))
    loc.set_coordinate_bounds([-70.0] * 3, [70.0] * 3)
    assert speed.sampling_flops(loc)["flops_per_call"] == expected + 2 * p * (7 * 28 * 16 + 16 * n)


@pytest.mark.skipif(shutil.which("tckgen") is None, reason="MRtrix3 not installed")
def test_quick_speed_run(tmp_path):
    """``--quick`` end to end with a tiny checkpoint: GenTract at 200 and 400 streamlines, iFOD2 +
    SIFT and tckglobal at 200, each in its own worker; table and JSON with positive numbers."""
    from gentract_bids.io.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "model" / "tiny", tiny_speed_model(), {
        "zscore": {"mean": [0.05] + [0.0] * 27, "std": [0.1] * 28},
        "coord_bounds": {"lo": [-70.0, -85.0, -70.0], "hi": [70.0, 85.0, 70.0]},
        "provenance": {"recipe": "test"}})
    out = tmp_path / "speed"
    env = dict(os.environ, NIPYPE_NO_ET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SPEED), "--quick", "--model", str(ckpt), "--out",
                           str(out), "--threads", "1", "--device", "cpu"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "speed.json").read_text())
    md = (out / "speed.md").read_text()
    runs = {(r["tracker"], r["n_requested"]): r for r in res["runs"]}
    assert set(runs) == {("gentract", 200), ("gentract", 400), ("ifod2", 200),
                         ("tckglobal", 200)}
    for r in runs.values():
        assert r["status"] == "ok", r.get("error")
        assert 0 < r["n_streamlines"] <= r["n_requested"]
        for k in ("wall_s", "cpu_s", "process_cpu_s", "streamlines_per_s",
                  "streamlines_per_cpu_s"):
            assert r[k] > 0, k
        assert r["peak_rss_mib"] > 20 and r["process_cpu_s"] >= 0.9 * r["cpu_s"]
    for n in (200, 400):
        g = runs["gentract", n]
        assert g["n_streamlines"] == n and all(v > 0 for v in g["phases"].values())
        assert g["sampling_gflop"] == pytest.approx(
            res["sampling_flops"]["flops_per_streamline"] * n / 1e9)
        assert 0 < g["fraction_of_matmul_peak"] < 1 and 0 < g["cpu_fraction_of_matmul_peak"] < 1
        assert g["gflop_per_cpu_s"] == pytest.approx(g["sampling_gflop"] / g["cpu_s"])
        assert g["sidecar"]["Steps"] == 3 and g["file_mib"] > 0
        # the sampling's own format (bfloat16 on CPUs that have it): its matmul peak beside
        assert g["sidecar"]["Precision"] == res["matmul"]["sampling_precision"]
        assert g["fraction_of_precision_peak"] == pytest.approx(
            g["achieved_gflops"] / res["matmul"]["precision_peak_gflops"])
        assert not list((out / "runs" / f"gentract_{n}").glob("*.trx"))  # removed after the run
        assert f"| GenTract | {n} | {g['wall_s']:.1f} | {g['cpu_s']:.1f} |" in md
        assert (f"| {g['achieved_gflops']:.2f} | {g['fraction_of_matmul_peak']:.1%} | "
                f"{g['gflop_per_cpu_s']:.2f} | {g['cpu_fraction_of_matmul_peak']:.1%} |") in md
    assert runs["ifod2", 200]["info"]["NGenerated"] == 400
    assert runs["tckglobal", 200]["options"]["niter"] == 1e6
    assert "| iFOD2 + SIFT (x2) | " in md and "| tckglobal (1e+06 it.) | " in md
    mm = res["matmul"]
    assert mm["size"] == 512 and len(mm["gflops"]["float32"]) == 2
    assert mm["peak_gflops"] == max(m["wall"] for m in mm["gflops"]["float32"]) > 0
    assert mm["peak_gflop_per_cpu_s"] == max(m["cpu"] for m in mm["gflops"]["float32"]) > 0
    ms = res["memory_scaling"]
    assert ms["n"] == [200, 400] and ms["ratio"] == pytest.approx(
        runs["gentract", 400]["peak_rss_mib"] / runs["gentract", 200]["peak_rss_mib"])
    assert f"(ratio {ms['ratio']:.2f} for 2x the streamlines)" in md


def test_time_to_n_searches_the_request_until_n_are_valid():
    """benchmarks/time_to_n.py's search: grow the request by N / valid until a run has N valid
    streamlines; a measured precision (with its margin) sizes the first try."""
    ttn = load_script(REPO / "benchmarks" / "time_to_n.py")
    asked = []

    def run(tracker, request):  # a tracker of precision 0.8 that costs 1 CPU s per streamline
        asked.append(request)
        return {"written": request, "valid": int(request * 0.8), "cpu_s": float(request)}

    r = ttn.time_to(1000, "t", 1.0, run, max_tries=3)
    assert asked == [1000, 1275] and r["reached"] and r["final"]["valid"] == 1020
    assert r["search_cpu_s"] == 2275.0
    asked.clear()
    r = ttn.time_to(1000, "t", 0.8, run, max_tries=3, margin=1.03)
    assert asked == [1288] and r["reached"] and len(r["tries"]) == 1
    asked.clear()
    r = ttn.time_to(1000, "t", 1.0, run, max_tries=1)
    assert asked == [1000] and not r["reached"]


def test_context_swap_splits_the_anatomy_into_two_disjoint_hemispheres():
    """benchmarks/context_swap.py's two datasets: the packaged anatomy's left and right bundles,
    31 each, disjoint, nothing of the midline (CC, CA, MCP) in either."""
    swap = load_script(REPO / "benchmarks" / "context_swap.py")
    left, right = swap.hemisphere_bundles("left"), swap.hemisphere_bundles("right")
    assert len(left) == len(right) == 31 and not set(left) & set(right)
    assert {b.replace("_left", "_right") for b in left} == set(right)
    assert not any(b.startswith(("CC", "CA", "MCP")) for b in left + right)
