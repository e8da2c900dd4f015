"""MRtrix3 baseline trackers: iFOD2 / SD_Stream + SIFT, and tckglobal (global tractography).

The MRtrix3 command-line programs are called through :mod:`subprocess` (nipype has no interface
for ``tcksift`` or ``tckglobal``; one code path for all keeps the command lines exact). Every
function returns the streamlines as a list of ``(n, 3)`` float32 arrays in RAS+ millimetres —
MRtrix ``.tck`` files store scanner-space RAS+ mm, the same world space as the NIfTI affine — and
a metadata dict with the exact command lines and timings, for the sidecars.

Gradients: BIDS ``.bval``/``.bvec`` files use FSL's convention (components along the voxel axes,
the first one flipped when the affine has a positive determinant); MRtrix reads them with
``-fslgrad bvec bval``, which applies exactly that convention. The DWI is converted once to a
``.mif`` that carries its gradient table (``tckglobal`` takes no ``-fslgrad``).

Choices (MRtrix 3.0.3; recorded in the metadata):

- Response functions: ``dwi2response dhollander`` (unsupervised WM/GM/CSF responses, one row per
  shell; ~5 s on a 3 mm phantom subject). The same responses feed ``msmt_csd`` and ``tckglobal``;
  single-shell CSD uses the WM row of its shell.
- fODF (``fod_method``): ``"csd"`` (default) = ``dwi2fod csd`` on one shell, the one closest to
  b = 3000 (:func:`gentract_bids.fodf.csd.choose_shell`, the shell our dipy CSD uses);
  ``"msmt"`` = ``dwi2fod msmt_csd`` with WM/GM/CSF (WM/CSF on single-shell data). On the 3 mm
  phantom with 2 shared cores, msmt_csd took ~3 min at lmax 8 against ~10 s for single-shell csd,
  hence the default. ``lmax`` 8 (MRtrix's default).
- Local tracking: ``tckgen -algorithm iFOD2|SD_Stream`` with MRtrix's default step, angle, FOD
  cutoff (0.1) and length limits, random seeding in ``seed_image`` (default: the brain mask),
  ``-mask`` brain mask, ``-select n_streamlines * sift_factor``; then
  ``tcksift -term_number n_streamlines``, as in the GenTract paper's baselines.
- Determinism: MRtrix 3.0.3 has no seed option; its random generators are seeded from the
  ``MRTRIX_RNG_SEED`` environment variable, which we set from ``random_seed``. Checked with
  MRtrix 3.0.3 on the phantom: ``tckgen`` and ``tckglobal`` give bit-identical output across
  runs only when single-threaded (``-nthreads 0``, i.e. ``nthreads <= 1`` here); with 2 threads
  they differ. ``tcksift`` is *not* reproducible even single-threaded with the variable set (the
  kept count varied by a few streamlines out of ~1000). Metadata key ``Deterministic`` is true
  only where the output is reproducible: seed set, ``nthreads <= 1`` and no SIFT.
- Tissue maps: only a WM partial-volume map is used (seeding and SIFT's processing mask);
  anatomically-constrained tracking (ACT, a 5TT image) is not used.
- ``tckglobal``: ``-niter`` (default 2e7: a 2 mm phantom subject in ~2-4 min on 2 cores),
  ``-length`` (default: the voxel size), ``-weight`` 0.1, ``-lmax`` 8,
  other parameters MRtrix's defaults; tracks shorter than ``min_length`` (default 5 voxels, as
  ``tckgen`` without ACT) are dropped, then a random subset of ``n_streamlines`` is kept when more
  remain (the count of a global tractogram is data-driven). ``tckglobal`` can print
  ``[ERROR] ...`` and still exit 0 with a tractogram of garbage (seen with a response of the wrong
  number of shells): :func:`check_command_output` treats any ``[ERROR]`` line as a failure.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import EX_FAILURE, GenTractError

MRTRIX_PACKAGE = "mrtrix3"  # the Debian/Ubuntu package (apt-get install mrtrix3)
LOCAL_ALGORITHMS = {"ifod2": "iFOD2", "sdstream": "SD_Stream"}
LOCAL_BINARIES = ("mrconvert", "mrinfo", "dwi2response", "dwiextract", "dwi2fod", "tckgen",
                  "tcksift")
GLOBAL_BINARIES = ("mrconvert", "mrinfo", "dwi2response", "tckglobal", "tckedit")
_ERROR_LINE = re.compile(r"\[ERROR\]|^\s*\S+: \[SYSTEM FATAL CODE", re.MULTILINE)


class MRtrixNotFoundError(GenTractError):
    """An MRtrix3 program is not on PATH."""

    exit_code = EX_FAILURE


class MRtrixCommandError(GenTractError):
    """An MRtrix3 program failed (non-zero exit, an ``[ERROR]`` message or no usable output)."""

    exit_code = EX_FAILURE


# ----------------------------------------------------------------------------- running commands
def check_mrtrix(binaries=LOCAL_BINARIES) -> dict[str, str]:
    """Paths of the MRtrix3 ``binaries``; :class:`MRtrixNotFoundError` naming the package if any
    is missing from PATH."""
    found = {b: shutil.which(b) for b in binaries}
    missing = [b for b, p in found.items() if p is None]
    if missing:
        raise MRtrixNotFoundError(
            f"MRtrix3 program(s) not found on PATH: {', '.join(missing)}. The MRtrix3 baselines "
            f"need MRtrix3 >= 3.0: install the Debian/Ubuntu package '{MRTRIX_PACKAGE}' "
            f"(apt-get install {MRTRIX_PACKAGE}) or see https://www.mrtrix.org")
    return found


def mrtrix_version() -> str:
    """MRtrix3 version string reported by ``mrconvert -version`` (e.g. ``"3.0.3"``)."""
    out = subprocess.run(["mrconvert", "-version"], capture_output=True, text=True).stdout
    m = re.search(r"==\s*mrconvert\s+(\S+)\s*==", out)
    return m.group(1) if m else "unknown"


def check_command_output(name: str, returncode: int, stderr: str) -> None:
    """Raise :class:`MRtrixCommandError` if a command failed: a non-zero exit code, or an
    ``[ERROR]`` line in its stderr (``tckglobal`` can print one and still exit 0)."""
    errors = [ln.strip() for ln in stderr.splitlines() if _ERROR_LINE.search(ln)]
    if returncode != 0 or errors:
        detail = "; ".join(errors) or stderr.strip()[-1000:] or "no message"
        raise MRtrixCommandError(f"{name} failed (exit code {returncode}): {detail}")


@dataclass
class CommandLog:
    """The command lines run (in order) and their wall-clock seconds."""

    commands: list
    seconds: dict

    def run(self, cmd: list, step: str, env: dict | None = None, cwd=None) -> str:
        """Run ``cmd`` (a list of strings), record it under ``step``; return its stdout."""
        cmd = [str(c) for c in cmd]
        full_env = dict(os.environ, **(env or {}))
        prefix = " ".join(f"{k}={v}" for k, v in (env or {}).items())
        self.commands.append((prefix + " " if prefix else "") + shlex.join(cmd))
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=cwd)
        except FileNotFoundError:
            check_mrtrix([cmd[0]])
            raise
        self.seconds[step] = round(self.seconds.get(step, 0.0) + time.perf_counter() - t0, 3)
        check_command_output(cmd[0], proc.returncode, proc.stderr)
        return proc.stdout


def _threads(nthreads: int | None) -> list:
    """MRtrix ``-nthreads``: 0 disables multi-threading."""
    return [] if nthreads is None else ["-nthreads", str(int(nthreads) if nthreads > 1 else 0)]


@contextmanager
def _scratch(workdir):
    """``workdir`` (created, kept) or a temporary directory removed afterwards."""
    if workdir is not None:
        yield _workdir(workdir)
        return
    with tempfile.TemporaryDirectory(prefix="gentract_mrtrix_") as tmp:
        yield Path(tmp)


def _workdir(workdir) -> Path:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="gentract_mrtrix_"))
    path = Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _read3d(src, name: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(src))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise GenTractError(f"{name} {src} is not a 3-D image (shape {data.shape})")
    return data, img.affine


def _binary_mask(src, dst: Path, name: str, threshold: float = 0.0) -> Path:
    """Write ``src > threshold`` as a uint8 NIfTI so MRtrix sees a clean binary mask."""
    data, affine = _read3d(src, name)
    out = nib.Nifti1Image((data > threshold).astype(np.uint8), affine)
    out.header.set_xyzt_units("mm")
    out.to_filename(str(dst))
    return dst


def _float_map(src, dst: Path) -> Path:
    """Write a [0, 1] map (e.g. a WM partial-volume fraction) as float32 NIfTI."""
    data, affine = _read3d(src, "WM map")
    out = nib.Nifti1Image(np.clip(np.nan_to_num(data.astype(np.float32)), 0, 1), affine)
    out.header.set_xyzt_units("mm")
    out.to_filename(str(dst))
    return dst


def load_tck(path) -> list[np.ndarray]:
    """Streamlines of a ``.tck`` file: (n, 3) float32 arrays in RAS+ mm (as stored)."""
    return [np.array(s, dtype=np.float32) for s in nib.streamlines.load(str(path)).streamlines]


def _voxel_size(path) -> float:
    return float(np.mean(nib.load(str(path)).header.get_zooms()[:3]))


# ----------------------------------------------------------------------------- responses and FOD
def prepare_dwi(dwi, bval, bvec, workdir, log: CommandLog, nthreads=1) -> Path:
    """Convert the DWI to ``dwi.mif`` with its gradient table (FSL/BIDS files, ``-fslgrad``)."""
    out = Path(workdir) / "dwi.mif"
    log.run(["mrconvert", "-quiet", "-force", dwi, "-fslgrad", bvec, bval, out,
             *_threads(nthreads)], "mrconvert")
    return out


def _shell_bvalues(dwi_mif: Path, log: CommandLog) -> list[float]:
    out = log.run(["mrinfo", dwi_mif, "-shell_bvalues"], "mrinfo")
    return [float(v) for v in out.split()]


def estimate_responses(dwi_mif, mask, workdir, log: CommandLog, nthreads=1) -> dict[str, Path]:
    """WM (one row per shell), GM and CSF response files from ``dwi2response dhollander``."""
    wd = Path(workdir)
    out = {t: wd / f"response_{t}.txt" for t in ("wm", "gm", "csf")}
    scratch = wd / "dwi2response_scratch"
    scratch.mkdir(exist_ok=True)
    log.run(["dwi2response", "dhollander", "-quiet", "-force", dwi_mif, out["wm"], out["gm"],
             out["csf"], "-mask", mask, "-scratch", scratch, *_threads(nthreads)],
            "dwi2response")
    return out


def _read_response(path) -> tuple[list[float], np.ndarray]:
    """(shells from the '# Shells:' header or [], coefficient rows)."""
    text = Path(path).read_text()
    m = re.search(r"#\s*Shells:\s*([0-9.,\s]+)", text)
    shells = [float(v) for v in m.group(1).replace(",", " ").split()] if m else []
    rows = np.loadtxt(path, comments="#", ndmin=2)
    return shells, rows


def estimate_fod(dwi, bval, bvec, mask, workdir=None, *, method: str = "csd", lmax: int = 8,
                 shell: float | None = None, nthreads: int = 1,
                 log: CommandLog | None = None) -> tuple[Path, dict]:
    """MRtrix3 WM fODF (``wmfod.mif`` in ``workdir``; a new temporary folder, left for the
    caller, when ``workdir`` is None) and metadata.

    ``method``: ``"csd"`` single-shell CSD on ``shell`` (default: the shell closest to b=3000) with
    the dhollander WM response of that shell; ``"msmt"`` multi-shell multi-tissue CSD."""
    from ..fodf.csd import choose_shell

    check_mrtrix(("mrconvert", "mrinfo", "dwi2response", "dwiextract", "dwi2fod"))
    if method not in ("csd", "msmt"):
        raise ValueError(f"unknown MRtrix fODF method {method!r} (csd or msmt)")
    wd = _workdir(workdir)
    log = log or CommandLog([], {})
    mask_bin = _binary_mask(mask, wd / "mask.nii.gz", "brain mask")
    dwi_mif = prepare_dwi(dwi, bval, bvec, wd, log, nthreads)
    resp = estimate_responses(dwi_mif, mask_bin, wd, log, nthreads)
    mr_shells = [b for b in _shell_bvalues(dwi_mif, log) if b > 50]
    fod = wd / "wmfod.mif"
    if method == "csd":
        target = float(shell) if shell is not None else choose_shell(np.loadtxt(bval, ndmin=1))
        b = min(mr_shells, key=lambda v: abs(v - target))
        if abs(b - target) > 50:
            raise GenTractError(f"shell b={target:g} not in the data (shells: {mr_shells})")
        shells_hdr, rows = _read_response(resp["wm"])
        row = rows[int(np.argmin([abs(s - b) for s in shells_hdr]))] if shells_hdr else rows[-1]
        wm_row = wd / f"response_wm_b{b:g}.txt"
        np.savetxt(wm_row, row[None], fmt="%.6f")
        sub = wd / f"dwi_b{b:g}.mif"
        log.run(["dwiextract", "-quiet", "-force", dwi_mif, "-shells", f"0,{b:g}", sub,
                 *_threads(nthreads)], "dwiextract")
        log.run(["dwi2fod", "csd", "-quiet", "-force", sub, wm_row, fod, "-mask", mask_bin,
                 "-lmax", str(lmax), *_threads(nthreads)], "dwi2fod")
        used = [b]
    else:
        tissues = ([resp["wm"], fod, resp["gm"], wd / "gm.mif", resp["csf"], wd / "csf.mif"]
                   if len(mr_shells) >= 2 else [resp["wm"], fod, resp["csf"], wd / "csf.mif"])
        lmaxes = ",".join([str(lmax)] + ["0"] * (len(tissues) // 2 - 1))
        log.run(["dwi2fod", "msmt_csd", "-quiet", "-force", dwi_mif, *tissues, "-mask", mask_bin,
                 "-lmax", lmaxes, *_threads(nthreads)], "dwi2fod")
        used = mr_shells
    meta = {"ResponseAlgorithm": "dwi2response dhollander",
            "FODAlgorithm": {"csd": "dwi2fod csd", "msmt": "dwi2fod msmt_csd"}[method],
            "FODLmax": int(lmax), "ShellsUsed": used, "ShellsAvailable": mr_shells,
            "ResponseFiles": {k: str(v) for k, v in resp.items()}}
    return fod, meta


# ----------------------------------------------------------------------------- local tracking
def run_local(algorithm: str, dwi, bval, bvec, mask, out_tck, *, n_streamlines: int,
              sift_factor: float = 10.0, seed_image=None, wm_pve=None, wm_fod=None,
              nthreads: int = 1,
              random_seed: int | None = None, workdir=None, fod_method: str = "csd",
              lmax: int = 8, step: float | None = None, angle: float | None = None,
              cutoff: float | None = None) -> tuple[list[np.ndarray], dict]:
    """iFOD2 or SD_Stream (``algorithm`` ``"ifod2"``/``"sdstream"``) followed by SIFT.

    Generates ``round(n_streamlines * sift_factor)`` streamlines seeded at random in
    ``seed_image`` (default: ``wm_pve > 0.5`` if given, else ``mask``) and confined to ``mask``,
    then ``tcksift`` filters them to ``n_streamlines`` (skipped when ``sift_factor <= 1``).
    ``wm_pve`` (optional WM partial-volume map) is also SIFT's ``-proc_mask``, as SIFT does with
    ACT (it also makes SIFT ~6x faster: only WM fixels are segmented). SIFT stops by itself when
    no removal lowers its cost; a random subset (``random_seed``) then gives the exact count
    (metadata ``NAfterSIFT`` tells). ``wm_fod``: an existing MRtrix WM
    fODF (skips response + CSD, e.g. to share one fODF between trackers). ``step``/``angle``/
    ``cutoff``: None keeps MRtrix's defaults. Intermediate files go to ``workdir`` (kept) or a
    temporary folder (removed). Writes ``out_tck``; returns (streamlines in RAS+ mm, metadata
    with the command lines, timings and settings)."""
    key = algorithm.lower().replace("_", "").replace("-", "")
    if key not in LOCAL_ALGORITHMS:
        raise ValueError(f"unknown MRtrix local algorithm {algorithm!r}: ifod2 or sdstream")
    if n_streamlines < 1:
        raise ValueError("n_streamlines must be >= 1")
    check_mrtrix(LOCAL_BINARIES)
    t0 = time.perf_counter()
    with _scratch(workdir) as wd:
        log = CommandLog([], {})
        meta: dict = {"Software": f"MRtrix3 {mrtrix_version()}",
                      "Algorithm": LOCAL_ALGORITHMS[key]}
        if wm_fod is None:
            wm_fod, fmeta = estimate_fod(dwi, bval, bvec, mask, wd, method=fod_method,
                                         lmax=lmax, nthreads=nthreads, log=log)
            meta.update(fmeta)
        else:
            meta["FOD"] = str(wm_fod)
        mask_bin = _binary_mask(mask, wd / "mask.nii.gz", "brain mask")
        if seed_image is not None:
            seed_bin = _binary_mask(seed_image, wd / "seed.nii.gz", "seed image")
            seeding = "seed image"
        elif wm_pve is not None:
            seed_bin, seeding = _binary_mask(wm_pve, wd / "seed.nii.gz", "WM map", 0.5), "WM > 0.5"
        else:
            seed_bin, seeding = mask_bin, "brain mask"
        n_generate = max(int(round(n_streamlines * max(sift_factor, 1.0))), n_streamlines)
        env = {} if random_seed is None else {"MRTRIX_RNG_SEED": str(int(random_seed))}
        raw = wd / f"{key}_raw.tck"
        opts = []
        for flag, val in (("-step", step), ("-angle", angle), ("-cutoff", cutoff)):
            if val is not None:
                opts += [flag, f"{float(val):g}"]
        log.run(["tckgen", "-quiet", "-force", wm_fod, raw, "-algorithm", LOCAL_ALGORITHMS[key],
                 "-seed_image", seed_bin, "-mask", mask_bin, "-select", str(n_generate), *opts,
                 *_threads(nthreads)], "tckgen", env=env)
        out_tck = Path(out_tck)
        out_tck.parent.mkdir(parents=True, exist_ok=True)
        sifted = wd / f"{key}_sift.tck"
        if n_generate > n_streamlines:
            proc = ([] if wm_pve is None
                    else ["-proc_mask", _float_map(wm_pve, wd / "proc_mask.nii.gz")])
            log.run(["tcksift", "-quiet", "-force", raw, wm_fod, sifted, *proc,
                     "-term_number", str(n_streamlines), *_threads(nthreads)], "tcksift", env=env)
        else:
            sifted = raw
        streamlines = load_tck(sifted)
        if not streamlines:
            raise MRtrixCommandError(f"tckgen/tcksift produced no streamlines ({sifted})")
        n_sift = len(streamlines)
        if n_sift > n_streamlines:  # SIFT converged above the target: random subset
            keep = np.random.default_rng(random_seed).choice(n_sift, n_streamlines, replace=False)
            streamlines = [streamlines[i] for i in np.sort(keep)]
            from ..io.tractogram import save_tractogram

            ref = nib.load(str(mask_bin))
            save_tractogram(out_tck, streamlines, ref.affine, ref.shape)
        else:
            shutil.copyfile(sifted, out_tck)
        meta.update({
            "Seeding": f"random in {seeding}", "Mask": "brain mask",
            "NGenerated": n_generate, "NAfterSIFT": n_sift, "NStreamlines": len(streamlines),
            "SIFT": n_generate > n_streamlines, "SIFTFactor": float(sift_factor),
            "SIFTProcessingMask": "WM map" if wm_pve is not None else "MRtrix default",
            "Parameters": {"step": step, "angle": angle, "cutoff": cutoff,
                           "note": "None = MRtrix default"},
            "RandomSeed": random_seed,
            "Deterministic": (random_seed is not None and (nthreads is None or nthreads <= 1)
                              and n_generate <= n_streamlines),
            "Commands": log.commands,
            "Timings": dict(log.seconds, TotalSeconds=round(time.perf_counter() - t0, 3)),
        })
        return streamlines, meta


# ----------------------------------------------------------------------------- global tracking
def run_tckglobal(dwi, bval, bvec, mask, out_tck, *, wm_response=None, gm_response=None,
                  csf_response=None, niter: float = 2e7, length: float | None = None,
                  weight: float = 0.1, lmax: int = 8, min_length: float | None = None,
                  n_streamlines: int | None = None, nthreads: int = 1,
                  random_seed: int | None = None, workdir=None) -> tuple[list[np.ndarray], dict]:
    """MRtrix3 multi-tissue global tractography (``tckglobal``, Christiaens 2015).

    Responses default to ``dwi2response dhollander`` (WM multi-shell; GM and CSF as isotropic
    ``-riso``; GM is left out on single-shell data). ``length`` (particle length, mm) defaults to
    the voxel size; ``niter`` Metropolis-Hastings iterations. Measured on the phantom (2 cores
    shared with other jobs): 3 mm, 4e6 iterations ~10-25 s; 2 mm, 2e7 iterations ~250 CPU-s
    (11,800 tracks >= 10 mm, median 11 deg from the truth fibres), 5e7 ~650 CPU-s (6 deg).
    Tracks shorter than ``min_length`` (default 5 voxel sizes; 0 keeps all) are dropped, then
    a random subset of ``n_streamlines`` is kept if more remain. Raises
    :class:`MRtrixCommandError` on an ``[ERROR]`` message, a missing output or an empty
    tractogram."""
    check_mrtrix(GLOBAL_BINARIES)
    t0 = time.perf_counter()
    with _scratch(workdir) as wd:
        log = CommandLog([], {})
        vox = _voxel_size(dwi)
        length = vox if length is None else float(length)
        min_length = 5 * vox if min_length is None else float(min_length)
        mask_bin = _binary_mask(mask, wd / "mask.nii.gz", "brain mask")
        dwi_mif = prepare_dwi(dwi, bval, bvec, wd, log, nthreads)
        n_shells = len([b for b in _shell_bvalues(dwi_mif, log) if b > 50])
        if wm_response is None:
            resp = estimate_responses(dwi_mif, mask_bin, wd, log, nthreads)
            wm_response = resp["wm"]
            csf_response = resp["csf"] if csf_response is None else csf_response
            if gm_response is None and n_shells >= 2:
                gm_response = resp["gm"]
        riso = []
        for r in (csf_response, gm_response):
            if r is not None:
                riso += ["-riso", r]
        env = {} if random_seed is None else {"MRTRIX_RNG_SEED": str(int(random_seed))}
        raw = wd / "tckglobal_raw.tck"
        if raw.exists():
            raw.unlink()
        log.run(["tckglobal", "-quiet", "-force", dwi_mif, wm_response, *riso, "-mask", mask_bin,
                 "-niter", f"{float(niter):g}", "-lmax", str(lmax), "-length", f"{length:g}",
                 "-weight", f"{weight:g}", raw, *_threads(nthreads)], "tckglobal", env=env)
        if not raw.is_file():
            raise MRtrixCommandError(f"tckglobal exited without writing {raw}")
        n_raw = len(load_tck(raw))
        if n_raw == 0:
            raise MRtrixCommandError("tckglobal produced an empty tractogram")
        kept = raw
        if min_length > 0:
            kept = wd / "tckglobal_minlength.tck"
            log.run(["tckedit", "-quiet", "-force", raw, kept, "-minlength", f"{min_length:g}"],
                    "tckedit")
        streamlines = load_tck(kept)
        if not streamlines:
            raise MRtrixCommandError(
                f"tckglobal produced {n_raw} tracks, none longer than {min_length:g} mm "
                f"(too few iterations? -niter {float(niter):g})")
        n_long = len(streamlines)
        if n_streamlines is not None and n_long > n_streamlines:
            rng = np.random.default_rng(random_seed)
            keep = np.sort(rng.choice(n_long, int(n_streamlines), replace=False))
            streamlines = [streamlines[i] for i in keep]
        from ..io.tractogram import save_tractogram

        ref = nib.load(str(mask_bin))
        out_tck = Path(out_tck)
        out_tck.parent.mkdir(parents=True, exist_ok=True)
        save_tractogram(out_tck, streamlines, ref.affine, ref.shape)
        meta = {"Software": f"MRtrix3 {mrtrix_version()}", "Algorithm": "tckglobal",
                "ResponseAlgorithm": "dwi2response dhollander" if "dwi2response" in log.seconds
                else "given",
                "Parameters": {"niter": float(niter), "length": length, "weight": float(weight),
                               "lmax": int(lmax), "isotropic_responses": len(riso) // 2,
                               "min_length": min_length, "other": "MRtrix defaults"},
                "NRaw": n_raw, "NAboveMinLength": n_long, "NStreamlines": len(streamlines),
                "RandomSeed": random_seed,
                "Deterministic": random_seed is not None and (nthreads is None or nthreads <= 1),
                "Commands": log.commands,
                "Timings": dict(log.seconds, TotalSeconds=round(time.perf_counter() - t0, 3))}
        return streamlines, meta
