"""The two training stages: per-coefficient VAEs, then E^c + conditional transformer (generator).

Every optimisation step draws its randomness from ``SeedSequence([seed, stage, step])``, so a run is
deterministic for a seed and a resumed run continues exactly where the interrupted one stopped
(module weights and optimiser moments come from the last saved state; no RNG state is needed).

Several processes (``torchrun``, gloo on CPU, NCCL on GPUs) and gradient accumulation share one
rule: a step's global batch is made of ``shards = processes x accumulate`` micro-batches;
micro-batch ``k`` draws from ``SeedSequence([seed, stage, step, k])`` and from shard ``k`` of the (subject,
transform) pairs, and the gradients are averaged over all of them. So 2 processes and 1 process
accumulating 2 micro-batches train the same model (up to float summation order), and a run can
resume with any split of the same number of shards.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .state import load_state, save_state

LOG = logging.getLogger("gentract.train")


# ----------------------------------------------------------------------------- settings
@dataclass
class VAESettings:
    steps_per_coefficient: int = 100
    batch_size: int = 2
    patch_size: int = 32
    lr: float = 1e-3


@dataclass
class GeneratorSettings:
    steps: int = 2000
    batch_size: int = 256
    lr: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    validate_every: int = 250
    checkpoint_every: int = 250


@dataclass
class RunContext:
    """Where and how a training run executes."""

    run_dir: Path
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    rank: int = 0
    world_size: int = 1
    accumulate: int = 1       # micro-batches per process per step (gradient accumulation)
    timings: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shards(self) -> int:
        """Micro-batches in one step's global batch, over all processes."""
        return self.world_size * self.accumulate

    @property
    def local_shards(self) -> range:
        """The shard (micro-batch) indices this process computes."""
        return range(self.rank * self.accumulate, (self.rank + 1) * self.accumulate)


def shard(pairs: list, index: int, count: int) -> list:
    """Shard ``index`` of ``count`` of ``pairs``, DistributedSampler's rule: the list is padded by
    wrapping around to a multiple of ``count``; shard ``k`` takes every ``count``-th item from k."""
    n = len(pairs)
    return [pairs[i % n] for i in range(index, -(-n // count) * count, count)]


def _distributed(ctx: RunContext) -> bool:
    return ctx.world_size > 1


def average_gradients(params, ctx: RunContext) -> None:
    """Average ``.grad`` over the processes (what DDP does; for the two-optimiser VAE stage)."""
    if not _distributed(ctx):
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])  # one all-reduce, not one per tensor
    dist.all_reduce(flat)
    flat /= ctx.world_size
    for g, part in zip(grads, torch.split(flat, [g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def broadcast_parameters(module: nn.Module, ctx: RunContext) -> None:
    """Every process starts from rank 0's weights."""
    if _distributed(ctx):
        import torch.distributed as dist

        for t in module.state_dict().values():
            dist.broadcast(t, 0)


def mean_rows(rows: list[dict], ctx: RunContext) -> dict:
    """Average scalar losses over this process's micro-batches, then over the processes."""
    keys = sorted(rows[0])
    values = torch.tensor([[float(r[k]) for k in keys] for r in rows],
                          dtype=torch.float64).mean(0)
    if _distributed(ctx):
        import torch.distributed as dist

        dist.all_reduce(values)
        values /= ctx.world_size
    return dict(zip(keys, values.tolist()))


def step_generators(seed: int, stage: str, step: int, shard: int = 0):
    """(numpy Generator, torch Generator) for one micro-batch (``shard``) of one optimisation step
    of one stage."""
    ss = np.random.SeedSequence([seed, zlib.crc32(stage.encode()), step, shard])
    rng = np.random.default_rng(ss)
    tg = torch.Generator().manual_seed(int(ss.generate_state(1, np.uint64)[0] >> 1))
    return rng, tg


def autocast(device: str):
    """bf16 autocast on CUDA; nothing on CPU."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, unit="step",
                dynamic_ncols=True, mininterval=2.0)


class _CSVLog:
    """Append-only CSV of loss rows (kept across resumes)."""

    def __init__(self, path: Path, columns: list[str], enabled: bool = True):
        self.path, self.columns, self.enabled = Path(path), columns, enabled
        if enabled and not self.path.exists():
            with self.path.open("w", newline="") as fh:
                csv.writer(fh).writerow(columns)

    def truncate_after(self, key: str, value: int) -> None:
        """Drop rows logged after ``value`` (a resumed run repeats them identically)."""
        if not self.enabled:
            return
        with self.path.open() as fh:
            rows = list(csv.DictReader(fh))
        keep = [r for r in rows if int(r[key]) < value]
        with self.path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, self.columns)
            w.writeheader()
            w.writerows(keep)

    def write(self, **row) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as fh:
            csv.writer(fh).writerow([_fmt(row.get(c, "")) for c in self.columns])


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


# ----------------------------------------------------------------------------- VAE stage
def random_patches(volume: torch.Tensor, mask: np.ndarray, size: int, n: int,
                   rng: np.random.Generator) -> torch.Tensor:
    """``n`` cubic patches of ``volume`` (C, X, Y, Z) centred on random voxels of ``mask``.

    Returns (n, C, size, size, size); patches that stick out of the volume are zero padded."""
    centres = np.argwhere(mask)
    picks = centres[rng.integers(len(centres), size=n)]
    half = size // 2
    padded = torch.nn.functional.pad(volume, (half, half, half, half, half, half))
    out = [padded[:, x:x + size, y:y + size, z:z + size] for x, y, z in picks]
    return torch.stack(out)


def train_vaes(model, data, pairs, settings: VAESettings, ctx: RunContext) -> list[dict]:
    """Train the m per-coefficient VAEs one after the other on random patches.

    ``data.volume(pair)`` gives a z-scored (m, X, Y, Z) tensor and ``data.mask(pair)`` its brain
    mask. State is saved after each coefficient, so an interrupted stage resumes at the next one."""
    from ..model.vae import build_discriminator, discriminator_loss, vae_step_losses

    cfg = model.config.vae
    vaes = model.vaes.vaes
    state_path = ctx.run_dir / "state" / "vae"
    log = _CSVLog(ctx.run_dir / "losses_vae.csv",
                  ["coefficient", "step", "loss", "l1", "kl", "adv", "disc"], ctx.is_main)
    info = load_state(state_path, {"vaes": model.vaes}, {}) or {"done": 0}
    start = int(info["done"])
    if start:
        LOG.warning("resuming the VAE stage at coefficient %d of %d", start, len(vaes))
        log.truncate_after("coefficient", start)
    shards = [shard(pairs, k, ctx.shards) for k in range(ctx.shards)]
    t0 = time.perf_counter()
    bar = _progress(len(vaes) * settings.steps_per_coefficient,
                    start * settings.steps_per_coefficient, "VAEs", ctx.progress and ctx.is_main)
    summary = []
    for c in range(start, len(vaes)):
        vae = vaes[c].to(ctx.device).train()
        # a seeded discriminator per coefficient: a resumed stage starts the same as a whole one
        torch.manual_seed(int(step_generators(ctx.seed, f"disc{c}", 0)[1].initial_seed()))
        disc = build_discriminator(cfg).to(ctx.device).train()
        broadcast_parameters(vae, ctx)
        broadcast_parameters(disc, ctx)
        opt_g = torch.optim.Adam(vae.parameters(), lr=settings.lr)
        opt_d = torch.optim.Adam(disc.parameters(), lr=settings.lr)
        for s in range(settings.steps_per_coefficient):
            opt_g.zero_grad(set_to_none=True)
            micro = []
            for k in ctx.local_shards:
                rng, tg = step_generators(ctx.seed, f"vae{c}", s, k)
                torch.manual_seed(int(tg.initial_seed()))
                pair = shards[k][rng.integers(len(shards[k]))]
                x = random_patches(data.volume(pair)[c:c + 1], data.mask(pair),
                                   settings.patch_size, settings.batch_size, rng).to(ctx.device)
                with autocast(ctx.device):
                    losses = vae_step_losses(vae, disc, x, s, cfg)
                (losses["loss"] / ctx.accumulate).backward()
                micro.append((x, losses))
            average_gradients(vae.parameters(), ctx)
            opt_g.step()
            d_losses = [torch.zeros(())] * len(micro)
            if ("reconstruction" in micro[0][1] and s >= cfg.adv_warmup_steps
                    and cfg.adv_weight > 0):
                opt_d.zero_grad(set_to_none=True)
                for i, (x, losses) in enumerate(micro):
                    with autocast(ctx.device):
                        d_losses[i] = discriminator_loss(disc, x,
                                                         losses["reconstruction"].detach())
                    (d_losses[i] / ctx.accumulate).backward()
                average_gradients(disc.parameters(), ctx)
                opt_d.step()
            row = mean_rows([{**{k: v.detach() for k, v in losses.items() if v.ndim == 0},
                              "disc": d.detach()} for (_, losses), d in zip(micro, d_losses)],
                            ctx)
            log.write(coefficient=c, step=s, loss=row.get("loss"), l1=row.get("l1"),
                      kl=row.get("kl"), adv=row.get("adv", 0.0), disc=row["disc"])
            bar.set_postfix(coef=c, l1=f"{row.get('l1', 0):.3f}")
            bar.update(1)
        vae.eval()
        summary.append({"coefficient": c, "final_l1": row.get("l1")})
        if ctx.is_main:
            save_state(state_path, {"vaes": model.vaes}, {}, {"done": c + 1})
    bar.close()
    ctx.timings["vae_seconds"] = round(time.perf_counter() - t0, 1)
    return summary


# ----------------------------------------------------------------------------- generator stage
class GeneratorStep(nn.Module):
    """E^c + transformer + objective as one module whose forward is the training loss.

    Wrapping them this way lets ``DistributedDataParallel`` see every trainable parameter."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.encoder = model.encoder
        self.transformer = model.transformer

    def forward(self, latents: torch.Tensor, x1: torch.Tensor, generator: torch.Generator,
                volume: torch.Tensor | None = None):
        context = self.model.context_from_latents(latents)
        return self.model.generator_loss(context, x1, generator=generator, volume=volume)


@torch.no_grad()
def cache_latents(model, data, pairs, device: str) -> dict:
    """VAE posterior means of every (subject, rotation) pair: the VAEs are frozen in this stage."""
    model.vaes.eval()
    out = {}
    for pair in pairs:
        out[pair] = model.vaes.encode(data.volume(pair)[None].to(device)).cpu()
    return out


def _lr_lambda(warmup: int, total: int):
    def f(step):
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        frac = (step - warmup) / max(total - warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0)))  # cosine to 10 %

    return f


def _pair_volume(model, data, pair, device: str):
    """The pair's z-scored SH volume (1, m, X, Y, Z) when the model samples it (local features)."""
    return data.volume(pair)[None].to(device) if model.uses_volume else None


@torch.no_grad()
def validation_loss(model, data, latents, pairs, batch_size: int, seed: int, device: str,
                    n_batches: int = 4) -> float:
    """Mean generator loss over fixed batches of ``pairs`` (same noise every evaluation)."""
    if not pairs:
        return float("nan")
    model.eval()
    total = 0.0
    for i in range(n_batches):
        rng, tg = step_generators(seed, "validation", i)
        pair = pairs[i % len(pairs)]
        x1 = torch.from_numpy(data.sample_batch(pair, batch_size, rng)).to(device)
        context = model.context_from_latents(latents[pair].to(device))
        total += float(model.generator_loss(context, x1, generator=tg,
                                            volume=_pair_volume(model, data, pair, device)))
    model.train()
    return total / n_batches


def train_generator(model, data, train_pairs, val_pairs, settings: GeneratorSettings,
                    ctx: RunContext, on_checkpoint=None) -> dict:
    """Train E^c and the transformer jointly (VAEs frozen).

    Each step: one (subject, rotation) pair's cached VAE latents -> E^c -> context z, and a
    random batch of that subject's streamlines (random orientation) -> objective loss."""
    device = ctx.device
    for p in model.vaes.parameters():
        p.requires_grad_(False)
    t_cache = time.perf_counter()
    latents = cache_latents(model, data, list(dict.fromkeys(train_pairs + val_pairs)), device)
    ctx.timings["latent_cache_seconds"] = round(time.perf_counter() - t_cache, 1)
    step_module = GeneratorStep(model).to(device).train()
    trainable = [p for p in step_module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    lr_at = _lr_lambda(settings.warmup_steps, settings.steps)
    wrapped = step_module
    if ctx.world_size > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[torch.device(device).index] if "cuda" in device else None)
    state_path = ctx.run_dir / "state" / "generator"
    log = _CSVLog(ctx.run_dir / "losses_generator.csv",
                  ["step", "loss", "val_loss", "lr", "streamlines_per_s"], ctx.is_main)
    trained = {"encoder": model.encoder, "transformer": model.transformer}
    if model.local is not None:  # local fODF features: their MLP is trained with the generator
        trained["local"] = model.local
    info = load_state(state_path, trained,
                      {"opt": opt}) or {"step": 0}
    start = int(info["step"])
    if start:
        LOG.warning("resuming the generator stage at step %d of %d", start, settings.steps)
        log.truncate_after("step", start)
    t0 = time.perf_counter()
    bar = _progress(settings.steps, start, "generator", ctx.progress and ctx.is_main)
    recent: list[float] = []
    step_seconds: list[float] = []
    shards = [shard(train_pairs, k, ctx.shards) for k in range(ctx.shards)]
    for step in range(start, settings.steps):
        lr = settings.lr * lr_at(step)  # a function of the step: nothing to restore on resume
        for group in opt.param_groups:
            group["lr"] = lr
        ts = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        losses = []
        for j, k in enumerate(ctx.local_shards):
            rng, tg = step_generators(ctx.seed, "generator", step, k)
            torch.manual_seed(int(tg.initial_seed()))
            pair = shards[k][rng.integers(len(shards[k]))]
            x1 = torch.from_numpy(data.sample_batch(pair, settings.batch_size, rng)).to(device)
            # DDP averages the gradients on the last micro-batch's backward only
            sync = wrapped is step_module or j + 1 == ctx.accumulate
            with contextlib.nullcontext() if sync else wrapped.no_sync():
                with autocast(device):
                    loss = wrapped(latents[pair].to(device), x1, tg,
                                   _pair_volume(model, data, pair, device))
                (loss / ctx.accumulate).backward()
            losses.append({"loss": loss.detach()})
        if settings.grad_clip:
            nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
        opt.step()
        loss = mean_rows(losses, ctx)["loss"]
        step_seconds.append(time.perf_counter() - ts)
        rate = settings.batch_size * ctx.shards / max(step_seconds[-1], 1e-9)
        recent = (recent + [loss])[-50:]
        row = {"step": step, "loss": recent[-1], "lr": lr,
               "streamlines_per_s": rate}
        last = step + 1 == settings.steps
        if ctx.is_main and ((step + 1) % settings.validate_every == 0 or last):
            row["val_loss"] = validation_loss(model, data, latents, val_pairs,
                                              settings.batch_size, ctx.seed, device)
        log.write(**row)
        bar.set_postfix(loss=f"{np.mean(recent):.4f}", sl_s=f"{rate:.0f}")
        bar.update(1)
        if ctx.is_main and ((step + 1) % settings.checkpoint_every == 0 or last):
            save_state(state_path, trained,
                       {"opt": opt}, {"step": step + 1})
            if on_checkpoint is not None:
                on_checkpoint(step + 1)
    bar.close()
    ctx.timings["generator_seconds"] = round(time.perf_counter() - t0, 1)
    if step_seconds:
        ctx.timings["generator_step_seconds"] = round(float(np.median(step_seconds)), 4)
    model.eval()
    return {"final_train_loss": float(np.mean(recent)) if recent else None}


def init_distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) — a ``torchrun`` launch sets WORLD_SIZE/RANK/LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return dist.get_rank(), world, device


@contextlib.contextmanager
def main_first(ctx_or_rank, world_size: int = 1):
    """Rank 0 runs the block first (writes config, split, caches), then the others (read them)."""
    rank = getattr(ctx_or_rank, "rank", ctx_or_rank)
    world = getattr(ctx_or_rank, "world_size", world_size)
    if world > 1 and rank > 0:
        torch.distributed.barrier()
    yield
    if world > 1 and rank == 0:
        torch.distributed.barrier()


def finish_distributed() -> None:
    """Wait for every process, then leave the process group (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
