"""Point-sampled fODF features: what the subject's fODF looks like where each point of x_t is *(ours)*.

The paper conditions the transformer only through cross-attention to the context tokens z. On a CPU
budget a coarse token grid (5 × 6 × 5 tokens of 30 mm) cannot say *where* a 5 mm bundle runs, so the
phantom recipe adds a second, local path: at every network call the z-scored SH volume on the
canonical grid is sampled (trilinear) at each point of the current noisy streamline and at each
of ``offsets_mm`` either side of it along x, y and z (a stencil of 1 + 6·len(offsets_mm) points
that also gives the local gradient at each scale), and an MLP adds those samples to the point
embeddings. The network can then see
whether its current estimate runs inside white matter and along the fibres, and correct it,
step after step of the sampler. ``enabled: false`` (the default, and ``paper.yaml``) is the paper's
model.

Coordinates: the network works in [-1, 1] (training-set bounds ``lo``/``hi``, see
:class:`~gentract_bids.model.gentract.CoordinateScaler`) times ``data_scale``; the canonical grid is
axis-aligned RAS+ and centred on the world origin (:func:`~gentract_bids.fodf.grid.canonical_grid`),
so a point's millimetres map to ``grid_sample``'s normalised coordinates by one scale per axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._config import ConfigDict


@dataclass
class LocalConfig(ConfigDict):
    enabled: bool = False
    offsets_mm: tuple[float, ...] = (2.0,)  # stencil half-widths; () samples the point only
    hidden: int = 128  # width of the MLP's hidden layer

    def __post_init__(self) -> None:
        self.offsets_mm = tuple(float(o) for o in self.offsets_mm)
        if any(o <= 0 for o in self.offsets_mm):
            raise ValueError(f"local offsets_mm must be positive, got {self.offsets_mm}")

    @property
    def n_samples(self) -> int:
        return 1 + 6 * len(self.offsets_mm)


def stencil_mm(offsets_mm=()) -> Tensor:
    """(K, 3) offsets in mm: the point itself, then ±each offset along x, y and z (K = 1 + 6·n)."""
    out = [torch.zeros(3)]
    for offset_mm in offsets_mm:
        for axis in range(3):
            for sign in (1.0, -1.0):
                d = torch.zeros(3)
                d[axis] = sign * offset_mm
                out.append(d)
    return torch.stack(out)


def sample_volume_mm(volume: Tensor, points_mm: Tensor, grid_spacing: float,
                     offsets_mm=()) -> Tensor:
    """Trilinear samples of ``volume`` (1, C, X, Y, Z) on the canonical grid at ``points_mm``
    (B, p, 3, RAS+ mm) and their stencil: (B, p, K·C), zero outside the grid.

    Voxel ``i`` of an axis of n voxels is centred at ``(i − (n − 1)/2)·spacing`` mm."""
    if volume.ndim != 5 or volume.shape[0] != 1:
        raise ValueError(f"volume must be (1, C, X, Y, Z), got {tuple(volume.shape)}")
    b, p, _ = points_mm.shape
    c = volume.shape[1]
    sizes = torch.tensor(volume.shape[2:], dtype=points_mm.dtype, device=points_mm.device)
    half = (sizes - 1) * float(grid_spacing) / 2
    offsets = stencil_mm(offsets_mm).to(points_mm.device, points_mm.dtype)  # (K, 3)
    pts = points_mm[:, :, None, :] + offsets  # (B, p, K, 3)
    norm = (pts / half).flip(-1)  # grid_sample wants (W, H, D) = (z, y, x) order
    grid = norm.reshape(1, b * p, offsets.shape[0], 1, 3).to(volume.dtype)
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    # (1, C, B·p, K, 1) -> (B, p, K·C)
    return out[0, :, :, :, 0].permute(1, 2, 0).reshape(b, p, offsets.shape[0] * c)


class LocalFeatures(nn.Module):
    """Samples the SH volume along (noisy) streamlines and embeds the samples to width ``width``."""

    def __init__(self, cfg: LocalConfig, n_coeffs: int, width: int, grid_spacing: float):
        super().__init__()
        self.cfg, self.grid_spacing = cfg, float(grid_spacing)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_samples * n_coeffs, cfg.hidden), nn.SiLU(),
                                 nn.Linear(cfg.hidden, width))
        # the training-set CoordinateScaler (not weights: its bounds come from the checkpoint's JSON)
        self.scaler = None

    def forward(self, volume: Tensor, x_unit: Tensor) -> Tensor:
        """``volume`` (1, m, X, Y, Z) z-scored SH, ``x_unit`` (B, p, 3) in [-1, 1] -> (B, p, width)."""
        if self.scaler is None:
            raise RuntimeError("local fODF features need the coordinate bounds "
                               "(GenTract.set_coordinate_bounds)")
        mm = self.scaler.to_mm(x_unit.detach().float())
        feats = sample_volume_mm(volume.float(), mm, self.grid_spacing, self.cfg.offsets_mm)
        return self.mlp(feats.to(x_unit.dtype))
