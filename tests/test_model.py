"""The GenTract networks, objectives and samplers on tiny configurations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.networks.nets import AutoencoderKL, PatchDiscriminator

from gentract_bids.model.diffusion import DiffusionObjective, ddim_step
from gentract_bids.model.encoder import ConditionedEncoder, EncoderConfig, FiLMResBlock
from gentract_bids.model.flow import FlowMatchingObjective, integrate_ode, time_grid
from gentract_bids.model.gentract import CoordinateScaler, GenTract, GenTractConfig
from gentract_bids.model.transformer import (ContextCache, StreamlineTransformer,
                                             TransformerConfig)
from gentract_bids.model.vae import (CoefficientVAEs, VAEConfig, build_discriminator, build_vae,
                                     discriminator_loss, vae_step_losses)

torch.set_num_threads(1)
TINY_VAE = VAEConfig(channels=(4, 8, 8), norm_num_groups=4, disc_channels=4, adv_warmup_steps=1)
TINY_ENC = EncoderConfig(channels=(8, 8), out_channels=2, emb_dim=8, norm_num_groups=4)
TINY_TF = TransformerConfig(width=32, depth=2, heads=4, dropout=0.0, n_points=16)


def tiny_config(**kw) -> GenTractConfig:
    return GenTractConfig(grid_shape=(16, 16, 16), vae=TINY_VAE, encoder=TINY_ENC,
                          transformer=TINY_TF, **kw)


def straight_lines(n: int, p: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` straight segments of ``p`` evenly spaced points inside [-0.8, 0.8]^3."""
    a = torch.rand((n, 1, 3), generator=generator) * 1.6 - 0.8
    b = torch.rand((n, 1, 3), generator=generator) * 1.6 - 0.8
    s = torch.linspace(0, 1, p)[None, :, None]
    return (1 - s) * a + s * b


# ----------------------------------------------------------------------------- shapes
def test_vae_shapes_padding_and_losses():
    vae = build_vae(TINY_VAE)
    assert isinstance(vae, AutoencoderKL)
    assert isinstance(build_discriminator(TINY_VAE), PatchDiscriminator)
    assert TINY_VAE.factor == 4 and VAEConfig().factor == 4
    vaes = CoefficientVAEs(3, TINY_VAE).eval()
    sh = torch.randn(2, 3, 16, 16, 16)
    z = vaes.encode(sh)
    assert z.shape == (2, 3, 4, 4, 4, 4)
    # posterior mean: deterministic, and each coefficient goes through its own VAE
    assert torch.equal(z, vaes.encode(sh))
    # (encode runs channels-last: the same sums in another order, ~1e-6 apart)
    assert torch.allclose(z[:, 1], vaes.vaes[1].encode(sh[:, 1:2])[0], atol=1e-5)
    assert not torch.allclose(z[:, 1], vaes.vaes[0].encode(sh[:, 1:2])[0], atol=1e-3)
    # 15^3 is zero-padded at the far end to 16^3: same latents as explicit padding
    odd = sh[..., :15, :15, :15]
    padded = torch.nn.functional.pad(odd, (0, 1, 0, 1, 0, 1))
    assert vaes.encode(odd).shape == (2, 3, 4, 4, 4, 4)
    assert torch.equal(vaes.encode(odd), vaes.encode(padded))
    with pytest.raises(ValueError):
        vaes.encode(torch.randn(1, 2, 16, 16, 16))

    disc = build_discriminator(TINY_VAE)
    x = torch.randn(2, 1, 16, 16, 16)
    before = vae_step_losses(vae, disc, x, step=0, cfg=TINY_VAE)  # adversarial warm-up
    assert float(before["adv"]) == 0.0 and "perceptual" not in before
    losses = vae_step_losses(vae, disc, x, step=5, cfg=TINY_VAE)
    assert {"loss", "l1", "kl", "adv", "reconstruction"} <= set(losses)
    assert losses["reconstruction"].shape == x.shape
    assert all(losses[k].ndim == 0 for k in ("loss", "l1", "kl", "adv"))
    assert float(losses["adv"]) > 0
    expected = losses["l1"] + TINY_VAE.kl_weight * losses["kl"] + TINY_VAE.adv_weight * losses["adv"]
    assert torch.allclose(losses["loss"].detach(), expected, rtol=1e-5)
    losses["loss"].backward()
    assert vae.encoder.blocks[0].conv.weight.grad.abs().sum() > 0
    d = discriminator_loss(disc, x, losses["reconstruction"])
    assert d.ndim == 0 and d > 0
    d.backward()


@pytest.mark.parametrize("downsample, grid", [(2, (3, 3, 2)), (4, (2, 2, 1))])
def test_encoder_shapes_and_index_conditioning(downsample, grid):
    cfg = EncoderConfig(channels=(8, 16), out_channels=3, emb_dim=8, downsample=downsample,
                        norm_num_groups=4)
    enc = ConditionedEncoder(5, 4, cfg)
    z = torch.randn(2, 5, 4, 6, 5, 4)
    out = enc(z)
    assert enc.grid_shape((6, 5, 4)) == grid
    assert out.shape == (2, math.prod(grid), 5 * 3)
    blocks = [m for m in enc.modules() if isinstance(m, FiLMResBlock)]
    assert len(blocks) == 1 + int(math.log2(downsample))  # one FiLM block per resolution
    # every block is modulated by the index: with the FiLM maps active, identical latents give
    # different features for different coefficients; without them, identical features
    same = z[:, :1].expand(-1, 5, -1, -1, -1, -1).contiguous()
    feats = enc(same).reshape(2, -1, 5, 3)
    assert torch.allclose(feats[:, :, 0], feats[:, :, 4])  # FiLM starts at zero (identity)
    for b in blocks:
        torch.nn.init.normal_(b.film.weight, std=0.5)
    feats = enc(same).reshape(2, -1, 5, 3)
    assert not torch.allclose(feats[:, :, 0], feats[:, :, 4], atol=1e-4)
    # feature layout: coefficient i occupies channels i*C_c ... i*C_c + C_c - 1
    one = enc(z[:, 2:3].expand(-1, 5, -1, -1, -1, -1).contiguous()).reshape(2, -1, 5, 3)
    assert torch.allclose(enc(z).reshape(2, -1, 5, 3)[:, :, 2], one[:, :, 2], atol=1e-5)


def test_transformer_shapes_cache_and_positions():
    torch.manual_seed(0)
    tf = StreamlineTransformer(TINY_TF, context_dim=12).eval()
    grid = (3, 2, 2)
    ctx1 = torch.randn(1, 12, 12)
    x = torch.randn(5, 16, 3)
    t = torch.tensor([0.0, 10.0, 500.0, 999.0, 3.0])
    raw = tf(x, t, ctx1, grid_shape=grid)
    assert raw.shape == (5, 16, 3)
    cache = tf.precompute_context(ctx1, grid)
    assert isinstance(cache, ContextCache) and cache.batch == 1 and cache.tokens == 12
    k, _ = cache.layer(0, 5)
    assert k.shape[0] == 1  # one context serves the batch: its queries attend in one call
    with pytest.raises(ValueError):
        tf.precompute_context(ctx1.expand(2, -1, -1), grid).layer(0, 5)
    assert torch.allclose(tf(x, t, cache), raw, atol=1e-6)
    # a batch-B context (one attention call per streamline) equals the shared batch-1 context
    assert torch.allclose(tf(x, t, ctx1.expand(5, -1, -1), grid_shape=grid), raw, atol=1e-6)
    # per-sample timesteps matter
    assert not torch.allclose(tf(x, torch.zeros(5), cache), raw)
    # the 3-D positional encoding: moving features to other grid positions changes the output
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(tf(x, t, ctx1[:, perm], grid_shape=grid), raw, atol=1e-4)
    with pytest.raises(ValueError):
        tf(x, t, ctx1, grid_shape=(2, 2, 2))  # 8 positions for 12 tokens


def test_gentract_shapes_and_config_roundtrip():
    cfg = tiny_config()
    assert GenTractConfig.from_dict(cfg.to_dict()) == cfg
    assert GenTractConfig.from_dict({"sh_order": 4}).n_coeffs == 15
    with pytest.raises(ValueError):
        GenTractConfig(sh_order=6, n_coeffs=15)
    torch.manual_seed(0)
    model = GenTract(cfg)
    assert model.context_grid_shape == (2, 2, 2)  # 16 -> VAE 4x -> 4 -> E^c 2x -> 2
    ctx = model.encode_context(torch.randn(28, 16, 16, 16))
    assert ctx.shape == (1, 8, 28 * 2)
    ctx2 = model.encode_context(torch.randn(2, 28, 8, 8, 8))  # (B, m, ...) and another grid
    assert ctx2.shape == (2, 1, 56) and model.context_grid_shape == (1, 1, 1)
    ctx = model.encode_context(torch.randn(28, 16, 16, 16))
    x1 = straight_lines(6, 16, torch.Generator().manual_seed(0))
    loss = model.generator_loss(ctx, x1, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()  # gradients reach E^c through the context
    assert model.encoder.stem.weight.grad.abs().sum() > 0
    out = model.sample(ctx.detach(), 7, batch_size=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (7, 16, 3) and out.abs().max() <= 1.0
    sizes = [b.shape[0] for b in model.sample_batches(ctx.detach(), 7, batch_size=3, steps=2)]
    assert sizes == [3, 3, 1]
    assert model.training  # sampling restores the module's mode
    with pytest.raises(ValueError):
        model.sample(ctx.detach(), 2, sampler="flow")


def test_sampling_is_deterministic_for_a_seed():
    torch.manual_seed(0)
    for objective in ("diffusion", "flow"):
        model = GenTract(tiny_config(objective=objective, flow_method="midpoint"))
        ctx = model.encode_context(torch.randn(28, 16, 16, 16)).detach()
        a = model.sample(ctx, 6, steps=4, batch_size=4, generator=torch.Generator().manual_seed(3))
        b = model.sample(ctx, 6, steps=4, batch_size=4, generator=torch.Generator().manual_seed(3))
        c = model.sample(ctx, 6, steps=4, batch_size=4, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)


def test_coordinate_scaler_on_phantom_streamlines():
    from gentract_bids.phantom.cohort import make_subject

    subj = make_subject(1, seed=0, voxel_size=3.0, n_truth_streamlines=5)
    lines = [s for bundle in subj.streamlines.values() for s in bundle]
    sc = CoordinateScaler.from_points(lines, margin_mm=2.0)
    allpts = np.concatenate(lines)
    assert np.allclose(sc.lo, allpts.min(0) - 2.0) and np.allclose(sc.hi, allpts.max(0) + 2.0)
    unit = sc.to_unit(allpts)
    assert unit.min() > -1 and unit.max() < 1
    assert np.allclose(sc.to_mm(unit), allpts, atol=1e-4)
    tens = sc.to_unit(torch.from_numpy(allpts.astype(np.float32)))
    assert isinstance(tens, torch.Tensor) and np.allclose(tens.numpy(), unit, atol=1e-5)
    assert np.allclose(sc.to_mm(np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])), [sc.lo, sc.hi])
    assert CoordinateScaler.from_dict(sc.to_dict()).to_dict() == sc.to_dict()


# ----------------------------------------------------------------------------- diffusion
def test_beta_schedule_scaled_linear():
    obj = DiffusionObjective()
    betas = obj.betas.double()
    assert len(betas) == 1000
    assert betas[0].item() == pytest.approx(0.0015, rel=1e-6)
    assert betas[-1].item() == pytest.approx(0.0205, rel=1e-6)
    k = torch.arange(1000, dtype=torch.float64)
    expected = (math.sqrt(0.0015) + k / 999 * (math.sqrt(0.0205) - math.sqrt(0.0015))) ** 2
    assert torch.allclose(betas, expected, rtol=1e-5)
    # not simply linear in beta: the midpoint is below the linear midpoint
    assert betas[500] < (0.0015 + 0.0205) / 2 - 1e-4
    acp = obj.alphas_cumprod.double()
    assert torch.all(acp[1:] < acp[:-1])
    assert torch.allclose(acp, torch.cumprod(1 - expected, 0), rtol=1e-4)
    assert torch.allclose(obj.sample_scheduler.alphas_cumprod, obj.alphas_cumprod)


def fake_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed ε-"model": depends on the sample and the timestep."""
    return 0.5 * x + 0.1 * torch.sin(t / 100.0)[:, None, None]


def test_ddim_against_hand_computed_steps():
    obj = DiffusionObjective(clip_sample=False)
    assert obj.timesteps(10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert obj.timesteps(3) == [999, 500, 0]
    shape = (2, 4, 3)
    out = obj.sample(fake_eps, shape, steps=3, generator=torch.Generator().manual_seed(7))
    # by hand, in float64: x0 = (x_t - sqrt(1-a_t) e) / sqrt(a_t); x_prev = sqrt(a_p) x0 + sqrt(1-a_p) e
    acp = obj.alphas_cumprod.double()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7)).double()
    for t, t_prev in ((999, 500), (500, 0), (0, None)):
        e = fake_eps(x, torch.full((2,), float(t), dtype=torch.float64))
        a_t = acp[t]
        a_p = acp[t_prev] if t_prev is not None else torch.tensor(1.0, dtype=torch.float64)
        x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
        x = a_p.sqrt() * x0 + (1 - a_p).sqrt() * e
    assert torch.allclose(out.double(), x, atol=1e-4, rtol=1e-4)
    # the final output is the x0 predicted at t = 0
    assert torch.allclose(x, x0)


def test_ddim_step_matches_monai_scheduler_step():
    obj = DiffusionObjective(clip_sample=True)
    sch = obj.sample_scheduler
    sch.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(3, 8, 3, generator=g), torch.randn(3, 8, 3, generator=g)
    # MONAI's step goes from t to t - 1000 // 10 (here 555 -> 455), with x0 clamped to [-1, 1]
    ref_prev, ref_x0 = sch.step(eps, 555, x)
    prev, x0 = ddim_step(x, eps, sch.alphas_cumprod[555], sch.alphas_cumprod[455], clip=(-1, 1))
    assert torch.allclose(prev, ref_prev, atol=1e-5) and torch.allclose(x0, ref_x0, atol=1e-5)
    ref_prev, _ = sch.step(eps, 0, x)  # last step: previous alpha is 1 -> the x0 prediction
    prev, x0 = ddim_step(x, eps, sch.alphas_cumprod[0], 1.0, clip=(-1, 1))
    assert torch.allclose(prev, ref_prev, atol=1e-6) and torch.allclose(prev, x0)


def test_diffusion_loss_is_mse_on_the_noise():
    obj = DiffusionObjective()
    x0 = torch.rand(4, 8, 3) * 2 - 1
    seen = {}

    def oracle(x_t, t):  # recovers the true noise from x_t and x0
        seen["t"] = t
        acp = obj.alphas_cumprod[t.long()][:, None, None]
        return (x_t - acp.sqrt() * x0) / (1 - acp).sqrt()

    assert obj.loss(oracle, x0, generator=torch.Generator().manual_seed(0)) < 1e-8
    assert seen["t"].dtype == torch.float32 and 0 <= seen["t"].min() and seen["t"].max() <= 999
    zero = obj.loss(lambda x, t: torch.zeros_like(x), x0, generator=torch.Generator().manual_seed(0))
    assert 0.3 < float(zero) < 3.0  # E[eps^2] = 1


# ----------------------------------------------------------------------------- flow matching
def test_flow_ode_constant_field_and_convergence_orders():
    x = torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(0)).double()
    c = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    assert torch.allclose(integrate_ode(lambda y, t: c.expand_as(y), x, 1, "euler"), x + c)
    assert torch.allclose(integrate_ode(lambda y, t: c.expand_as(y), x, 7, "midpoint"), x + c)
    # v = a - x: x(1) = a + (x(0) - a) e^-1
    a = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    exact = a + (x - a) * math.exp(-1)
    errs = {m: [float((integrate_ode(lambda y, t: a - y, x, n, m) - exact).abs().max())
                for n in (8, 16, 32)] for m in ("euler", "midpoint")}
    for e1, e2 in zip(errs["euler"], errs["euler"][1:]):
        assert 1.8 < e1 / e2 < 2.2  # first order
    for e1, e2 in zip(errs["midpoint"], errs["midpoint"][1:]):
        assert 3.6 < e1 / e2 < 4.4  # second order
    assert errs["midpoint"][0] < errs["euler"][-1]


def test_flow_objective_sample_and_loss():
    obj = FlowMatchingObjective()
    times = []

    def const(x, t):
        times.append(t[0].item())
        return torch.full_like(x, 0.25)

    out = obj.sample(const, (2, 4, 3), steps=10, generator=torch.Generator().manual_seed(1))
    start = torch.randn((2, 4, 3), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, start + 0.25, atol=1e-6)
    assert times == pytest.approx([100.0 * k for k in range(10)])  # t·1000, t from 0 to 0.9
    times.clear()
    obj.sample(const, (1, 4, 3), steps=2, method="midpoint")
    assert times == pytest.approx([0.0, 250.0, 500.0, 750.0])
    x1 = torch.rand(4, 8, 3) * 2 - 1
    g = torch.Generator().manual_seed(0)
    t_draw = torch.rand((4,), generator=g)
    x0 = torch.randn(x1.shape, generator=g)

    def oracle(x_t, t):  # the true velocity, knowing the noise the loss draws
        assert torch.allclose(t, t_draw * 1000)
        tt = t_draw[:, None, None]
        assert torch.allclose(x_t, (1 - tt) * x0 + tt * x1, atol=1e-6)
        return x1 - x0

    assert obj.loss(oracle, x1, generator=torch.Generator().manual_seed(0)) < 1e-10
    with pytest.raises(ValueError):
        FlowMatchingObjective("rk4")


def test_time_schedules_place_the_steps_and_the_smc_mark():
    assert time_grid(4) == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    late, early, cosine = (time_grid(10, s) for s in ("late", "early", "cosine"))
    for g in (late, early, cosine):
        assert g[0] == 0 and g[-1] == pytest.approx(1) and all(np.diff(g) > 0)
    assert np.diff(late)[-1] < 0.1 < np.diff(late)[0]  # denser near the data (t = 1)
    assert np.diff(early)[0] < 0.1 < np.diff(early)[-1]  # denser near the noise
    assert max(np.diff(cosine)[[0, -1]]) < 0.1 < np.diff(cosine)[5]
    with pytest.raises(ValueError):
        time_grid(10, "linear")
    obj = FlowMatchingObjective()
    times = []

    def const(x, t):
        times.append(t[0].item() / 1000)
        return torch.full_like(x, 0.25)

    g = torch.Generator().manual_seed(1)
    out = obj.sample(const, (2, 4, 3), steps=10, generator=g, schedule="late")
    start = torch.randn((2, 4, 3), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, start + 0.25, atol=1e-6)  # the step lengths add up to 1
    assert times == pytest.approx(late[:-1])
    times.clear()
    seen = []

    def weight(x1_hat):
        seen.append(times[-1])  # the SMC's own network call is at the grid time nearest 0.5
        return torch.ones(len(x1_hat))

    obj.sample(const, (2, 4, 3), steps=10, schedule="late", smc=((0.5,), weight))
    nearest = min(late, key=lambda t: abs(t - 0.5))
    assert seen == pytest.approx([nearest]) and nearest != pytest.approx(0.5)


# ----------------------------------------------------------------------------- training sanity
@pytest.mark.parametrize("objective", ["diffusion", "flow"])
def test_objectives_train_on_straight_lines(objective):
    torch.manual_seed(0)
    cfg = TransformerConfig(width=32, depth=2, heads=4, dropout=0.0, n_points=8)
    tf = StreamlineTransformer(cfg, context_dim=8)
    context = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(1))
    grid = (2, 2, 2)
    obj = DiffusionObjective() if objective == "diffusion" else FlowMatchingObjective()
    data = straight_lines(64, 8, torch.Generator().manual_seed(2))

    def fn(x, t):
        return tf(x, t, context, grid_shape=grid)

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(sum(obj.loss(fn, data, generator=torch.Generator().manual_seed(100 + i))
                             for i in range(8)) / 8)

    before = held_out_loss()
    opt = torch.optim.Adam(tf.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(3)
    for _ in range(150):
        loss = obj.loss(fn, data, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("objective", ["diffusion", "flow"])
def test_data_scale_is_applied_in_the_loss_and_undone_when_sampling(objective):
    """The objective sees x·data_scale; samples come back in [-1, 1] coordinates."""
    scale = 4.0
    model = GenTract(tiny_config(objective=objective, data_scale=scale)).eval()
    plain = GenTract(tiny_config(objective=objective)).eval()
    plain.load_state_dict(model.state_dict())
    z = model.encode_context(torch.randn(28, 16, 16, 16, generator=torch.Generator().manual_seed(0)))
    x1 = straight_lines(6, 16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model.generator_loss(z, x1, generator=torch.Generator().manual_seed(2))
        b = plain.generator_loss(z, x1 * scale, generator=torch.Generator().manual_seed(2))
        c = plain.generator_loss(z, x1, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(a, b) and not torch.allclose(a, c)
    out = model.sample(z, 8, steps=3, generator=torch.Generator().manual_seed(3))
    assert out.shape == (8, 16, 3)
    if objective == "diffusion":  # x0 is clamped to the data range [-s, s], then divided by s
        ref = plain.sample(z, 8, steps=3, generator=torch.Generator().manual_seed(3))
        assert model.objective.clip_range == scale and out.abs().max() <= 1.0 + 1e-6
        assert ref.abs().max() <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="data_scale"):
        tiny_config(data_scale=0.0)
