"""Local fODF features (model/local.py): sampling the canonical grid at streamline points."""

import numpy as np
import pytest
import torch

from gentract_bids.fodf.grid import canonical_grid
from gentract_bids.io.checkpoint import load_checkpoint, save_checkpoint
from gentract_bids.model.gentract import GenTract
from gentract_bids.model.local import LocalConfig, sample_volume_mm, stencil_mm
from test_model import straight_lines, tiny_config


def world_coordinate_volume(shape, spacing):
    """(1, 3, X, Y, Z): each voxel holds its own RAS+ world coordinate (canonical grid)."""
    affine, _ = canonical_grid(spacing, shape)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    return torch.from_numpy(np.moveaxis(xyz, -1, 0)[None].astype(np.float32))


def test_sampling_returns_the_world_coordinate_at_any_point():
    shape, spacing = (20, 24, 18), 1.875
    vol = world_coordinate_volume(shape, spacing)  # linear in space: trilinear is exact
    half = (np.array(shape) - 1) * spacing / 2 - 3  # stay one stencil inside the grid
    g = torch.Generator().manual_seed(0)
    pts = (torch.rand((4, 5, 3), generator=g) * 2 - 1) * torch.tensor(half, dtype=torch.float32)
    out = sample_volume_mm(vol, pts, spacing, offsets_mm=(1.0, 2.0))
    assert out.shape == (4, 5, 13 * 3)
    got = out.reshape(4, 5, 13, 3)
    want = pts[:, :, None, :] + stencil_mm((1.0, 2.0))
    assert torch.allclose(got, want, atol=1e-3)
    # an axis mix-up (x read as z) would fail on this anisotropic grid
    assert not torch.allclose(got[..., 0], got[..., 2], atol=1.0)
    # outside the grid: zero
    far = torch.full((1, 1, 3), 500.0)
    assert torch.all(sample_volume_mm(vol, far, spacing) == 0)


def test_model_with_local_features_uses_the_volume_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = GenTract(tiny_config(objective="flow", local=LocalConfig(enabled=True, hidden=16)))
    assert model.uses_volume
    sh = torch.randn(28, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    ctx = model.encode_context(sh).detach()
    x1 = straight_lines(6, 16, torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="bounds"):
        model.generator_loss(ctx, x1, volume=sh)
    model.set_coordinate_bounds([-15.0] * 3, [15.0] * 3)
    with pytest.raises(ValueError, match="volume"):
        model.sample(ctx, 2, steps=2)
    loss = model.generator_loss(ctx, x1, generator=torch.Generator().manual_seed(0), volume=sh)
    loss.backward()
    assert model.local.mlp[0].weight.grad.abs().sum() > 0

    def draw(m, vol):
        return m.sample(ctx, 5, steps=3, generator=torch.Generator().manual_seed(2), volume=vol)

    a = draw(model, sh)
    assert not torch.allclose(a, draw(model, torch.zeros_like(sh)), atol=1e-4)  # reads the volume
    save_checkpoint(tmp_path / "m", model, {"zscore": {"mean": [0.0], "std": [1.0]},
                                            "coord_bounds": {"lo": [-15.0] * 3, "hi": [15.0] * 3}})
    loaded, meta = load_checkpoint(tmp_path / "m")
    assert meta["model_config"]["local"]["enabled"] is True
    assert torch.equal(draw(loaded, sh), a)  # bounds come back from the JSON
