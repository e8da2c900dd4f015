"""gentract-train: a tiny model learns one phantom subject; resume; run-directory contents."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dipy.tracking.streamline import set_number_of_points
from dipy.tracking.distances import bundles_distances_mdf

from gentract_bids.cli.train import load_recipe, main, model_config
from gentract_bids.io.checkpoint import load_checkpoint
from gentract_bids.io.tractogram import load_tractogram
from gentract_bids.model.gentract import CoordinateScaler, GenTract
from gentract_bids.phantom.cohort import make_cohort

SEED = 3
# A tiny recipe on a coarse grid (3.75 mm, 40 x 48 x 40): minutes -> seconds.
TINY = [
    "model.grid_shape=[40, 48, 40]", "model.grid_spacing=3.75",
    "model.vae.channels=[4, 8]", "model.vae.norm_num_groups=2", "model.vae.adv_warmup_steps=2",
    "model.encoder.channels=[8, 8]", "model.encoder.out_channels=2",
    "model.encoder.downsample=2", "model.encoder.norm_num_groups=2",
    "model.transformer.width=48", "model.transformer.depth=2", "model.transformer.heads=4",
    "model.transformer.n_points=16",
    # the objective on raw [-1, 1] coordinates: with phantom.yaml's data_scale 4 the untrained twin
    # samples 4x closer to the centre, too weak a reference (data_scale: tests/test_model.py)
    "model.data_scale=1.0",
    "data.rotations.per_subject=1",
    "vae.steps_per_coefficient=2", "vae.patch_size=16", "vae.batch_size=2",
    "generator.batch_size=64", "generator.lr=2.0e-3", "generator.warmup_steps=20",
    "generator.validate_every=100", "generator.checkpoint_every=100",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "bids"
    make_cohort(root, n_subjects=1, voxel_size=3.0, seed=5, n_truth_streamlines=60)
    return root


def _args(cohort, run_dir, objective, steps, extra=()):
    return [str(cohort), str(run_dir), "--config", "phantom.yaml", "--random-seed", str(SEED),
            "--no-progress", "--threads", "1", "--cache-dir", str(run_dir.parent / "cache"),
            "--set", *TINY, f"model.objective={objective}", f"generator.steps={steps}", *extra]


@pytest.fixture(scope="module")
def vae_stage(cohort, tmp_path_factory):
    """The VAE stage, run once (``--stage vae``); generator tests start from a copy of it."""
    run = tmp_path_factory.mktemp("vae") / "run"
    assert main(_args(cohort, run, "diffusion", 1) + ["--stage", "vae"]) == 0
    rows = np.genfromtxt(run / "losses_vae.csv", delimiter=",", names=True)
    assert sorted(set(rows["coefficient"].astype(int))) == list(range(28))
    return run


def _train(cohort, run_dir, objective: str, steps: int, extra=(), vae_run=None):
    """``--stage generator`` in ``run_dir`` on top of the module's VAE stage."""
    import shutil

    (run_dir / "state").mkdir(parents=True, exist_ok=True)
    for f in (vae_run / "state").glob("vae.*"):
        shutil.copy(f, run_dir / "state" / f.name)
    cache = run_dir.parent / "cache"
    if not cache.exists():
        shutil.copytree(vae_run.parent / "cache", cache)
    assert main(_args(cohort, run_dir, objective, steps, extra) + ["--stage", "generator"]) == 0


def _mean_mdf(model, sh_z, scaler, truth, n=200, seed=0):
    """Mean over sampled streamlines of the MDF (mm) to the nearest ground-truth streamline."""
    p = model.config.n_points
    vol = torch.from_numpy(sh_z)  # phantom.yaml's local fODF features sample it at every step
    with torch.inference_mode():
        ctx = model.encode_context(vol)
        unit = model.sample(ctx, n, steps=10, generator=torch.Generator().manual_seed(seed),
                            volume=vol)
    mm = scaler.to_mm(unit.numpy().astype(np.float64))
    ref = set_number_of_points([s.astype(np.float64) for s in truth], p)
    d = bundles_distances_mdf([s for s in mm], ref)
    return float(d.min(axis=1).mean())


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["diffusion", "flow"])
def test_tiny_model_learns_one_subject(cohort, vae_stage, tmp_path, objective):
    run = tmp_path / "run"
    _train(cohort, run, objective, steps=300, vae_run=vae_stage)
    for name in ("config.yaml", "split.json", "losses_generator.csv",
                 "losses.png", "summary.json", "checkpoint/gentract.safetensors",
                 "checkpoint/gentract.json"):
        assert (run / name).exists(), name
    split = json.loads((run / "split.json").read_text())
    assert split["train"] == ["01"]

    # the training loss falls by at least half (means of the first and last 40 steps)
    rows = np.genfromtxt(run / "losses_generator.csv", delimiter=",", names=True)
    first, last = rows["loss"][:40].mean(), rows["loss"][-40:].mean()
    print(f"{objective}: training loss {first:.3f} -> {last:.3f}")
    assert last < 0.5 * first

    # sampled streamlines are far closer to the truth than those of the untrained twin
    model, meta = load_checkpoint(run / "checkpoint" / "gentract")
    assert meta["model_config"]["objective"] == objective
    torch.manual_seed(SEED)  # the CLI seeds torch this way before building the model
    twin = GenTract(model_config(load_recipe("phantom.yaml", [*TINY, f"model.objective={objective}"])))
    assert model.uses_volume and twin.uses_volume  # the recipe's local features are learned too
    twin.set_coordinate_bounds(meta["coord_bounds"]["lo"], meta["coord_bounds"]["hi"])
    cache = np.load(next((tmp_path / "cache").glob("sub-01*_fod.npz")))
    from gentract_bids.fodf.grid import zscore

    z = zscore(cache["sh"], meta["zscore"]["mean"], meta["zscore"]["std"], cache["mask"])
    sh_z = np.ascontiguousarray(np.moveaxis(z, -1, 0))
    scaler = CoordinateScaler(meta["coord_bounds"]["lo"], meta["coord_bounds"]["hi"])
    truth, _ = load_tractogram(next(cohort.glob("derivatives/phantom-truth/sub-01/dwi/*.trx")))
    trained = _mean_mdf(model, sh_z, scaler, truth)
    untrained = _mean_mdf(twin.eval(), sh_z, scaler, truth)
    print(f"{objective}: mean MDF to the truth {trained:.1f} mm (untrained twin {untrained:.1f} mm)")
    assert trained < 0.5 * untrained


@pytest.mark.slow
def test_interrupted_run_resumes_identically(cohort, vae_stage, tmp_path):
    """A run stopped after its first checkpoint and restarted ends with the same weights."""
    from gentract_bids.train import loop

    full, cut = tmp_path / "full", tmp_path / "cut"
    extra = ["generator.checkpoint_every=10", "generator.validate_every=10"]
    _train(cohort, full, "diffusion", steps=20, extra=extra, vae_run=vae_stage)

    real = loop.train_generator

    def interrupted(*args, **kwargs):
        def stop(step):
            if step == 10:
                raise KeyboardInterrupt
        kwargs["on_checkpoint"] = stop
        return real(*args, **kwargs)

    loop.train_generator = interrupted
    try:
        with pytest.raises(AssertionError):  # main() returns 1: interrupted
            _train(cohort, cut, "diffusion", steps=20, extra=extra, vae_run=vae_stage)
    finally:
        loop.train_generator = real
    state = json.loads((cut / "state" / "generator.json").read_text())
    assert state["info"]["step"] == 10
    _train(cohort, cut, "diffusion", steps=20, extra=extra, vae_run=vae_stage)  # resumes
    a, _ = load_checkpoint(full / "checkpoint" / "gentract")
    b, _ = load_checkpoint(cut / "checkpoint" / "gentract")
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k
    rows = np.genfromtxt(cut / "losses_generator.csv", delimiter=",", names=True)
    assert list(rows["step"].astype(int)) == list(range(20))


def test_changed_recipe_in_same_run_dir_is_refused(cohort, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("recipe: {name: other}\n")
    code = main([str(cohort), str(run), "--config", "phantom.yaml", "--no-progress"])
    assert code == 64
    assert "different configuration" in capsys.readouterr().err


def test_unknown_recipe_key_is_refused(cohort, tmp_path, capsys):
    code = main([str(cohort), str(tmp_path / "r"), "--set", "generator.nope=1"])
    assert code == 64
    assert "unknown key" in capsys.readouterr().err
