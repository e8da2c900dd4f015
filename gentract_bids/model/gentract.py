"""The assembled GenTract model: per-coefficient VAEs -> E^c -> context z -> streamline generator.

Usage::

    model = GenTract(GenTractConfig())
    z = model.encode_context(sh)                  # (m, X, Y, Z) z-scored SH volume -> (1, T, m·C_c)
    unit = model.sample(z, 10_000, generator=g, volume=sh)  # (N, p, 3) in [-1, 1]

``volume`` (the same z-scored SH volume) is needed only by a model with local fODF features
(``config.local.enabled``, see :mod:`.local`); such a model also needs the coordinate bounds
(:meth:`GenTract.set_coordinate_bounds`; a loaded checkpoint has them).
    mm = CoordinateScaler(lo, hi).to_mm(unit)     # back to RAS+ millimetres

Streamline coordinates inside the model are min–max scaled to [-1, 1] per axis with training-set
bounds (:class:`CoordinateScaler`); the SH volume is on the canonical grid and z-scored by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..fodf.csd import n_coeffs as _n_coeffs
from .diffusion import DiffusionObjective
from .encoder import ConditionedEncoder, EncoderConfig
from .flow import METHODS, FlowMatchingObjective
from .local import LocalConfig, LocalFeatures
from .transformer import ContextCache, StreamlineTransformer, TransformerConfig
from .vae import CoefficientVAEs, VAEConfig

OBJECTIVES = ("diffusion", "flow")
SAMPLERS = {"diffusion": "ddim", "flow": "flow"}


@dataclass
class GenTractConfig:
    sh_order: int = 6
    n_coeffs: int = 28
    grid_shape: tuple[int, int, int] = (80, 96, 80)
    grid_spacing: float = 1.875
    objective: str = "diffusion"  # diffusion | flow
    steps: int = 10  # default sampling steps
    flow_method: str = "euler"  # euler | midpoint (flow objective)
    clip_sample: bool = True  # diffusion: clamp the predicted x0 to the data range while sampling
    data_scale: float = 1.0  # the objective sees coordinates x·data_scale (in [-s, s]), see below
    vae: VAEConfig = field(default_factory=VAEConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    local: LocalConfig = field(default_factory=LocalConfig)

    def __post_init__(self) -> None:
        self.grid_shape = tuple(int(s) for s in self.grid_shape)
        if self.n_coeffs != _n_coeffs(self.sh_order):
            raise ValueError(f"sh_order {self.sh_order} has {_n_coeffs(self.sh_order)} "
                             f"coefficients, not {self.n_coeffs}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not self.data_scale > 0:
            raise ValueError(f"data_scale must be positive, got {self.data_scale}")
        if self.flow_method not in METHODS:
            raise ValueError(f"flow_method must be one of {METHODS}, got {self.flow_method!r}")

    @property
    def n_points(self) -> int:
        return self.transformer.n_points

    def to_dict(self) -> dict:
        """Nested, JSON-able (tuples become lists)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if hasattr(v, "to_dict") else (list(v) if isinstance(v, tuple) else v)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "GenTractConfig":
        """Inverse of :meth:`to_dict`; ``n_coeffs`` defaults to the size of the ``sh_order`` basis."""
        d = dict(d)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        if "n_coeffs" not in d:
            d["n_coeffs"] = _n_coeffs(int(d.get("sh_order", 6)))
        d["vae"] = VAEConfig.from_dict(d.get("vae", {}))
        d["encoder"] = EncoderConfig.from_dict(d.get("encoder", {}))
        d["transformer"] = TransformerConfig.from_dict(d.get("transformer", {}))
        d["local"] = LocalConfig.from_dict(d.get("local", {}))
        return cls(**d)


class GenTract(nn.Module):
    """VAEs (frozen after stage 1) + E^c + conditional transformer + generative objective."""

    def __init__(self, config: GenTractConfig | None = None):
        super().__init__()
        cfg = config or GenTractConfig()
        self.config = cfg
        m = cfg.n_coeffs
        self.vaes = CoefficientVAEs(m, cfg.vae)
        self.encoder = ConditionedEncoder(m, cfg.vae.latent_channels, cfg.encoder)
        self.transformer = StreamlineTransformer(cfg.transformer, self.encoder.out_features)
        self.local = (LocalFeatures(cfg.local, m, cfg.transformer.width, cfg.grid_spacing)
                      if cfg.local.enabled else None)
        if cfg.objective == "diffusion":
            self.objective = DiffusionObjective(clip_sample=cfg.clip_sample,
                                                clip_range=float(cfg.data_scale))
        else:
            self.objective = FlowMatchingObjective(cfg.flow_method)
        self.context_grid_shape = self.token_grid(cfg.grid_shape)

    # -- context -------------------------------------------------------------------------------
    def token_grid(self, volume_shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid of the context for an SH volume of spatial shape ``volume_shape``."""
        return self.encoder.grid_shape(self.vaes.latent_shape(tuple(volume_shape)))

    @property
    def context_grid_shape(self) -> tuple[int, int, int]:
        return self.transformer.grid_shape

    @context_grid_shape.setter
    def context_grid_shape(self, shape) -> None:
        self.transformer.grid_shape = tuple(int(s) for s in shape)

    def encode_context(self, sh_volume: Tensor) -> Tensor:
        """z-scored SH volume (m, X, Y, Z) or (B, m, X, Y, Z) -> context (B, T, m·C_c).

        VAE posterior means -> E^c; the token grid is kept on the module (positional encoding)."""
        if sh_volume.ndim == 4:
            sh_volume = sh_volume[None]
        return self.context_from_latents(self.vaes.encode(sh_volume))

    def context_from_latents(self, latents: Tensor) -> Tensor:
        """VAE latents (m, C_z, x, y, z) or (B, m, C_z, x, y, z) -> context (B, T, m·C_c)."""
        if latents.ndim == 5:
            latents = latents[None]
        self.context_grid_shape = self.encoder.grid_shape(tuple(latents.shape[-3:]))
        return self.encoder(latents)

    @property
    def uses_volume(self) -> bool:
        """True when sampling and training need the SH volume itself (local fODF features)."""
        return self.local is not None

    def set_coordinate_bounds(self, lo, hi) -> None:
        """Training-set bounds of the [-1, 1] coordinates (needed by local fODF features)."""
        if self.local is not None:
            self.local.scaler = CoordinateScaler(lo, hi)

    def _local_volume(self, volume: Tensor | None) -> Tensor | None:
        if self.local is None:
            return None
        if volume is None:
            raise ValueError("this model samples the fODF along each streamline (local features): "
                             "pass the z-scored SH volume as volume=")
        return volume[None] if volume.ndim == 4 else volume

    def model_fn(self, context: "Tensor | ContextCache", volume: Tensor | None = None):
        """The closure ``(x_t, t) -> prediction`` the objectives call. ``volume`` (1, m, X, Y, Z)
        or (m, X, Y, Z): the z-scored SH volume, for a model with local fODF features."""
        grid = self.context_grid_shape
        vol = self._local_volume(volume)
        scale = float(self.config.data_scale)

        def fn(x_t: Tensor, t: Tensor) -> Tensor:
            local = None if vol is None else self.local(vol, x_t / scale)
            return self.transformer(x_t, t, context, grid_shape=grid, local=local)

        return fn

    # -- training ------------------------------------------------------------------------------
    def generator_loss(self, context: Tensor, x1_batch: Tensor,
                       generator: torch.Generator | None = None,
                       volume: Tensor | None = None) -> Tensor:
        """Objective loss of streamlines ``x1_batch`` (B, p, 3) in [-1, 1] given a context of
        batch 1 (broadcast to B) or B. Gradients flow into E^c through ``context``."""
        if context.shape[0] not in (1, x1_batch.shape[0]):
            raise ValueError(f"context batch {context.shape[0]} vs streamline batch {x1_batch.shape[0]}")
        x1 = x1_batch * self.config.data_scale
        return self.objective.loss(self.model_fn(context, volume), x1, generator=generator)

    # -- sampling ------------------------------------------------------------------------------
    def _resolve_sampler(self, sampler: str | None) -> str:
        expected = SAMPLERS[self.config.objective]
        if sampler is None:
            return expected
        if sampler != expected:
            raise ValueError(f"sampler {sampler!r} does not fit a model trained with the "
                             f"{self.config.objective} objective (use {expected!r})")
        return sampler

    @torch.inference_mode()
    def sample_batches(self, context: Tensor, n_streamlines: int | None,
                       steps: int | None = None,
                       batch_size: "int | Callable[[], int]" = 4096,
                       generator: torch.Generator | None = None,
                       sampler: str | None = None, flow_method: str | None = None,
                       n_points: int | None = None,
                       volume: Tensor | None = None, guidance=None,
                       smc=None, on_call: "Callable[[], None] | None" = None,
                       schedule: str = "uniform") -> Iterator[Tensor]:
        """Yield batches (b, p, 3) of streamlines in [-1, 1] until ``n_streamlines`` are made
        (``None``: full batches for as long as the caller iterates). ``batch_size`` may be a
        function called before each batch for its size (the caller sizes its last batch);
        ``guidance``, ``smc`` and ``schedule`` (flow objective): see
        :meth:`FlowMatchingObjective.sample`.
        ``on_call`` (optional) is called after every network evaluation (progress within a
        batch).

        The context cache (projected context + every layer's K/V) is built once. The module is in
        eval mode (no dropout) while sampling and goes back to its previous mode afterwards."""
        self._resolve_sampler(sampler)
        steps = int(steps or self.config.steps)
        p = int(n_points or self.config.n_points)
        was_training = self.training
        self.eval()
        try:
            if context.ndim == 2:
                context = context[None]
            cache = self.transformer.precompute_context(context, self.context_grid_shape)
            fn = self.model_fn(cache, volume)
            if on_call is not None:
                net = fn

                def fn(x_t, t):
                    out = net(x_t, t)
                    on_call()
                    return out
            device = context.device
            done = 0
            while n_streamlines is None or done < n_streamlines:
                b = batch_size() if callable(batch_size) else batch_size
                b = b if n_streamlines is None else min(b, n_streamlines - done)
                if cache.batch not in (1, b):
                    raise ValueError("sampling needs a context of batch 1")
                shape = (b, p, 3)
                if self.config.objective == "diffusion":
                    if guidance is not None or smc:
                        raise ValueError("fODF guidance and SMC need a flow-matching model")
                    out = self.objective.sample(fn, shape, steps=steps, generator=generator,
                                                device=device)
                else:
                    out = self.objective.sample(fn, shape, steps=steps, method=flow_method,
                                                generator=generator, device=device,
                                                guidance=guidance, smc=smc,
                                                schedule=schedule)
                done += b
                yield out / self.config.data_scale
        finally:
            self.train(was_training)

    @torch.inference_mode()
    def sample(self, context: Tensor, n_streamlines: int, steps: int | None = None,
               batch_size: int = 4096, generator: torch.Generator | None = None,
               sampler: str | None = None, flow_method: str | None = None,
               volume: Tensor | None = None) -> Tensor:
        """(N, p, 3) streamlines in normalised [-1, 1] coordinates (see :meth:`sample_batches`)."""
        batches = list(self.sample_batches(context, n_streamlines, steps=steps,
                                           batch_size=batch_size, generator=generator,
                                           sampler=sampler, flow_method=flow_method,
                                           volume=volume))
        if not batches:
            return torch.empty((0, self.config.n_points, 3), device=context.device)
        return torch.cat(batches)


def _same_dtype(out, like):
    """Keep a numpy float input's dtype (float32 streamlines stay float32)."""
    if isinstance(like, np.ndarray) and np.issubdtype(like.dtype, np.floating):
        return out.astype(like.dtype, copy=False)
    return out


class CoordinateScaler:
    """Per-axis min–max map between RAS+ millimetres and the model's [-1, 1] coordinates."""

    def __init__(self, lo, hi):
        self.lo = np.asarray(lo, dtype=np.float64).reshape(3)
        self.hi = np.asarray(hi, dtype=np.float64).reshape(3)
        if np.any(self.hi <= self.lo):
            raise ValueError(f"coordinate bounds need hi > lo, got lo={self.lo} hi={self.hi}")

    @classmethod
    def from_points(cls, streamlines, margin_mm: float = 2.0) -> "CoordinateScaler":
        """Bounds of all points of a list of (n, 3) arrays, widened by ``margin_mm`` per side."""
        pts = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1, 3) for s in streamlines])
        return cls(pts.min(0) - margin_mm, pts.max(0) + margin_mm)

    def _args(self, like):
        if isinstance(like, Tensor):
            return (torch.as_tensor(self.lo, dtype=like.dtype, device=like.device),
                    torch.as_tensor(self.hi, dtype=like.dtype, device=like.device))
        return self.lo, self.hi

    def to_unit(self, points_mm):
        """Millimetres (..., 3) -> [-1, 1] (numpy in, numpy out; tensor in, tensor out)."""
        lo, hi = self._args(points_mm)
        return _same_dtype(2 * (points_mm - lo) / (hi - lo) - 1, points_mm)

    def to_mm(self, unit):
        """[-1, 1] (..., 3) -> millimetres."""
        lo, hi = self._args(unit)
        return _same_dtype(lo + (unit + 1) * (hi - lo) / 2, unit)

    def to_dict(self) -> dict:
        return {"lo": self.lo.tolist(), "hi": self.hi.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "CoordinateScaler":
        return cls(d["lo"], d["hi"])
