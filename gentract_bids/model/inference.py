"""GenTract inference: load a checkpoint, check it fits the data, sample a tractogram in chunks.

Plain functions; the nipype interface (:class:`~gentract_bids.interfaces.gentract.GenTractSample`)
and the benchmarks call them::

    model, meta = load_model()                      # the default shipped model (human phantoms)
    check_compatible(meta, sh_order=6, grid_spacing=1.875, grid_shape=(80, 112, 96))
    info = sample_tractogram(model, meta, zscored_sh, "out.trx", n_streamlines=100_000,
                             ref_affine=mask.affine, ref_shape=mask.shape, seed=1)

Peak memory does not grow with the number of streamlines: each batch is written to a memory-mapped
positions file as soon as it is sampled, and the tractogram file is assembled from that file.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ..config import PRECISIONS
from ..errors import CheckpointError, UsageError
from ..fodf.csd import SH_BASIS
from ..io.checkpoint import load_checkpoint
from .gentract import SAMPLERS, CoordinateScaler
from .support import EXPECTED_OVERSAMPLING, GUIDANCE_CAP

SHIPPED_MODELS_DIR = Path(__file__).resolve().parents[1] / "data" / "models"
HUMAN_MODEL = SHIPPED_MODELS_DIR / "gentract_human_phantom"  # human-anatomy phantoms, MNI space
TUBE_MODEL = SHIPPED_MODELS_DIR / "gentract_phantom"  # the 22-tube phantoms
SHIPPED_MODEL = HUMAN_MODEL  # the app's default
# metadata_sha256 of each shipped checkpoint: its JSON records the weights' and the template's
# sha256, so this pins all three files (an edited JSON whose checksum was recomputed is caught too)
SHIPPED_CHECKSUMS = {
    "gentract_human_phantom": "fea2192e34f2c0a4ff78fb9d5cd1045177dd4bebcac29d16341eca8690082895",
    "gentract_phantom": "6ff0a0e2e4646f49a81db64a924088f0eed7e64e69d7b38217f7534bb344aecc",
}
# the support filter's acceptance each shipped model showed on its dev cohort (ModelFit)
EXPECTED_ACCEPTANCE_FILE = SHIPPED_MODELS_DIR / "expected_acceptance.json"
MODEL_FIT_RATIO = 1 / 3  # acceptance below this fraction of the expected: "does not fit"
OUTPUT_FORMATS = ("trx", "tck", "trk")
LOG = logging.getLogger("gentract.inference")
PROGRESS_SECONDS = 30.0  # a progress line at least this often, and every 10 % kept
LAST_BATCH_MARGIN = 1.2  # with the support filter, draw 1.2 x what the acceptance rate says
MIN_BATCH = 32  # the smallest batch drawn for the rest (a few more draws cost less than a call)
# the largest automatic batch on a CPU: larger batches leave the cache and run slower per streamline
# (tube model, 1 thread, bfloat16, 10k raw draws: 1024 -> 47 s sampling, 77 % of the float32
# matmul peak, 793 MiB; 2048 -> 57 %; 8192 -> 81 s, 46 %, 1325 MiB)
CPU_BATCH_CAP = 1024
CUDA_BATCH_CAP = 65536


class ModelMismatchError(UsageError):
    """The checkpoint does not fit the data the run produces (SH order, basis or grid)."""


def shipped_models() -> list[str]:
    """Names of the checkpoints shipped with the package (``--model NAME`` selects one)."""
    return sorted(p.name[: -len(".json")] for p in SHIPPED_MODELS_DIR.glob("*.json")
                  if p.with_suffix(".safetensors").exists())  # not expected_acceptance.json


def resolve_model_path(path=None) -> Path:
    """``path`` (either checkpoint file or their stem), the name of a shipped checkpoint
    (:func:`shipped_models`), or the default shipped model when None."""
    if not path:
        return SHIPPED_MODEL
    if str(path) in shipped_models() and not Path(path).exists():
        return SHIPPED_MODELS_DIR / str(path)
    return Path(path)


def load_model(path=None, device: str = "cpu", expected_sha256: str | None = None):
    """``(GenTract, metadata)`` of the checkpoint at ``path`` (default: the shipped model)."""
    path = resolve_model_path(path)
    try:
        _check_shipped(path)
        return load_checkpoint(path, device=device, expected_sha256=expected_sha256)
    except CheckpointError as err:
        if path.parent.resolve() == SHIPPED_MODELS_DIR.resolve():
            raise CheckpointError(f"the shipped model {path.name} is unusable ({err}); "
                                  "reinstall gentract or give a checkpoint with --model") from None
        raise


def _check_shipped(path: Path) -> None:
    """A shipped checkpoint must carry the metadata checksum pinned in :data:`SHIPPED_CHECKSUMS`."""
    from ..io.checkpoint import checkpoint_paths, read_checkpoint_metadata

    weights, _ = checkpoint_paths(path)
    stem = weights.name[: -len(".safetensors")]
    if weights.parent.resolve() != SHIPPED_MODELS_DIR.resolve() or stem not in SHIPPED_CHECKSUMS:
        return
    got = read_checkpoint_metadata(path).get("metadata_sha256")
    if got != SHIPPED_CHECKSUMS[stem]:
        raise CheckpointError(f"the shipped checkpoint {stem}.json is not the one released with "
                              f"this version (metadata sha256 {str(got)[:12]}…, expected "
                              f"{SHIPPED_CHECKSUMS[stem][:12]}…)")


def sampler_defaults(path=None) -> dict:
    """The sampler defaults of the checkpoint at ``path`` (a path, stem or shipped name; None:
    the default model): :data:`~gentract_bids.model.support.SAMPLER_DEFAULTS` updated by the
    ``sampler_defaults`` its JSON carries. A checkpoint that cannot be read gives the app's (its
    error comes when it is loaded); unknown keys are refused (:class:`UsageError`)."""
    from ..io.checkpoint import read_checkpoint_metadata
    from .support import SAMPLER_DEFAULTS

    try:
        found = read_checkpoint_metadata(resolve_model_path(path)).get("sampler_defaults") or {}
    except CheckpointError:
        found = {}
    check_sampler_defaults(found, f"the checkpoint {path or SHIPPED_MODEL.name}")
    return {**SAMPLER_DEFAULTS, **found}


def check_sampler_defaults(values, name: str) -> None:
    """Refuse (:class:`UsageError`) ``sampler_defaults`` with keys the app does not know."""
    from .support import SAMPLER_DEFAULTS

    unknown = sorted(set(values) - set(SAMPLER_DEFAULTS)) if isinstance(values, dict) else values
    if unknown:
        raise UsageError(f"{name}: its sampler_defaults has unknown keys {unknown} "
                         f"(known: {', '.join(SAMPLER_DEFAULTS)})")


def model_sampler(meta: dict) -> str:
    """The sampler that fits a checkpoint's objective (``ddim`` or ``flow``)."""
    return SAMPLERS[meta["model_config"].get("objective", "diffusion")]


def check_compatible(meta: dict, *, sh_order: int, sh_basis: str = SH_BASIS,
                     legacy_basis: bool = False, grid_spacing: float | None = None,
                     grid_shape=None, sampler: str | None = None, name: str = "the model") -> None:
    """Refuse (:class:`ModelMismatchError`) a checkpoint that does not fit the run's fODFs."""
    problems = []
    if int(meta["sh_order"]) != int(sh_order):
        problems.append(f"it was trained on SH order {meta['sh_order']} but this run fits "
                        f"order {sh_order} (--sh-order)")
    if meta.get("sh_basis") != sh_basis or bool(meta.get("legacy_basis")) != bool(legacy_basis):
        problems.append(f"it expects the {meta.get('sh_basis')} SH basis (legacy: "
                        f"{meta.get('legacy_basis')}), this run writes {sh_basis} (legacy: "
                        f"{legacy_basis})")
    if grid_spacing is not None and not np.isclose(float(meta["grid_spacing"]), grid_spacing):
        problems.append(f"its grid spacing is {meta['grid_spacing']} mm, not {grid_spacing} mm")
    if grid_shape is not None and tuple(meta["grid_shape"]) != tuple(grid_shape):
        problems.append(f"its grid is {tuple(meta['grid_shape'])}, not {tuple(grid_shape)}")
    for key in ("zscore", "coord_bounds"):
        if not meta.get(key):
            problems.append(f"its metadata lacks '{key}'")
    if sampler is not None and sampler != model_sampler(meta):
        problems.append(f"it was trained with the {meta['model_config'].get('objective')} "
                        f"objective, which samples with --sampler {model_sampler(meta)}, "
                        f"not {sampler}")
    if problems:
        raise ModelMismatchError(f"{name} does not fit this run: " + "; ".join(problems))


def expected_acceptance(meta: dict) -> dict | None:
    """The entry of :data:`EXPECTED_ACCEPTANCE_FILE` whose ``sha256`` is the checkpoint's."""
    if not EXPECTED_ACCEPTANCE_FILE.exists():
        return None
    table = json.loads(EXPECTED_ACCEPTANCE_FILE.read_text())
    return next((dict(v, Name=k) for k, v in table.items()
                 if v.get("sha256") == meta.get("sha256")), None)


def _sampler_key(sampler: dict) -> tuple:
    """The settings that change the support filter's acceptance: guidance scale, SMC times and,
    with SMC, the connectivity prior (it weighs the resampling too; without SMC it acts after
    the filter, not on what the filter sees)."""
    smc = tuple(round(float(t), 6) for t in sampler.get("smc_times") or ())
    return (round(float(sampler.get("guidance_scale") or 0.0), 6), smc,
            bool(smc and sampler.get("connectivity_prior")))


def _sampler_words(sampler: dict) -> str:
    g, smc, prior = _sampler_key(sampler)
    return (f"guidance scale {g:g}, "
            + (f"SMC at {', '.join(f'{t:g}' for t in smc)}" if smc else "no SMC")
            + (" weighed by the connectivity prior" if prior else ""))


def model_fit(meta: dict, acceptance: float, sampler: dict | None = None) -> dict:
    """The sidecar's ``ModelFit``: the support filter's acceptance against the one the model
    showed on its own dev cohort with the same sampler settings (``sampler``: the run's
    ``guidance_scale``, ``smc_times`` and ``connectivity_prior``; None: the expectation's own); ``Verdict`` is ``does
    not fit`` below :data:`MODEL_FIT_RATIO` of it, ``fits`` otherwise, ``unknown`` for a
    checkpoint without a measured expectation, or none measured with these settings (guidance
    and SMC lift the acceptance two to three times: an unguided run is not compared with a
    guided expectation)."""
    entry = expected_acceptance(meta)
    fit = {"Acceptance": round(float(acceptance), 4), "ExpectedAcceptance": None,
           "Ratio": None, "Verdict": "unknown",
           "Message": "no expected acceptance is known for this checkpoint"}
    if entry is None:
        return fit
    measured = [{"sampler": entry.get("sampler") or {}, "acceptance": entry["acceptance"]},
                *entry.get("other_samplers", [])]
    want = _sampler_key(sampler if sampler is not None else measured[0]["sampler"])
    match = next((m for m in measured if _sampler_key(m["sampler"]) == want), None)
    if match is None:
        fit["Message"] = ("the expected acceptance of this checkpoint was measured with "
                          + "; ".join(_sampler_words(m["sampler"]) for m in measured)
                          + f", not with this run's {_sampler_words(sampler)}: not compared")
        return fit
    expected = float(match["acceptance"])
    ratio = acceptance / expected
    fits = ratio >= MODEL_FIT_RATIO
    fit.update(ExpectedAcceptance=expected,
               ExpectedFrom=match.get("measured_on", entry.get("measured_on")),
               ExpectedSampler=_sampler_words(match["sampler"]),
               Ratio=round(ratio, 3), Verdict="fits" if fits else "does not fit")
    fit["Message"] = (
        f"the fODF supports {100 * acceptance:.1f} % of this model's draws, "
        f"{'in line with' if fits else 'far below'} the "
        f"{100 * expected:.1f} % it showed on its validation phantoms"
        + ("" if fits else
           ": the model does not fit this subject, its streamlines are the few the fODF "
           "supports and may miss most bundles"))
    return fit


def _available_bytes(device: str) -> int:
    """Free memory of ``device``, at most the run's ``--mem`` budget (``GENTRACT_MEM_MB``)."""
    free = _free_bytes(device)
    budget = os.environ.get("GENTRACT_MEM_MB")
    return min(free, int(budget) * 2**20) if budget else free


def _free_bytes(device: str) -> int:
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 << 30


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 dot products in hardware (the ``avx512_bf16`` or
    ``amx_bf16`` flag). Elsewhere bfloat16 is emulated and no faster than float32."""
    try:
        flags = Path(cpuinfo).read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(device: str, requested: str = "auto") -> str:
    """The number format of the network while it samples: ``float32`` or ``bfloat16`` (autocast:
    matrix products in bfloat16, accumulated in float32; the context, the fODF guidance, SMC
    weights and the support filter stay float32). ``auto``: bfloat16 on CUDA and on a CPU with
    native bfloat16 (held-out tube subject, 3000 streamlines: 38 % less CPU, the same precision
    and VB; docs/benchmarks.md), else float32."""
    if requested not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested}")
    if requested != "auto":
        return requested
    native = device.startswith("cuda") or cpu_has_native_bf16()
    return "bfloat16" if native else "float32"


def auto_batch_size(model, device: str = "cpu", fraction: float = 0.25,
                    n_context_tokens: int | None = None, n_streamlines: int | None = None,
                    oversampling: float = 1.0, free_bytes: int | None = None) -> int:
    """Streamlines per batch from free memory: ``fraction`` of it over a per-streamline estimate
    of the transformer's activations (self- and cross-attention scores, feed-forward), rounded
    down to a power of two, between 64 and :data:`CPU_BATCH_CAP` (CPU: larger batches run slower
    per streamline there) or :data:`CUDA_BATCH_CAP`. With ``n_streamlines``,
    never more than one batch needs: ``n_streamlines`` x ``oversampling`` (the support filter's
    expected draws per kept streamline) rounded up to a power of two, at least 64.
    ``free_bytes``: the memory to size for (default: what is free, capped by ``--mem``)."""
    t = model.config.transformer
    p, w = t.n_points, t.width
    tokens = n_context_tokens or int(np.prod(model.context_grid_shape))
    floats = p * (w * (6 + t.ff_mult) + t.heads * (p + tokens)) * 3  # x3: inputs, outputs, temps
    per_streamline = 4 * floats
    free = _available_bytes(device) if free_bytes is None else free_bytes
    n = int(free * fraction // per_streamline)
    cap = CUDA_BATCH_CAP if device.startswith("cuda") else CPU_BATCH_CAP
    n = 1 << (max(64, min(cap, n)).bit_length() - 1)
    if n_streamlines is not None:
        need = max(64, int(np.ceil(n_streamlines * oversampling)))
        n = min(n, 1 << (need - 1).bit_length())
    return n


def sh_tensor(model, zscored_sh: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """(X, Y, Z, m) z-scored SH on the model's grid -> a (m, X, Y, Z) float32 tensor on ``device``."""
    grid = tuple(model.config.grid_shape)
    if tuple(zscored_sh.shape[:3]) != grid or zscored_sh.shape[3] != model.config.n_coeffs:
        raise ModelMismatchError(f"the canonical fODF has shape {tuple(zscored_sh.shape)}, the "
                                 f"model expects {grid + (model.config.n_coeffs,)}")
    vol = torch.from_numpy(np.ascontiguousarray(np.moveaxis(zscored_sh, -1, 0), np.float32))
    return vol.to(device)


def fod_support(meta: dict, zscored_sh: np.ndarray, mask: np.ndarray, affine,
                threshold: float | None = None) -> "FodSupport":
    """The fODF support test of a subject from its z-scored canonical fODF (``mask`` and
    ``affine`` of the canonical grid): the coefficients are un-z-scored with the checkpoint's
    statistics. ``threshold`` None: the default."""
    from ..fodf.grid import unzscore
    from .support import FodSupport, SupportSettings

    z = meta["zscore"]
    sh = unzscore(zscored_sh, np.asarray(z["mean"]), np.asarray(z["std"]), mask)
    settings = SupportSettings() if threshold is None else SupportSettings(threshold=threshold)
    return FodSupport(sh, mask, affine, settings)


def sample_tractogram(model, meta: dict, zscored_sh: np.ndarray, out_file, *, n_streamlines: int,
                      ref_affine, ref_shape, steps: int | None = None, sampler: str | None = None,
                      batch_size: int | None = None, seed: int = 0, device: str = "cpu",
                      context: torch.Tensor | None = None, support=None,
                      to_subject=None, guidance_scale: float = 0.0, smc_times=(),
                      density_strength: float = 0.0, density_cell_mm: float | None = None,
                      smc_density: bool = False,
                      connectivity=None,
                      time_schedule: str = "uniform",
                      precision: str = "auto") -> dict:
    """Sample ``n_streamlines`` whole streamlines and write them (RAS+ mm) to ``out_file``.

    ``zscored_sh`` is the subject's z-scored SH volume on the model's canonical grid (with a
    precomputed ``context`` it is used only by a model with local fODF features). ``ref_affine``/``ref_shape`` describe the reference image of
    the tractogram header (the subject's native grid). The same ``seed`` gives the same streamlines
    on the same device and ``precision``, whatever ``batch_size`` (default: :func:`auto_batch_size`
    for this request) on the CPU without SMC (tested): only the initial noise is random, drawn batch
    after batch from one generator stream. With ``smc_times`` the batch matters (SMC resamples a
    streamline among those of its batch): the same
    ``batch_size`` gives the same streamlines, and the default one depends on free memory only
    below about 0.7 GiB free (a warning says so). On CUDA this is not guaranteed (the noise and the
    kernels may depend on the batch shape), nor when the support filter stops at
    ``max_oversampling``: the last batch drawn then decides how many are kept. With ``support`` (a :class:`~gentract_bids.model.support.FodSupport`),
    every batch is trimmed and filtered by its fODF support and batches are drawn until
    ``n_streamlines`` are kept (or ``max_oversampling`` times as many were drawn: then fewer are
    written and the sidecar says so). ``to_subject`` (4, 4) maps the model's coordinates to the
    subject's mm (:func:`gentract_bids.registration.template.subject_map`); the streamlines are
    sampled and filtered in model coordinates and written through it. ``guidance_scale`` > 0
    (flow models, with ``support``): every flow step is guided by the fODF support of its
    predicted clean streamline (:class:`~gentract_bids.model.support.FodGuidance`).
    ``smc_times`` (flow models, with ``support``): sequential Monte Carlo, the batch is resampled
    by the support of its predicted streamlines at these times in (0, 1)
    (:func:`~gentract_bids.model.flow.smc_resample`,
    :class:`~gentract_bids.model.support.SupportWeight`).
    ``density_strength`` > 0 (with ``support``): supported streamlines are kept by a
    density-aware acceptance (:class:`~gentract_bids.model.support.DensityAcceptance`, its end
    cells ``density_cell_mm`` wide, None: its default); ``smc_density`` (with it and ``smc_times``): its keep probability also weighs the SMC
    resampling, so fewer particles go on to crowded end cells.
    ``time_schedule`` (flow models): the times of the ``steps`` ODE steps,
    :func:`~gentract_bids.model.flow.time_grid` (``uniform``, the default, ``late``, ``early`` or
    ``cosine``).

    ``connectivity`` (a :class:`~gentract_bids.model.connectivity.ConnectivityPrior`, with
    ``support``): supported streamlines whose endpoint pair the training cohort never joins are
    rejected, and weigh almost nothing in the SMC resampling. ``precision``: the network's number
    format while it samples (:func:`resolve_precision`). Returns the
    sidecar metadata: sampler, steps, seed, device,
    counts, timings, streamlines per second and peak memory."""
    out_file = Path(out_file)
    if os.environ.get("GENTRACT_NTHREADS"):  # --nthreads, in a nipype worker too
        torch.set_num_threads(int(os.environ["GENTRACT_NTHREADS"]))
    to_subject = None if to_subject is None else np.asarray(to_subject, np.float64)
    if n_streamlines < 1:
        raise ValueError(f"n_streamlines must be positive, got {n_streamlines}")
    fmt = out_file.suffix.lstrip(".").lower()
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unsupported tractogram format: {out_file.name}")
    sampler = sampler or model_sampler(meta)
    check_sampler = model_sampler(meta)
    if sampler != check_sampler:
        raise ModelMismatchError(f"--sampler {sampler} does not fit this model (use {check_sampler})")
    steps = int(steps or model.config.steps)
    if not batch_size:
        sizing = dict(n_streamlines=n_streamlines,
                      oversampling=1.0 if support is None else EXPECTED_OVERSAMPLING)
        batch_size = auto_batch_size(model, device, **sizing)
        roomy = auto_batch_size(model, device, free_bytes=1 << 62, **sizing)
        if smc_times and batch_size < roomy:
            LOG.warning("free memory (or --mem) shrinks the sampling batch from %d to %d: SMC "
                        "resamples within a batch, so these streamlines differ from a run with "
                        "more memory; --batch-size %d reproduces this run",
                        roomy, batch_size, batch_size)
    batch_size = int(batch_size)
    scaler = CoordinateScaler.from_dict(meta["coord_bounds"])
    p = model.config.n_points
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    precision = resolve_precision(device, precision)

    def autocast():
        return (torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
                if precision == "bfloat16" else nullcontext())
    vol = sh_tensor(model, zscored_sh, device) if context is None or model.uses_volume else None
    if context is None:  # under the sampling's number format too: 4x faster in bfloat16
        with torch.inference_mode(), autocast():
            context = model.encode_context(vol).float()
    volume = vol if model.uses_volume else None  # local fODF features sample it at every step
    t_context = time.perf_counter() - t0

    guidance = None
    if guidance_scale:
        from .support import FodGuidance

        if support is None or sampler != "flow":
            raise UsageError("--guidance-scale needs the support filter and a flow model")
        guidance = FodGuidance(support, scaler, model.config.data_scale,
                               guidance_scale, device)
    if connectivity is not None and support is None:
        raise UsageError("the connectivity prior needs the support filter")
    density = None
    if density_strength:
        from .support import DensityAcceptance

        if support is None:
            raise UsageError("--density-acceptance needs the support filter")
        density = DensityAcceptance(density_strength, seed=int(seed),
                                    **({"cell_mm": density_cell_mm} if density_cell_mm else {}))
    smc = None
    if smc_times:
        from .support import SupportWeight

        if support is None or sampler != "flow":
            raise UsageError("--smc-times needs the support filter and a flow model")
        smc = (tuple(float(t) for t in smc_times),
               SupportWeight(support, scaler, model.config.data_scale,
                             connectivity=connectivity,
                             density=density if smc_density else None))
    generator = torch.Generator(device=device).manual_seed(int(seed))
    tmp = Path(tempfile.mkdtemp(prefix=".gentract-", dir=out_file.parent))
    try:
        # the TRX on-disk layout, filled batch by batch through a memory map
        positions = np.memmap(tmp / "positions.3.float32", dtype=np.float32, mode="w+",
                              shape=(n_streamlines * p, 3))
        t1 = time.perf_counter()
        done = drawn = accepted = connected = 0
        t_support = 0.0
        max_drawn = None if support is None else support.settings.max_oversampling * n_streamlines
        grid = f" on the {time_schedule} time grid" if sampler == "flow" else ""
        LOG.info("sampling %d streamlines on %s (%s) in batches of %d (%s, %d steps%s%s)",
                 n_streamlines, device, precision, batch_size, sampler, steps, grid,
                 ", support filter" if support else "")
        reported, t_report = 0, t1
        known = expected_acceptance(meta)  # the first batch's guess, else 1 in 4
        prior = float(known["acceptance"]) if known else 1.0 / EXPECTED_OVERSAMPLING

        def next_size() -> int:
            """A whole batch, or with the support filter what the running acceptance rate says
            the rest needs (x LAST_BATCH_MARGIN), never more than max_drawn allows."""
            if support is None:
                return batch_size
            rate = done / drawn if drawn else prior
            want = batch_size if rate <= 0 else int(np.ceil(
                (n_streamlines - done) / rate * LAST_BATCH_MARGIN))
            return max(1, min(batch_size, max(MIN_BATCH, want), int(max_drawn - drawn)))

        calls = 0  # network evaluations in the batch being drawn
        per_batch = steps * (2 if sampler == "flow" and model.config.flow_method == "midpoint"
                             else 1) + len(smc[0] if smc else ())

        def on_call() -> None:
            """A progress line while a long batch is drawn (every PROGRESS_SECONDS)."""
            nonlocal t_report, calls
            calls += 1
            now = time.perf_counter()
            if now - t_report >= PROGRESS_SECONDS:
                t_report = now
                LOG.info("sampling: %d/%d streamlines kept, %d drawn; drawing a batch: network "
                         "evaluation %d of about %d", done, n_streamlines, drawn, calls,
                         per_batch)

        with autocast():
            for batch in model.sample_batches(context, None if support else n_streamlines,
                                              steps=steps, batch_size=next_size,
                                              generator=generator, volume=volume,
                                              guidance=guidance, smc=smc, on_call=on_call,
                                              schedule=time_schedule):
                calls = 0
                mm = scaler.to_mm(batch.float().cpu().numpy().astype(np.float64))
                drawn += len(mm)
                if support is not None:
                    ts = time.perf_counter()
                    mm = support.filter(mm)
                    accepted += len(mm)
                    if connectivity is not None and len(mm):
                        mm = mm[connectivity.allowed(mm)]
                        connected += len(mm)
                    if density is not None and len(mm):
                        mm = mm[density.accept(mm, n_streamlines - done)]
                    mm = mm[:n_streamlines - done]
                    t_support += time.perf_counter() - ts
                if to_subject is not None and len(mm):
                    mm = mm @ to_subject[:3, :3].T + to_subject[:3, 3]
                positions[done * p:(done + len(mm)) * p] = mm.reshape(-1, 3)
                done += len(mm)
                now = time.perf_counter()
                if 10 * done // n_streamlines > reported or now - t_report >= PROGRESS_SECONDS:
                    reported, t_report = 10 * done // n_streamlines, now
                    LOG.info("sampling: %d/%d streamlines kept (%d %%), %d drawn, %.0f kept/s",
                             done, n_streamlines, 100 * done // n_streamlines, drawn,
                             done / max(now - t1, 1e-9))
                if done >= n_streamlines or (max_drawn is not None and drawn >= max_drawn):
                    break
        positions.flush()
        t_sample = time.perf_counter() - t1
        if done == 0:
            raise ModelMismatchError(f"none of the {drawn} sampled streamlines is supported by "
                                     "the fODF; check the model fits these data (or lower "
                                     "--support-threshold)")
        if done < n_streamlines:  # fewer were kept: the on-disk layout holds exactly those
            LOG.warning("only %d of %d streamlines kept after drawing %d: the fODF supports few "
                        "of this model's streamlines", done, n_streamlines, drawn)
            del positions
            os.truncate(tmp / "positions.3.float32", done * p * 3 * 4)
            positions = np.memmap(tmp / "positions.3.float32", dtype=np.float32, mode="r+",
                                  shape=(done * p, 3))
        t2 = time.perf_counter()
        _write(positions, p, out_file, ref_affine, ref_shape, tmp)
        t_write = time.perf_counter() - t2
        del positions
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fit = None if support is None else model_fit(
        meta, accepted / drawn, {"guidance_scale": guidance_scale if guidance else 0.0,
                                 "smc_times": list(smc[0]) if smc else [],
                                 "connectivity_prior": connectivity is not None})
    if fit is not None and fit["Verdict"] == "does not fit":
        LOG.warning("model fit: %s", fit["Message"])
    peak = {"PeakRSSMiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.startswith("cuda"):
        peak["PeakGPUMemoryMiB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return {
        "Description": "Whole-brain tractogram sampled by GenTract (generative global "
                       "tractography): every streamline is generated whole, conditioned on the "
                       "subject's fODF",
        "Model": {"Name": meta.get("provenance", {}).get("recipe", "gentract"),
                  "SHA256": meta["sha256"], "Objective": meta["model_config"].get("objective"),
                  "TrainedOn": meta.get("provenance", {}).get("train_subjects")},
        "Sampler": sampler,
        "FlowMethod": model.config.flow_method if sampler == "flow" else None,
        "TimeSchedule": time_schedule if sampler == "flow" else None,
        "Steps": steps,
        "RandomSeed": int(seed),
        "Device": device,
        "Precision": precision,
        "BatchSize": batch_size,
        "NumberOfStreamlines": int(done),
        "NumberRequested": int(n_streamlines),
        "NumberSampled": int(drawn),
        "SupportFilter": (None if support is None else
                          {**support.settings.as_dict(),
                           "AcceptanceRate": round(accepted / drawn, 4),
                           "ReferenceAmplitude": support.reference}),
        "ModelFit": fit,
        "Guidance": (None if guidance is None else
                     {"Scale": float(guidance_scale), "Term": "fODF support of the predicted "
                      "clean streamline (min(amplitude, cap), summed along it)",
                      "Cap": GUIDANCE_CAP}),
        "SequentialMonteCarlo": (None if smc is None else
                                 {"Times": list(smc[0]), "WeightPower": smc[1].power}),
        "ConnectivityPrior": (None if connectivity is None else
                              {**connectivity.as_dict(),
                               "PassRate": round(connected / max(accepted, 1), 4),
                               "Description": "endpoint pairs joined by the training cohort's "
                                              "reference streamlines (model space); others "
                                              "rejected"}),
        "DensityAcceptance": (None if density is None else
                              {"Strength": density.strength, "CellMillimetres": density.cell_mm,
                               "WeighsSMC": bool(smc and smc_density),
                               "Cells": len(density.counts),
                               "MaxCellCount": density.max_count()}),
        "PointsPerStreamline": int(p),
        "ModelToSubject": None if to_subject is None else np.round(to_subject, 6).tolist(),
        "Timings": {"ContextSeconds": round(t_context, 3), "SamplingSeconds": round(t_sample, 3),
                    "SupportSeconds": round(t_support, 3), "WritingSeconds": round(t_write, 3),
                    "TotalSeconds": round(time.perf_counter() - t0, 3)},
        "StreamlinesPerSecond": round(done / max(t_sample, 1e-9), 1),
        "Memory": peak,
    }


def _write(positions: np.memmap, p: int, out_file: Path, affine, shape, layout: Path) -> None:
    """Write the tractogram from the memory-mapped ``positions`` (n·p, 3) in ``layout`` without
    an in-memory copy: TRX by completing the on-disk layout there (header, offsets), loading it
    with trx-python and zipping it; TCK/TRK by streaming through nibabel."""
    n = len(positions) // p
    partial = out_file.with_name(f".{out_file.stem}.partial{out_file.suffix}")
    if out_file.suffix.lower() == ".trx":
        from trx import trx_file_memmap as tmm

        # offsets carry the closing sentinel (n + 1 entries), as trx-python expects
        header = {"DIMENSIONS": [int(s) for s in shape[:3]],
                  "VOXEL_TO_RASMM": np.asarray(affine, float).tolist(),
                  "NB_VERTICES": int(n * p), "NB_STREAMLINES": int(n)}
        (layout / "header.json").write_text(json.dumps(header))
        (np.arange(n + 1, dtype=np.uint64) * np.uint64(p)).tofile(layout / "offsets.uint64")
        trx = tmm.load(str(layout))
        try:
            tmm.save(trx, str(partial))
        finally:
            trx.close()
    else:
        from ..io.tractogram import save_tractogram

        save_tractogram(partial, lambda: (positions[i * p:(i + 1) * p] for i in range(n)),
                        affine, shape)
    os.replace(partial, out_file)
