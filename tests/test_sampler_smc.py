"""Sequential Monte Carlo inside the flow sampler and the density-aware acceptance (issue 16):
systematic resampling, re-noised duplicates, a better supported batch, fewer crowded cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_inference import tiny_ckpt, zscored_sh  # noqa: F401 (fixtures)
from test_support import AFFINE, _line, _tube_volume

from gentract_bids.model.flow import FlowMatchingObjective, smc_resample, systematic_resample
from gentract_bids.model.gentract import CoordinateScaler
from gentract_bids.model.support import DensityAcceptance, FodSupport, SupportWeight

INSIDE = torch.as_tensor(_line([-20, 0, 0], [20, 0, 0]), dtype=torch.float32)  # in the tube
BESIDE = torch.as_tensor(_line([-20, 14, 0], [20, 14, 0]), dtype=torch.float32)  # no fibres


@pytest.fixture(scope="module")
def weight():
    sup = FodSupport(*_tube_volume(), AFFINE)
    # bounds -1, 1 and data scale 1: model coordinates are millimetres
    return sup, SupportWeight(sup, CoordinateScaler([-1] * 3, [1] * 3), 1.0)


def two_lines(x_t, t1000):
    """The exact rectified flow to one of two lines: the one the particle's mean y is nearer,
    in the tube or beside it (half of the noise goes to each)."""
    t = (t1000 / 1000.0).view(-1, 1, 1)
    inside = x_t[..., 1].mean(1) < 7.0 * t.view(-1)
    target = torch.where(inside[:, None, None], INSIDE, BESIDE)
    return (target - x_t) / (1 - t).clamp(min=1e-3)


def test_systematic_resampling_copies_in_proportion_to_the_weights():
    gen = torch.Generator().manual_seed(0)
    idx = systematic_resample(torch.tensor([0.0, 1.0, 0.0, 3.0]), gen)
    assert idx.tolist() == [1, 3, 3, 3]
    idx = systematic_resample(torch.rand(1000, generator=gen) ** 4, gen)
    assert (idx[1:] >= idx[:-1]).all() and len(idx) == 1000


def test_duplicates_are_renoised_on_the_path_to_their_prediction():
    x = torch.randn((8, 12, 3), generator=torch.Generator().manual_seed(1))
    target = INSIDE

    def fn(x_t, t1000):
        return (target - x_t) / (1 - t1000.view(-1, 1, 1) / 1000.0)

    only_first = lambda x1: torch.tensor([1.0] + [0.0] * 7)  # noqa: E731
    out = smc_resample(fn, x, 0.5, only_first, torch.Generator().manual_seed(2))
    assert torch.equal(out[0], x[0])  # the first copy is the particle itself
    # the others: fresh noise on the straight path to the same predicted streamline, x1_hat
    assert len({tuple(r.flatten().tolist()) for r in out}) == 8
    x1_hat = out + 0.5 * fn(out, torch.full((8,), 500.0))
    torch.testing.assert_close(x1_hat, target.expand(8, -1, -1), rtol=0, atol=1e-5)
    assert torch.equal(smc_resample(fn, x, 0.5, lambda x1: torch.zeros(8)), x)  # no weight


def test_smc_raises_the_support_of_a_batch(weight):
    sup, w = weight
    flow = FlowMatchingObjective()

    def run(smc, seed=0):
        gen = torch.Generator().manual_seed(seed)
        return flow.sample(two_lines, (64, 12, 3), steps=10, generator=gen, smc=smc)

    plain, smc = run(None), run(((0.3, 0.6), w))
    kept = {k: len(sup.filter(v.double().numpy())) for k, v in (("plain", plain), ("smc", smc))}
    assert 16 < kept["plain"] < 48  # about half of the noise flows to the unsupported line
    assert kept["smc"] >= 60 and kept["smc"] > kept["plain"] + 20
    def supported_fraction(x):  # the weight is eps + f^power
        return ((w(x).numpy() - w.eps) ** (1 / w.power)).mean()

    assert supported_fraction(smc) > supported_fraction(plain) + 0.3
    torch.testing.assert_close(run(((0.3, 0.6), w)), smc, rtol=0, atol=0)  # seeded
    assert not torch.equal(run(((0.3, 0.6), w), seed=1), smc)


def _pool(n, rng):
    """n candidates and which are strays: 80 % in 10 endpoint-pair cells with shares
    proportional to 1/k (a few crowded bundle cores), 20 % strays with both ends anywhere in a
    2 m cube (cells seen about once)."""
    k = np.arange(1, 11)
    a = np.zeros((n, 3))
    a[:, 1] = 40.0 * rng.choice(k, n, p=(1 / k) / (1 / k).sum())  # cell centres
    b = a + [40.0, 0, 0]
    stray = rng.random(n) < 0.2
    a[stray], b[stray] = rng.uniform(-1000, 1000, (2, stray.sum(), 3))
    return np.stack([a + rng.normal(0, 1, (n, 3)), b + rng.normal(0, 1, (n, 3))], 1) + 4.0, stray


def test_density_acceptance_spreads_the_cores_and_keeps_its_rate_as_n_grows():
    rng = np.random.default_rng(0)
    on, drawn, strays, at = DensityAcceptance(2.0, seed=3), 0, [], {}
    while on.total < 8000:
        x, stray = _pool(200, rng)
        keep = on.accept(x, limit=8000 - on.total)
        drawn += len(x)
        strays += list(stray[keep])
        at.update({m: drawn for m in (1000, 2000, 6000, 8000) if m not in at and on.total >= m})
    assert on.total == 8000
    off = DensityAcceptance(1.0)  # no density acceptance: the first 8000 candidates
    for cell in off.cells(_pool(8000, np.random.default_rng(0))[0]):
        off.counts[cell] = off.counts.get(cell, 0) + 1
    assert off.max_count() > 2000 and on.max_count() < off.max_count() / 2  # the cores thin out
    # scale-free: the rate kept from 6000 to 8000 is near that from 1000 to 2000 (here 0.48 and
    # 0.56). The first reference, the mean count of the occupied cells, kept 0.21 of the
    # candidates and 98 % strays after 6000: every stray cell lowered it.
    early, late = 1000 / (at[2000] - at[1000]), 2000 / (at[8000] - at[6000])
    assert early > 0.4 and late > 0.75 * early
    assert np.mean(strays[6000:]) < 0.6
    x, _ = _pool(300, rng)
    np.testing.assert_array_equal(DensityAcceptance(1.0, seed=3).accept(x),
                                  DensityAcceptance(1.0, seed=3).accept(x))
    with pytest.raises(ValueError):
        DensityAcceptance(0.0)


def test_the_density_step_weighs_the_smc_resampling_too(weight):
    """With ``density``, a particle's SMC weight is its support times the probability the
    density step would keep it now: a crowded end cell weighs less, the histogram unchanged."""
    sup, plain = weight
    dens = DensityAcceptance(2.0)
    short = _line([-12, 0, 0], [12, 0, 0])  # in the tube too, its ends in other 8 mm cells
    rng = np.random.default_rng(0)
    spread = np.stack([rng.uniform(-400, -300, (30, 3)), rng.uniform(300, 400, (30, 3))], 1)
    crowd = np.repeat(INSIDE.numpy()[None].astype(np.float64), 30, 0)[:, [0, -1]]
    assert dens.accept(np.concatenate([crowd, spread])).all()
    m = dens.sum_sq / dens.total  # (30^2 + 30) / 60 = 15.5
    x = torch.stack([INSIDE, torch.as_tensor(short, dtype=torch.float32)])
    w = dens.weights(x.numpy().astype(np.float64))
    np.testing.assert_allclose(w, [((m + 1) / 31) ** 2, 1.0])
    assert dens.total == 60 and dens.max_count() == 30  # weighing adds nothing
    both = SupportWeight(sup, CoordinateScaler([-1] * 3, [1] * 3), 1.0, density=dens)
    np.testing.assert_allclose(plain(x).numpy(), 1.0 + plain.eps)  # equally supported
    np.testing.assert_allclose(both(x).numpy(), both.eps + w)


def test_sample_tractogram_runs_smc_and_density_acceptance(tiny_ckpt, zscored_sh, tmp_path,
                                                            caplog):
    from test_support import _half_space_support

    from gentract_bids.io.tractogram import load_tractogram
    from gentract_bids.model.inference import load_model, sh_tensor, sample_tractogram

    model, meta = load_model(tiny_ckpt)
    support, _, affine, mask = _half_space_support(meta)
    with torch.inference_mode():
        context = model.encode_context(sh_tensor(model, zscored_sh))

    def run(name, **kw):
        info = sample_tractogram(model, meta, zscored_sh, tmp_path / name, n_streamlines=40,
                                 ref_affine=affine, ref_shape=mask.shape, seed=5,
                                 batch_size=64, support=support, context=context, **kw)
        return np.stack(load_tractogram(tmp_path / name)[0]), info

    plain, info = run("a.trx")
    assert info["SequentialMonteCarlo"] is None and info["DensityAcceptance"] is None
    smc, info_s = run("s.trx", smc_times=(0.3, 0.6))
    assert info_s["SequentialMonteCarlo"]["Times"] == [0.3, 0.6] and len(smc) == 40
    assert not np.allclose(smc, plain)
    np.testing.assert_array_equal(run("s2.trx", smc_times=(0.3, 0.6))[0], smc)
    dens, info_d = run("d.trx", density_strength=2.0)
    assert info_d["DensityAcceptance"]["Strength"] == 2.0 and len(dens) == 40
    assert 0 < info_d["DensityAcceptance"]["MaxCellCount"] <= 40
    assert info["TimeSchedule"] == "uniform"
    with caplog.at_level("INFO", logger="gentract"):
        late, info_l = run("l.trx", time_schedule="late")
    assert info_l["TimeSchedule"] == "late" and not np.allclose(late, plain)
    assert "on the late time grid" in caplog.text  # the log names the grid, as the sidecar does


def test_short_memory_under_smc_warns_and_names_the_batch_that_reproduces_it(
        tiny_ckpt, zscored_sh, tmp_path, caplog, monkeypatch):
    """SMC resamples within a batch, so a batch shrunk by free memory changes the streamlines:
    the log says so and names the --batch-size that gives this run again."""
    from test_support import _half_space_support

    from gentract_bids.io.tractogram import load_tractogram
    from gentract_bids.model import inference

    model, meta = inference.load_model(tiny_ckpt)
    support, _, affine, mask = _half_space_support(meta)

    def run(name, **kw):
        info = inference.sample_tractogram(
            model, meta, zscored_sh, tmp_path / name, n_streamlines=200, ref_affine=affine,
            ref_shape=mask.shape, seed=5, support=support, smc_times=(0.5,), **kw)
        return np.stack(load_tractogram(tmp_path / name)[0]), info

    roomy, info = run("roomy.trx")
    assert "shrinks the sampling batch" not in caplog.text
    monkeypatch.setattr(inference, "_available_bytes", lambda device: 1 << 20)
    with caplog.at_level("WARNING", logger="gentract"):
        short, info_s = run("short.trx")
    assert info_s["BatchSize"] == 64 < info["BatchSize"]
    assert f"from {info['BatchSize']} to 64" in caplog.text and "--batch-size 64" in caplog.text
    assert not (roomy.shape == short.shape and np.array_equal(roomy, short))
    monkeypatch.undo()
    again, _ = run("again.trx", batch_size=64)
    np.testing.assert_array_equal(again, short)


def test_the_options_reach_the_config_and_need_the_filter(tmp_path):
    from gentract_bids.cli.parser import parse_args
    from gentract_bids.errors import UsageError

    # the tube model carries no sampler defaults of its own: the app's apply
    args = [str(tmp_path), str(tmp_path / "out"), "participant", "--model", "gentract_phantom"]
    model = parse_args(args).model  # the defaults with the support filter, off without it
    assert model.smc_times == [0.5] and model.density_strength == 2.0
    model = parse_args(args + ["--support-threshold", "0"]).model
    assert model.smc_times == [] and model.density_strength == 0.0
    model = parse_args(args + ["--smc-times", "0", "--density-acceptance", "0"]).model
    assert model.smc_times == [] and model.density_strength == 0.0
    model = parse_args(args + ["--smc-times", "0.5", "--density-acceptance", "2"]).model
    assert model.smc_times == [0.5] and model.density_strength == 2.0
    assert model.time_schedule == "uniform"
    assert parse_args(args + ["--time-schedule", "late"]).model.time_schedule == "late"
    for bad in (["--smc-times", "1.5"], ["--density-acceptance", "-1"],
                ["--smc-times", "0.5", "--support-threshold", "0"]):
        with pytest.raises(UsageError):
            parse_args(args + bad)
    with pytest.raises(SystemExit):
        parse_args(args + ["--time-schedule", "linear"])


def test_the_density_replay_benchmark_keeps_what_the_app_keeps():
    """benchmarks/density_replay.py replays the app's reference on a drawn pool: it must keep
    exactly the candidates DensityAcceptance keeps (same cells, order and uniforms)."""
    from pathlib import Path

    from helpers import load_script

    replay = load_script(Path(__file__).resolve().parents[1] / "benchmarks"
                         / "density_replay.py").replay
    x, _ = _pool(3000, np.random.default_rng(5))
    app = DensityAcceptance(2.0, seed=0)
    kept = np.flatnonzero(app.accept(x))
    np.testing.assert_array_equal(replay(app.cells(x), "weighted", 2.0, seed=0), kept)
    assert len(replay(app.cells(x), "mean", 2.0, seed=0)) < len(kept)  # the first reference
    assert len(replay(app.cells(x), "off", 2.0)) == len(x)
