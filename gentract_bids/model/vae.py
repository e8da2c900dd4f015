"""Per-coefficient VAEs (stage 1 of the anatomical conditioning encoder) and their losses.

Each of the m SH coefficient volumes gets its own MONAI ``AutoencoderKL`` (1 channel in/out,
``latent_channels`` out of the encoder, a ``2**(len(channels)-1)`` spatial reduction). They are
trained with the MAISI-style recipe: L1 reconstruction + ``kl_weight``·KL + ``adv_weight``·adversarial
(after ``adv_warmup_steps``; least-squares PatchGAN) + an optional perceptual term. The perceptual
term needs a pretrained feature network: it is used ONLY when ``perceptual_weights`` names a local
weights file (MONAI's torchvision ResNet-50 variant, loaded with ``weights_only=True``); without
it the term is absent. Nothing is ever downloaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import AutoencoderKL, PatchDiscriminator
from torch import Tensor, nn
from ._config import ConfigDict


@dataclass
class VAEConfig(ConfigDict):
    channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 4
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    attention: bool = False
    kl_weight: float = 1e-6
    adv_weight: float = 0.01
    adv_warmup_steps: int = 500
    disc_channels: int = 16
    disc_layers: int = 2
    perceptual_weight: float = 0.0
    perceptual_weights: str | None = None  # local path to ResNet-50 weights; None: no perceptual term

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)

    @property
    def factor(self) -> int:
        """Spatial downsampling factor of the encoder."""
        return 2 ** (len(self.channels) - 1)



def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    """One 3-D ``AutoencoderKL`` with 1 channel in/out (no attention unless ``cfg.attention``)."""
    n = len(cfg.channels)
    return AutoencoderKL(
        spatial_dims=3, in_channels=1, out_channels=1, channels=cfg.channels,
        num_res_blocks=(cfg.num_res_blocks,) * n, attention_levels=(cfg.attention,) * n,
        latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_num_groups,
        with_encoder_nonlocal_attn=cfg.attention, with_decoder_nonlocal_attn=cfg.attention,
    )


def build_discriminator(cfg: VAEConfig) -> PatchDiscriminator:
    """A 3-D PatchGAN discriminator for one coefficient volume."""
    return PatchDiscriminator(spatial_dims=3, channels=cfg.disc_channels, in_channels=1,
                              out_channels=1, num_layers_d=cfg.disc_layers)


def pad_to_multiple(x: Tensor, factor: int) -> Tensor:
    """Zero-pad the last three (spatial) axes of ``x`` at their far end up to a multiple of ``factor``.

    Padding at the end keeps voxel (0, 0, 0) in place, so latent voxel j still covers input voxels
    ``j*factor ... j*factor+factor-1``. Zero is the mean of a z-scored volume (= "no signal")."""
    pads = []
    for size in reversed(x.shape[-3:]):
        pads += [0, (-size) % factor]
    return F.pad(x, pads) if any(pads) else x


class CoefficientVAEs(nn.Module):
    """``m`` independent VAEs, one per SH coefficient volume (``self.vaes`` is a ModuleList)."""

    def __init__(self, n_coeffs: int, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.n_coeffs = n_coeffs
        self.vaes = nn.ModuleList(build_vae(cfg) for _ in range(n_coeffs))

    @property
    def factor(self) -> int:
        return self.cfg.factor

    def latent_shape(self, spatial: tuple[int, int, int]) -> tuple[int, int, int]:
        """Latent grid of an input grid (inputs are padded up to a multiple of the factor)."""
        return tuple(math.ceil(s / self.factor) for s in spatial)

    def encode(self, sh: Tensor) -> Tensor:
        """Posterior means: (B, m, X, Y, Z) -> (B, m, C_z, ceil(X/f), ceil(Y/f), ceil(Z/f)).

        Deterministic (no sampling). Sizes that are not multiples of f are zero-padded at the end."""
        if sh.ndim != 5 or sh.shape[1] != self.n_coeffs:
            raise ValueError(f"expected (B, {self.n_coeffs}, X, Y, Z), got {tuple(sh.shape)}")
        x = pad_to_multiple(sh, self.factor)
        # channels-last input: the same values, ~20 % faster convolutions on a CPU
        out = [vae.encode(x[:, i:i + 1].contiguous(memory_format=torch.channels_last_3d))[0]
               for i, vae in enumerate(self.vaes)]
        return torch.stack(out, dim=1)

    def decode(self, z: Tensor) -> Tensor:
        """(B, m, C_z, x, y, z) -> (B, m, X', Y', Z') (padded size)."""
        return torch.cat([vae.decode(z[:, i]) for i, vae in enumerate(self.vaes)], dim=1)


# ----------------------------------------------------------------------------- losses
def kl_divergence(z_mu: Tensor, z_sigma: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent elements, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1.0)
    return kl.flatten(1).sum(1).mean()


_ADV = PatchAdversarialLoss(criterion="least_squares")


@lru_cache(maxsize=2)
def _perceptual(path: str):
    try:
        from monai.losses import PerceptualLoss

        return PerceptualLoss(spatial_dims=3, network_type="resnet50", is_fake_3d=True,
                              pretrained=True, pretrained_path=path)
    except Exception as err:  # missing torchvision, unreadable file, wrong keys
        raise RuntimeError(f"cannot build the perceptual loss from {path}: {err}") from err


def perceptual_term(cfg: VAEConfig, recon: Tensor, x: Tensor) -> Tensor | None:
    """The perceptual loss, or None when no local weights are configured (never downloads)."""
    if not cfg.perceptual_weights or cfg.perceptual_weight <= 0:
        return None
    net = _perceptual(str(cfg.perceptual_weights)).to(x.device)
    return net(recon.float(), x.float())


def vae_step_losses(vae: AutoencoderKL, disc: nn.Module | None, x: Tensor, step: int,
                    cfg: VAEConfig) -> dict[str, Tensor]:
    """Generator-side losses of one VAE step on patches ``x`` (B, 1, X, Y, Z).

    Returns scalars ``loss`` (the total to back-propagate), ``l1``, ``kl``, ``adv`` (0 before
    ``adv_warmup_steps`` or without a discriminator), ``perceptual`` (only when configured), and the
    non-scalar ``reconstruction`` (for :func:`discriminator_loss`; detach it there)."""
    xp = pad_to_multiple(x, cfg.factor)
    recon, z_mu, z_sigma = vae(xp)
    recon = recon[..., : x.shape[-3], : x.shape[-2], : x.shape[-1]]
    l1 = F.l1_loss(recon.float(), x.float())
    kl = kl_divergence(z_mu.float(), z_sigma.float())
    loss = l1 + cfg.kl_weight * kl
    out = {"l1": l1.detach(), "kl": kl.detach()}
    adv = torch.zeros((), device=x.device)
    if disc is not None and cfg.adv_weight > 0 and step >= cfg.adv_warmup_steps:
        logits_fake = disc(recon.contiguous().float())[-1]
        adv = _ADV(logits_fake, target_is_real=True, for_discriminator=False)
        loss = loss + cfg.adv_weight * adv
    out["adv"] = adv.detach()
    perc = perceptual_term(cfg, recon, x)
    if perc is not None:
        loss = loss + cfg.perceptual_weight * perc
        out["perceptual"] = perc.detach()
    out["loss"] = loss
    out["reconstruction"] = recon
    return out


def discriminator_loss(disc: nn.Module, x: Tensor, reconstruction: Tensor) -> Tensor:
    """Least-squares PatchGAN loss: real patches -> 1, (detached) reconstructions -> 0."""
    logits_fake = disc(reconstruction.detach().contiguous().float())[-1]
    logits_real = disc(x.contiguous().float())[-1]
    loss_fake = _ADV(logits_fake, target_is_real=False, for_discriminator=True)
    loss_real = _ADV(logits_real, target_is_real=True, for_discriminator=True)
    return 0.5 * (loss_fake + loss_real)
