"""Diffusion objective: ε-prediction training (DDPM noise) and deterministic DDIM sampling.

Schedule (the paper's released configuration): 1000 training timesteps, "scaled linear" β from
0.0015 to 0.0205, i.e. β_t = (sqrt(β_0) + t/999·(sqrt(β_999) − sqrt(β_0)))², built by MONAI's
``DDPMScheduler`` (training) and ``DDIMScheduler`` (sampling).

Why sampling does not call ``DDIMScheduler.step``: MONAI 1.6's ``set_timesteps(S)`` gives the
sequence ``round(linspace(999, 0, S))`` (999, 888, ..., 111, 0 for S = 10), while ``step()`` takes
the previous timestep as ``t − 1000 // S`` (999 -> 899). The next model call then sees a sample at
noise level 899 labelled 888. We keep MONAI's schedule (``alphas_cumprod``) and timestep sequence
but pair every timestep with the NEXT one of the sequence in :func:`ddim_step` (eta = 0); the last
step goes from t = 0 to ᾱ = 1, so the output is exactly the x0 predicted at t = 0.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import Tensor

ModelFn = Callable[[Tensor, Tensor], Tensor]

NUM_TRAIN_TIMESTEPS = 1000
SCHEDULE = "scaled_linear_beta"
BETA_START, BETA_END = 0.0015, 0.0205


def ddim_step(x_t: Tensor, eps: Tensor, alpha_t: Tensor | float, alpha_prev: Tensor | float,
              clip: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
    """One deterministic DDIM update (eta = 0) from cumulative alpha ``alpha_t`` to ``alpha_prev``.

    x0 = (x_t − sqrt(1 − ᾱ_t)·ε) / sqrt(ᾱ_t) (optionally clamped to ``clip``);
    x_prev = sqrt(ᾱ_prev)·x0 + sqrt(1 − ᾱ_prev)·ε. Returns (x_prev, x0)."""
    alpha_t = torch.as_tensor(alpha_t, dtype=torch.float64)
    alpha_prev = torch.as_tensor(alpha_prev, dtype=torch.float64)
    x0 = (x_t - float((1 - alpha_t).sqrt()) * eps) / float(alpha_t.sqrt())
    if clip is not None:
        x0 = x0.clamp(*clip)
    x_prev = float(alpha_prev.sqrt()) * x0 + float((1 - alpha_prev).sqrt()) * eps
    return x_prev, x0


class DiffusionObjective:
    """ε-prediction MSE with DDPM noising; DDIM (eta = 0) sampling from N(0, I)."""

    name = "diffusion"

    def __init__(self, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START,
                 beta_end: float = BETA_END, clip_sample: bool = True, clip_range: float = 1.0):
        kw = dict(num_train_timesteps=num_train_timesteps, schedule=SCHEDULE,
                  beta_start=beta_start, beta_end=beta_end, prediction_type="epsilon")
        self.train_scheduler = DDPMScheduler(clip_sample=clip_sample, **kw)
        self.sample_scheduler = DDIMScheduler(clip_sample=clip_sample, set_alpha_to_one=True, **kw)
        self.num_train_timesteps = num_train_timesteps
        self.clip_sample = clip_sample  # clamp predicted x0 to [-clip_range, clip_range]
        self.clip_range = float(clip_range)  # the data range: coordinates in [-1, 1] x data_scale

    @property
    def betas(self) -> Tensor:
        return self.train_scheduler.betas

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.train_scheduler.alphas_cumprod

    def loss(self, model_fn: ModelFn, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """MSE between ε and model_fn(x_t, t) with t ~ U{0..999} and ε ~ N(0, I) from ``generator``."""
        b = x0.shape[0]
        gdev = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.num_train_timesteps, (b,), generator=generator, device=gdev)
        noise = torch.randn(x0.shape, generator=generator, device=gdev, dtype=torch.float32)
        t, noise = t.to(x0.device), noise.to(x0.device, x0.dtype)
        x_t = self.train_scheduler.add_noise(x0, noise, t)
        pred = model_fn(x_t, t.float())
        return F.mse_loss(pred.float(), noise.float())

    def timesteps(self, steps: int) -> list[int]:
        """The DDIM timestep sequence of MONAI's ``set_timesteps`` (descending, ends at 0)."""
        self.sample_scheduler.set_timesteps(steps)
        return [int(t) for t in self.sample_scheduler.timesteps]

    def sample(self, model_fn: ModelFn, shape, steps: int = 10,
               generator: torch.Generator | None = None, device="cpu") -> Tensor:
        """DDIM (eta = 0) from x_T ~ N(0, I) drawn with ``generator``; returns x0 predicted at t = 0."""
        gdev = generator.device if generator is not None else torch.device(device)
        x = torch.randn(tuple(shape), generator=generator, device=gdev).to(device)
        ts = self.timesteps(steps)
        acp = self.sample_scheduler.alphas_cumprod
        clip = (-self.clip_range, self.clip_range) if self.clip_sample else None
        for k, t in enumerate(ts):
            alpha_prev = acp[ts[k + 1]] if k + 1 < len(ts) else self.sample_scheduler.final_alpha_cumprod
            eps = model_fn(x, torch.full((x.shape[0],), float(t), device=x.device))
            x, _ = ddim_step(x, eps.to(x.dtype), acp[t], alpha_prev, clip)
        return x
