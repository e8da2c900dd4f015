"""gentract-train on 2 processes (torchrun, gloo on CPU) trains what 1 process accumulating 2
micro-batches trains: same loss curves, same weights; it resumes a run the other left; rank 0 alone
writes the logs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from gentract_bids.cli.train import main
from gentract_bids.io.checkpoint import load_checkpoint
from gentract_bids.phantom.cohort import make_cohort
from gentract_bids.train import loop
from gentract_bids.train.loop import shard

STEPS = 4
# 6 SH coefficients (L_max 2), a 4 mm cohort on a 3.75 mm grid, a 2-layer transformer, and a VAE
# stage whose discriminator is active from its second step.
TINY = [
    "model.sh_order=2", "model.grid_shape=[40, 48, 40]", "model.grid_spacing=3.75",
    "model.vae.channels=[4, 8]", "model.vae.norm_num_groups=2", "model.vae.adv_warmup_steps=1",
    "model.encoder.channels=[8, 8]", "model.encoder.out_channels=2",
    "model.encoder.downsample=2", "model.encoder.norm_num_groups=2",
    "model.transformer.width=32", "model.transformer.depth=2", "model.transformer.heads=4",
    "model.transformer.n_points=16", "model.local.hidden=16", "data.rotations.per_subject=1",
    "data.template=none",
    "vae.steps_per_coefficient=3", "vae.patch_size=16", "vae.batch_size=2",
    "generator.batch_size=32", "generator.warmup_steps=2", f"generator.steps={STEPS}",
    "generator.validate_every=100", "generator.checkpoint_every=100",
]


def _args(cohort, run_dir, *extra):
    return [str(cohort), str(run_dir), "--config", "phantom.yaml", "--random-seed", "2",
            "--no-progress", "--threads", "1", "--cache-dir", str(run_dir.parent / "cache"),
            *extra, "--set", *TINY]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaleout") / "bids"
    make_cohort(root, n_subjects=1, voxel_size=4.0, seed=5, n_truth_streamlines=60)
    return root


def test_shards_are_disjoint_and_cover_the_pairs():
    pairs = list(range(7))
    parts = [shard(pairs, k, 3) for k in range(3)]
    assert parts == [[0, 3, 6], [1, 4, 0], [2, 5, 1]]  # padded by wrapping, like DistributedSampler
    assert shard(pairs, 0, 1) == pairs
    assert shard([5], 1, 2) == [5]


def _curves(run):
    vae = np.genfromtxt(run / "losses_vae.csv", delimiter=",", names=True)
    gen = np.genfromtxt(run / "losses_generator.csv", delimiter=",", names=True)
    return vae, gen


@pytest.mark.slow
def test_two_processes_match_one_accumulating_and_resume(cohort, tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_args(cohort, one, "--grad-accumulation", "2")) == 0

    # the run that 2 processes take over: 1 process stopped after the VAE of coefficient 2
    real_save = loop.save_state

    def stop_after_third(path, modules, optimizers, info):
        real_save(path, modules, optimizers, info)
        if info.get("done") == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_state", stop_after_third)
    assert main(_args(cohort, two, "--grad-accumulation", "2")) == 1
    monkeypatch.undo()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NIPYPE_NO_ET": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "gentract_bids.cli.train", *_args(cohort, two)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    assert "resuming the VAE stage at coefficient 3 of 6" in proc.stderr

    vae1, gen1 = _curves(one)
    vae2, gen2 = _curves(two)
    # rank 0 alone logs: one row per step, none repeated
    assert list(gen2["step"].astype(int)) == list(range(STEPS))
    assert len(vae2) == len(vae1) == 6 * 3
    assert np.all(vae1["disc"][1::3] > 0)  # the adversarial part was exercised
    for col in ("loss", "l1", "kl", "adv", "disc"):
        np.testing.assert_allclose(vae2[col], vae1[col], rtol=1e-4, atol=1e-6, err_msg=col)
    np.testing.assert_allclose(gen2["loss"], gen1["loss"], rtol=1e-4)
    a, _ = load_checkpoint(one / "checkpoint" / "gentract")
    b, meta = load_checkpoint(two / "checkpoint" / "gentract")
    assert meta["provenance"]["timings"]["processes"] == 2
    assert a.state_dict().keys() == b.state_dict().keys()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(vb, va, rtol=1e-4, atol=1e-5, msg=k)
    assert gen1["loss"][-1] < gen1["loss"][0]  # it trained: not a comparison of initial weights
