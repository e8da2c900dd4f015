"""GenTract inference: sampling to files, seeds, checkpoint checks, and the BIDS-App workflow."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bids.layout import parse_file_entities

from gentract_bids.cli.run import main
from gentract_bids.errors import EX_DATAERR, EX_USAGE
from gentract_bids.io.bids import build_path, io_spec
from gentract_bids.io.checkpoint import save_checkpoint
from gentract_bids.io.tractogram import load_tractogram
from gentract_bids.model.encoder import EncoderConfig
from gentract_bids.model.gentract import GenTract, GenTractConfig
from gentract_bids.model.local import LocalConfig
from gentract_bids.model.inference import (SHIPPED_MODEL, ModelMismatchError, check_compatible,
                                           load_model, sample_tractogram)
from gentract_bids.model.transformer import TransformerConfig
from gentract_bids.model.vae import VAEConfig
from gentract_bids.phantom.cohort import make_cohort

torch.set_num_threads(1)
META = {
    "zscore": {"mean": [0.0] * 28, "std": [1.0] * 28},
    "coord_bounds": {"lo": [-60.0, -70.0, -50.0], "hi": [60.0, 70.0, 50.0]},
    "provenance": {"software": "gentract", "recipe": "tiny-test", "random_seed": 0},
}
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def tiny_model(objective="flow", **kw) -> GenTract:
    """A tiny GenTract on the real canonical grid (80, 96, 80) unless told otherwise."""
    cfg = GenTractConfig(objective=objective,
                         vae=VAEConfig(channels=(2, 4, 4), norm_num_groups=2),
                         encoder=EncoderConfig(channels=(4, 4), out_channels=1, emb_dim=4,
                                               norm_num_groups=2, downsample=4),
                         transformer=TransformerConfig(width=16, depth=1, heads=2, n_points=8),
                         **kw)
    torch.manual_seed(0)
    return GenTract(cfg)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    # local fODF features on, as in the shipped recipe: the app's path passes the volume too
    save_checkpoint(path, tiny_model(local=LocalConfig(enabled=True, offsets_mm=(2.0,), hidden=8)),
                    META)
    return path


@pytest.fixture(scope="module")
def zscored_sh():
    return np.random.default_rng(0).normal(size=(80, 96, 80, 28)).astype(np.float32)


def _sample(ckpt, sh, path, seed, n=300, **kw):
    model, meta = load_model(ckpt)
    info = sample_tractogram(model, meta, sh, path, n_streamlines=n, ref_affine=AFFINE,
                             ref_shape=(60, 70, 50), seed=seed, batch_size=128, **kw)
    return np.stack(load_tractogram(path)[0]), info


def test_same_seed_same_streamlines_and_formats_agree(tiny_ckpt, zscored_sh, tmp_path):
    a, info = _sample(tiny_ckpt, zscored_sh, tmp_path / "a.trx", seed=7)
    b, _ = _sample(tiny_ckpt, zscored_sh, tmp_path / "b.trx", seed=7)
    c, _ = _sample(tiny_ckpt, zscored_sh, tmp_path / "c.trx", seed=8)
    assert a.shape == (300, 8, 3)  # n streamlines of the model's p points, batches of 128
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0  # another seed gives other streamlines (mm)
    for fmt in ("tck", "trk"):
        d, _ = _sample(tiny_ckpt, zscored_sh, tmp_path / f"d.{fmt}", seed=7)
        np.testing.assert_allclose(d, a, atol=1e-3)
    assert not list(tmp_path.glob(".*"))  # no temporary layout or partial file is left behind
    assert info["Sampler"] == "flow" and info["Steps"] == 10 and info["RandomSeed"] == 7
    assert info["NumberOfStreamlines"] == 300 and info["Model"]["SHA256"]
    assert info["StreamlinesPerSecond"] > 0 and info["Timings"]["SamplingSeconds"] > 0


def test_context_changes_the_streamlines(tiny_ckpt, zscored_sh, tmp_path):
    a, _ = _sample(tiny_ckpt, zscored_sh, tmp_path / "a.trx", seed=1)
    b, _ = _sample(tiny_ckpt, -zscored_sh, tmp_path / "b.trx", seed=1)
    assert np.abs(a - b).max() > 1e-3


def test_mismatched_checkpoints_are_refused(tiny_ckpt, zscored_sh, tmp_path):
    _, meta = load_model(tiny_ckpt)
    check_compatible(meta, sh_order=6, grid_spacing=1.875, grid_shape=(80, 96, 80))
    with pytest.raises(ModelMismatchError, match="SH order 6.*order 8"):
        check_compatible(meta, sh_order=8)
    with pytest.raises(ModelMismatchError, match="grid spacing"):
        check_compatible(meta, sh_order=6, grid_spacing=2.0)
    with pytest.raises(ModelMismatchError, match="--sampler flow"):
        check_compatible(meta, sh_order=6, sampler="ddim")
    with pytest.raises(ModelMismatchError, match="legacy"):
        check_compatible({**meta, "legacy_basis": True}, sh_order=6)
    with pytest.raises(ModelMismatchError, match="shape"):  # a volume not on the model's grid
        _sample(tiny_ckpt, zscored_sh[:40], tmp_path / "x.trx", seed=1)


def test_shipped_models_load_and_fit_their_runs():
    model, meta = load_model()  # the default: human-anatomy phantoms in MNI space
    assert SHIPPED_MODEL.name == "gentract_human_phantom"
    assert SHIPPED_MODEL.with_suffix(".safetensors").stat().st_size < 20 * 2**20
    check_compatible(meta, sh_order=6, grid_spacing=1.875, grid_shape=(80, 112, 96))
    assert meta["template"]["space"] == "MNI152NLin6Asym"
    assert meta["provenance"]["train_subjects"] and meta["zscore"]["mean"]
    _, tube = load_model("gentract_phantom")  # the tube model stays selectable by name
    check_compatible(tube, sh_order=6, grid_spacing=1.875, grid_shape=(80, 96, 80))
    assert tube["template"]["space"] == "phantomTubes"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("gentract_run")
    return make_cohort(root / "bids", n_subjects=1, voxel_size=3.0, seed=11,
                       n_truth_streamlines=50)


def test_cli_refuses_a_mismatched_model_before_writing(phantom, tmp_path, capsys):
    path = tmp_path / "ckpt" / "grid2mm"
    save_checkpoint(path, tiny_model(grid_spacing=2.0), META)
    out = tmp_path / "out"
    code = main([str(phantom), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--model", str(path)])
    assert code == EX_USAGE
    err = capsys.readouterr().err
    assert "does not fit this run" in err and "grid spacing is 2.0 mm" in err
    assert not out.exists()
    (tmp_path / "ckpt" / "grid2mm.safetensors").write_bytes(b"tampered")
    code = main([str(phantom), str(out), "participant", "--skip-bids-validation",
                 "--model", str(path)])
    assert code == EX_DATAERR and "checksum" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_gentract_workflow_writes_named_scored_tractograms(phantom, tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    n = 200
    args = [str(phantom), str(out), "participant", "-w", str(tmp_path / "work"),
            "--skip-bids-validation", "--model", str(tiny_ckpt), "--n-streamlines", str(n),
            "--steps", "4", "--random-seed", "3", "--min-bundle-streamlines", "2",
            "--support-threshold", "0",  # an untrained model: its random polylines are unsupported
            "--step-size", "0"]  # the model's 8 points as sampled (resampling: test_outputs_step)
    assert main(args) == 0
    dwi = out / "sub-01" / "dwi"
    trx = dwi / "sub-01_space-dwi_model-gentract_streamlines.trx"
    spec = {k: io_spec()[k] for k in ("name", "entities")}
    # every output is named as io_spec.json builds it from its own entities
    paths = sorted(out.glob("sub-01/**/*gentract*"))
    assert len(paths) > 10
    for path in paths:
        ents = parse_file_entities(str(path), config=[spec])
        assert build_path(ents) == str(path.relative_to(out)), path
    streamlines, _ = load_tractogram(trx)
    assert len(streamlines) == n and len(streamlines[0]) == 8
    side = json.loads(trx.with_suffix(".json").read_text())
    assert side["Sampler"] == "flow" and side["Steps"] == 4 and side["Device"] == "cpu"
    assert side["NumberOfStreamlines"] == n and side["Timings"]["SamplingSeconds"] > 0
    assert side["SupportFilter"] is None and side["NumberSampled"] == n
    assert side["Model"]["SHA256"] == side["ModelChecksum"]
    assert side["RandomSeed"] == 3 and side["Evaluation"]
    metrics = json.loads((dwi / "sub-01_space-dwi_desc-eval_model-gentract_metrics.json")
                         .read_text())
    assert metrics["mode"] == "groundtruth" and metrics["n_streamlines"] == n
    # the canonical fODF the model read was z-scored with the checkpoint's statistics
    canon = json.loads((dwi / "sub-01_space-gentract_desc-zscored_model-csd_param-fod_dwimap"
                               ".json").read_text())
    assert canon["ZScore"]["Statistics"].startswith("model:")
    # a second run with the same seed gives the same streamlines
    out2 = tmp_path / "out2"
    args2 = [a if a != str(out) else str(out2) for a in args]
    args2[args2.index("-w") + 1] = str(tmp_path / "work2")
    assert main(args2) == 0
    again, _ = load_tractogram(out2 / trx.relative_to(out))
    np.testing.assert_array_equal(np.stack(again), np.stack(streamlines))


def test_auto_batch_size_never_exceeds_the_request(monkeypatch):
    """Issue 18.6: 500 requested streamlines gave batches of 8192 (4x slower, 2x the memory)."""
    from gentract_bids.model import inference

    model = tiny_model()
    monkeypatch.setattr(inference, "_available_bytes", lambda device: 64 << 30)
    cap = inference.CPU_BATCH_CAP
    assert inference.auto_batch_size(model) == cap == 1024  # memory alone: the CPU cap
    assert inference.auto_batch_size(model, n_streamlines=500) == 512
    assert inference.auto_batch_size(model, n_streamlines=500, oversampling=4.0) == cap  # not 2048
    assert inference.auto_batch_size(model, n_streamlines=10) == 64  # the floor
    assert inference.auto_batch_size(model, n_streamlines=10**6, oversampling=4.0) == cap
    assert inference.auto_batch_size(model, "cuda", n_streamlines=10**6) == 65536  # GPUs: larger
    monkeypatch.setattr(inference, "_available_bytes", lambda device: 1 << 20)
    assert inference.auto_batch_size(model, n_streamlines=10**6) == 64  # memory still bounds it


def test_batch_size_does_not_change_the_streamlines(tiny_ckpt, zscored_sh, tmp_path):
    model, meta = load_model(tiny_ckpt)
    runs = []
    for b in (None, 64, 256):
        info = sample_tractogram(model, meta, zscored_sh, tmp_path / f"{b}.trx", n_streamlines=300,
                                 ref_affine=AFFINE, ref_shape=(60, 70, 50), seed=5, batch_size=b,
                                 steps=3)
        runs.append(np.stack(load_tractogram(tmp_path / f"{b}.trx")[0]))
        if b is None:
            assert info["BatchSize"] == 512  # the request, rounded up, not free memory
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])


def test_a_long_batch_prints_progress_while_it_is_drawn(tiny_ckpt, zscored_sh, tmp_path,
                                                        monkeypatch, caplog):
    """A human-phantom run drew its first 8192-streamline batch for 8 minutes without a line:
    within a batch, every network evaluation may log (at most every PROGRESS_SECONDS), and
    the streamlines are the same with or without these lines."""
    import logging
    import re

    from gentract_bids.model import inference

    quiet, _ = _sample(tiny_ckpt, zscored_sh, tmp_path / "a.trx", seed=3, n=100, steps=4)
    monkeypatch.setattr(inference, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="gentract.inference"):
        loud, _ = _sample(tiny_ckpt, zscored_sh, tmp_path / "b.trx", seed=3, n=100, steps=4)
    calls = [int(m.group(1)) for m in re.finditer(
        r"drawing a batch: network evaluation (\d+) of about 4", caplog.text)]
    assert calls == [1, 2, 3, 4]  # one batch of 128 covers the 100 asked
    np.testing.assert_array_equal(quiet, loud)


@pytest.mark.slow
def test_participant_run_prints_stages_and_sampling_progress_once(phantom, tiny_ckpt, tmp_path):
    """Issue 18.2: a run says what it is doing (stages with timings, sampling progress from the
    MultiProc worker) and -vv prints every line once. A fresh process, as a user runs it (pytest's
    own root handlers would hide a duplicating ``logging.basicConfig``)."""
    import collections
    import os
    import re
    import subprocess
    import sys

    args = [str(phantom), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
            "--skip-bids-validation", "--model", str(tiny_ckpt), "--n-streamlines", "200",
            "--steps", "2", "--min-bundle-streamlines", "2", "--support-threshold", "0",
            "--nprocs", "2", "-vv"]
    proc = subprocess.run([sys.executable, "-m", "gentract_bids.cli.run", *args],
                          capture_output=True, text=True, env={**os.environ, "NIPYPE_NO_ET": "1"},
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    text = "\n".join(lines)
    for stage in ("fODF", "tracking (gentract)", "evaluation (gentract)", "outputs"):
        assert f"gentract INFO: sub-01: {stage} started" in text, stage
        assert re.search(rf"sub-01: {re.escape(stage)} done in \d+\.\d s", text), stage
    # live progress from the sampling node, which ran in a worker process, and its summary
    assert "gentract.inference INFO: sampling: 200/200 streamlines kept (100 %)" in text
    assert "GenTract kept 200 of 200 streamlines drawn" in text
    assert "node gentract_wf.sub_01_wf.fodf_wf.csd finished" in text  # -v: debug lines
    assert "nipype.workflow INFO" in text  # -vv: nipype's own lines
    # each record printed by one handler: nipype's never in the app's format, nothing twice
    assert not re.search(r"nipype\.\w+ \w+: \S", text)
    ours = [ln for ln in lines if re.match(r"\d\d:\d\d:\d\d gentract", ln)]
    twice = [ln for ln, k in collections.Counter(ours).items() if k > 1]
    assert not twice, twice


def test_precision_is_recorded_and_changes_only_the_rounding(tiny_ckpt, zscored_sh, tmp_path):
    """--precision bfloat16 runs the network under autocast: the streamlines move by rounding
    only, the same seed gives the same ones, and the sidecar says which format ran."""
    kw = dict(seed=3, n=200, steps=3)
    f32, i32 = _sample(tiny_ckpt, zscored_sh, tmp_path / "f.trx", precision="float32", **kw)
    b16, i16 = _sample(tiny_ckpt, zscored_sh, tmp_path / "b.trx", precision="bfloat16", **kw)
    again, _ = _sample(tiny_ckpt, zscored_sh, tmp_path / "c.trx", precision="bfloat16", **kw)
    assert (i32["Precision"], i16["Precision"]) == ("float32", "bfloat16")
    assert not np.array_equal(f32, b16)  # the autocast acts
    err = np.linalg.norm(f32 - b16, axis=-1)
    print(f"bf16 vs fp32: mean {err.mean():.3f} mm, max {err.max():.3f} mm")
    assert err.mean() < 0.01 * np.ptp(f32)  # the same streamlines, up to rounding
    np.testing.assert_array_equal(again, b16)


def test_auto_precision_is_bfloat16_only_where_the_hardware_has_it(tmp_path, monkeypatch):
    from gentract_bids.errors import UsageError
    from gentract_bids.model import inference

    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert inference.cpu_has_native_bf16(str(with_bf16))
    assert not inference.cpu_has_native_bf16(str(without))
    assert not inference.cpu_has_native_bf16(str(tmp_path / "missing"))
    for native in (True, False):
        monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda native=native: native)
        assert inference.resolve_precision("cpu") == ("bfloat16" if native else "float32")
        assert inference.resolve_precision("cuda") == "bfloat16"
        assert inference.resolve_precision("cpu", "float32") == "float32"
        assert inference.resolve_precision("cpu", "bfloat16") == "bfloat16"
    with pytest.raises(UsageError):
        inference.resolve_precision("cpu", "float16")
