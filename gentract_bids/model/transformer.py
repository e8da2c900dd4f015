"""The conditional streamline transformer: (noisy streamline, timestep, context) -> (B, p, 3).

Points are embedded with a Linear(3 -> n) plus a sinusoidal encoding of their index along the
streamline and a learned timestep embedding (sinusoidal features of t -> MLP). Context tokens are
projected Linear(D -> n) and get a 3-D positional encoding of their grid position (Fourier features
of the normalised voxel-centre coordinates -> Linear), so cross-attention knows WHERE a feature is.
Each of ``depth`` pre-norm layers does self-attention over points, cross-attention points ->
context and a GELU feed-forward; a final LayerNorm + Linear(n -> 3) gives the output.

Timestep convention: diffusion passes integer timesteps 0..999 as floats; flow matching passes
t in [0, 1] multiplied by 1000, so one embedding serves both objectives.

For sampling, :meth:`StreamlineTransformer.precompute_context` projects the context once and
computes the cross-attention keys/values of every layer once (:class:`ContextCache`); a batch-1
cache is broadcast to any batch with ``expand`` (no copy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from ._config import ConfigDict


@dataclass
class TransformerConfig(ConfigDict):
    width: int = 128
    depth: int = 4
    heads: int = 4
    dropout: float = 0.1
    ff_mult: int = 4
    n_points: int = 32
    context_frequencies: int = 6  # Fourier frequencies per axis of the 3-D context encoding

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")



# ----------------------------------------------------------------------------- encodings
def sinusoidal_embedding(positions: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer sinusoids: (...,) float -> (..., dim) = [sin(p·w_k), cos(p·w_k)]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device,
                                                           dtype=torch.float32) / half)
    args = positions.float()[..., None] * freqs
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def grid_coordinates(grid_shape: tuple[int, int, int], device=None) -> Tensor:
    """(T, 3) voxel-centre coordinates in (-1, 1) of a grid, tokens in C (row-major) order."""
    axes = [(2 * torch.arange(s, device=device, dtype=torch.float32) + 1) / s - 1 for s in grid_shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1)


def fourier_features(coords: Tensor, n_freq: int) -> Tensor:
    """(T, 3) -> (T, 6·n_freq): sin/cos of pi·2^k/2·coord for k < n_freq, per axis."""
    freqs = math.pi * 2.0 ** torch.arange(n_freq, device=coords.device, dtype=torch.float32) / 2
    args = coords[..., None] * freqs  # (T, 3, F)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1).flatten(-2)


# ----------------------------------------------------------------------------- cache
@dataclass
class ContextCache:
    """Cross-attention keys/values of every layer, each (1 or B, heads, T, head_dim)."""

    keys: list[Tensor]
    values: list[Tensor]
    grid_shape: tuple[int, int, int]

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def tokens(self) -> int:
        return self.keys[0].shape[2]

    def layer(self, i: int, batch: int) -> tuple[Tensor, Tensor]:
        """Layer ``i``'s keys and values for a batch of ``batch`` streamlines: of that batch, or of
        batch 1, one context for them all (the layer then attends with all queries at once)."""
        k, v = self.keys[i], self.values[i]
        if k.shape[0] not in (1, batch):
            raise ValueError(f"context cache of batch {k.shape[0]} cannot serve a batch of {batch}")
        return k, v


# ----------------------------------------------------------------------------- layers
class StreamlineLayer(nn.Module):
    """Pre-norm: self-attention over points, cross-attention to the context, feed-forward."""

    def __init__(self, width: int, heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.self_out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.cross_q = nn.Linear(width, width)
        self.cross_kv = nn.Linear(width, 2 * width)
        self.cross_out = nn.Linear(width, width)
        self.norm3 = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, ff_mult * width), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(ff_mult * width, width))
        self.drop = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:  # (B, L, n) -> (B, h, L, n/h)
        b, length, n = x.shape
        return x.view(b, length, self.heads, n // self.heads).transpose(1, 2)

    @staticmethod
    def _merge(x: Tensor) -> Tensor:  # (B, h, L, d) -> (B, L, h·d)
        b, h, length, d = x.shape
        return x.transpose(1, 2).reshape(b, length, h * d)

    def context_kv(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        """(b, T, n) projected context -> keys, values (b, heads, T, head_dim)."""
        k, v = self.cross_kv(ctx).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        p = self.dropout if self.training else 0.0
        q, ks, vs = (self._split(t) for t in self.qkv(self.norm1(x)).chunk(3, dim=-1))
        h = F.scaled_dot_product_attention(q, ks, vs, dropout_p=p)
        x = x + self.drop(self.self_out(self._merge(h)))
        q = self._split(self.cross_q(self.norm2(x)))
        b, heads, length, d = q.shape
        if k.shape[0] == 1 and b > 1:
            # one context for the whole batch: every point of every streamline is one query of a
            # single long sequence, one large attention call instead of b small ones (the
            # result is the same: queries attend independently)
            q = q.transpose(0, 1).reshape(1, heads, b * length, d)
            h = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
            h = h.reshape(heads, b, length, d).transpose(0, 1)
        else:
            h = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        x = x + self.drop(self.cross_out(self._merge(h)))
        return x + self.drop(self.ff(self.norm3(x)))


class StreamlineTransformer(nn.Module):
    """Predicts ε (diffusion) or the velocity (flow matching) of a batch of streamlines."""

    def __init__(self, cfg: TransformerConfig, context_dim: int):
        super().__init__()
        self.cfg, self.context_dim = cfg, context_dim
        n = cfg.width
        self.grid_shape: tuple[int, int, int] | None = None  # token grid of raw contexts
        self.point_in = nn.Linear(3, n)
        self.time_mlp = nn.Sequential(nn.Linear(n, 4 * n), nn.SiLU(), nn.Linear(4 * n, n))
        self.context_in = nn.Linear(context_dim, n)
        self.context_pos = nn.Linear(6 * cfg.context_frequencies, n)
        self.context_norm = nn.LayerNorm(n)
        self.layers = nn.ModuleList(StreamlineLayer(n, cfg.heads, cfg.ff_mult, cfg.dropout)
                                    for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(n)
        self.out = nn.Linear(n, 3)

    # -- context -------------------------------------------------------------------------------
    def _project_context(self, context: Tensor, grid_shape) -> Tensor:
        if context.ndim != 3 or context.shape[-1] != self.context_dim:
            raise ValueError(f"context must be (b, T, {self.context_dim}), got {tuple(context.shape)}")
        grid = tuple(grid_shape) if grid_shape is not None else self.grid_shape
        if grid is None or math.prod(grid) != context.shape[1]:
            raise ValueError(f"context has {context.shape[1]} tokens but the token grid is {grid}")
        pos = fourier_features(grid_coordinates(grid, context.device), self.cfg.context_frequencies)
        h = self.context_in(context) + self.context_pos(pos.to(context.dtype))
        return self.context_norm(h)

    def precompute_context(self, context: Tensor, grid_shape=None) -> ContextCache:
        """Project ``context`` (b, T, D) once and compute every layer's cross-attention K/V."""
        grid = tuple(int(s) for s in (grid_shape if grid_shape is not None else self.grid_shape))
        ctx = self._project_context(context, grid)
        keys, values = zip(*(layer.context_kv(ctx) for layer in self.layers))
        return ContextCache(list(keys), list(values), grid)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x_t: Tensor, t: Tensor, context: "Tensor | ContextCache",
                grid_shape=None, local: Tensor | None = None) -> Tensor:
        """x_t (B, p, 3), t (B,) or scalar float, context (1 or B, T, D) or a ContextCache;
        ``local`` (B, p, n): per-point features added to the point embeddings (see :mod:`.local`)."""
        b, p, _ = x_t.shape
        if not isinstance(context, ContextCache):
            context = self.precompute_context(context, grid_shape)
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32).reshape(-1).expand(b)
        pos = sinusoidal_embedding(torch.arange(p, device=x_t.device), self.cfg.width)
        temb = self.time_mlp(sinusoidal_embedding(t, self.cfg.width))
        h = self.point_in(x_t) + pos.to(x_t.dtype) + temb[:, None, :]
        if local is not None:
            h = h + local.to(h.dtype)
        for i, layer in enumerate(self.layers):
            k, v = context.layer(i, b)
            h = layer(h, k, v)
        return self.out(self.out_norm(h))
