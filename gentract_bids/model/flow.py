"""Flow-matching objective: linear path from noise (t = 0) to data (t = 1) and an ODE sampler.

x_t = (1 − t)·x0 + t·x1 with x0 ~ N(0, I) and x1 the data; the network regresses the constant
velocity x1 − x0 (MSE). Sampling integrates dx/dt = v(x, t) from t = 0 to 1 with fixed steps
(Euler, first order, or explicit midpoint, second order). The network is called as
``model_fn(x_t, 1000·t)`` so it shares the diffusion timestep embedding range.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import SCHEDULES

ModelFn = Callable[[Tensor, Tensor], Tensor]
TIME_SCALE = 1000.0
METHODS = ("euler", "midpoint")


def time_grid(steps: int, schedule: str = "uniform") -> list[float]:
    """The ``steps`` + 1 times 0 = t_0 < ... < t_steps = 1 of the sampler: ``uniform`` k/steps,
    ``late`` 1 - (1 - s)^2 (denser near the data), ``early`` s^2 (denser near the noise),
    ``cosine`` (1 - cos(pi s)) / 2 (denser at both ends), s = k/steps."""
    s = [k / steps for k in range(steps + 1)]
    if schedule == "uniform":
        return s
    if schedule == "late":
        return [1 - (1 - u) ** 2 for u in s]
    if schedule == "early":
        return [u * u for u in s]
    if schedule == "cosine":
        return [(1 - math.cos(math.pi * u)) / 2 for u in s]
    raise ValueError(f"unknown time schedule {schedule!r}; use one of {SCHEDULES}")


def integrate_ode(velocity: Callable[[Tensor, float], Tensor], x: Tensor, steps: int,
                  method: str = "euler", t0: float = 0.0, t1: float = 1.0,
                  grid: "list[float] | None" = None) -> Tensor:
    """Integration of dx/dt = velocity(x, t) from ``t0`` to ``t1`` in ``steps`` equal steps,
    or over the times of ``grid`` when given."""
    if method not in METHODS:
        raise ValueError(f"unknown ODE method {method!r}; use one of {METHODS}")
    if grid is None:
        grid = [t0 + (t1 - t0) * u for u in time_grid(steps)]
    for t, t_next in zip(grid[:-1], grid[1:]):
        h = t_next - t
        if method == "euler":
            x = x + h * velocity(x, t)
        else:
            x_mid = x + 0.5 * h * velocity(x, t)
            x = x + h * velocity(x_mid, t + 0.5 * h)
    return x


class FlowMatchingObjective:
    """Conditional flow matching with the linear (rectified) path."""

    name = "flow"

    def __init__(self, method: str = "euler"):
        if method not in METHODS:
            raise ValueError(f"unknown ODE method {method!r}; use one of {METHODS}")
        self.method = method

    def loss(self, model_fn: ModelFn, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """MSE between x1 − x0 and model_fn(x_t, 1000·t), t ~ U(0, 1), x0 ~ N(0, I)."""
        b = x1.shape[0]
        gdev = generator.device if generator is not None else x1.device
        t = torch.rand((b,), generator=generator, device=gdev).to(x1.device, torch.float32)
        x0 = torch.randn(x1.shape, generator=generator, device=gdev).to(x1.device, x1.dtype)
        tt = t.view(b, *([1] * (x1.ndim - 1))).to(x1.dtype)
        x_t = (1 - tt) * x0 + tt * x1
        pred = model_fn(x_t, t * TIME_SCALE)
        return F.mse_loss(pred.float(), (x1 - x0).float())

    def sample(self, model_fn: ModelFn, shape, steps: int = 10, method: str | None = None,
               generator: torch.Generator | None = None, device="cpu",
               guidance=None, smc=None, schedule: str = "uniform") -> Tensor:
        """Integrate from x0 ~ N(0, I) (drawn with ``generator``) at t = 0 to t = 1.

        ``guidance(x1_hat) -> (b, p, 3)`` (optional) is added to each step's velocity: a
        direction that raises a score of the predicted clean streamline x1_hat = x_t + (1 − t)·v
        (classifier-style guidance on the x0 prediction; see
        :class:`gentract_bids.model.support.FodGuidance`). ``smc = (times, weight)`` (optional):
        sequential Monte Carlo, at the steps nearest each of ``times`` (in (0, 1)) the batch is
        resampled by ``weight(x1_hat) -> (b,)`` (:func:`smc_resample`)."""
        gdev = generator.device if generator is not None else torch.device(device)
        x = torch.randn(tuple(shape), generator=generator, device=gdev).to(device)

        def velocity(xt: Tensor, t: float) -> Tensor:
            tt = torch.full((xt.shape[0],), t * TIME_SCALE, device=xt.device)
            v = model_fn(xt, tt).to(xt.dtype)
            return v if guidance is None else v + guidance(xt + (1.0 - t) * v).to(v.dtype)

        method = method or self.method
        grid = time_grid(steps, schedule)
        marks = [] if not smc else sorted(
            {k for k in (min(range(steps + 1), key=lambda j: abs(grid[j] - t)) for t in smc[0])
             if 0 < k < steps})
        k0 = 0
        for k in marks:
            x = integrate_ode(velocity, x, k - k0, method, grid=grid[k0:k + 1])
            x = smc_resample(model_fn, x, grid[k], smc[1], generator)
            k0 = k
        return integrate_ode(velocity, x, steps - k0, method, grid=grid[k0:])


def systematic_resample(weights: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Indices (b,), non-decreasing, of a systematic resampling of ``weights`` (b,) >= 0:
    one uniform offset, b evenly spaced points through the weights' cumulative sum."""
    b = len(weights)
    gdev = generator.device if generator is not None else weights.device
    u = torch.rand((1,), generator=generator, device=gdev).to(weights.device, torch.float64)
    cdf = torch.cumsum(weights.double(), 0)
    points = (u + torch.arange(b, device=weights.device, dtype=torch.float64)) / b * cdf[-1]
    return torch.searchsorted(cdf, points, right=True).clamp(max=b - 1)


def smc_resample(model_fn: ModelFn, x: Tensor, t: float, weight: Callable[[Tensor], Tensor],
                 generator: torch.Generator | None = None) -> Tensor:
    """One sequential Monte Carlo step at time ``t``: weight each particle of ``x`` (b, p, 3) by
    ``weight`` of its predicted clean streamline x1_hat = x_t + (1 − t)·v, resample
    (:func:`systematic_resample`), and give every copy after the first of a particle fresh noise
    on the rectified-flow path, x_t = t·x1_hat + (1 − t)·noise (diversity). Unchanged when all
    weights are zero."""
    b = x.shape[0]
    gdev = generator.device if generator is not None else x.device
    noise = torch.randn(tuple(x.shape), generator=generator, device=gdev).to(x.device, x.dtype)
    v = model_fn(x, torch.full((b,), t * TIME_SCALE, device=x.device)).to(x.dtype)
    x1_hat = x + (1.0 - t) * v
    w = weight(x1_hat).to(x.device, torch.float64).clamp(min=0)
    if not w.sum() > 0:
        return x
    idx = systematic_resample(w, generator)
    dup = torch.zeros(b, dtype=torch.bool, device=x.device)
    dup[1:] = idx[1:] == idx[:-1]
    renoised = t * x1_hat[idx] + (1.0 - t) * noise
    return torch.where(dup[:, None, None], renoised, x[idx])
