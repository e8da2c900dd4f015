"""Per-subject tracker inputs of the phantom benchmark: the fODFs of every cohort's subjects
(dipy CSD and MRtrix3 CSD, :func:`prepare_fods`), the fODF noise of a condition
(:func:`add_fod_noise`, :func:`fod_noise_sigmas`) and the files a tracker reads
(:class:`SubjectInputs`, :func:`subject_inputs`)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cohorts import CohortSpec, Condition, build_cohort, subject_files
from .common import Settings, _load, _log


@dataclass
class SubjectInputs:
    """Everything a tracker may read for one subject under one condition (paths, RAS+ files).

    ``dipy_sh`` / ``mrtrix_fod`` already carry the condition's fODF noise."""

    subject: str  # "01"
    condition: str
    cohort_root: str
    dwi: str
    bval: str
    bvec: str
    mask: str
    wm: str
    gm: str
    csf: str
    dipy_sh: str  # NIfTI, 28 coefficients, dipy descoteaux07 non-legacy
    mrtrix_fod: str  # NIfTI/MIF, MRtrix SH basis, L_max 8
    responses: dict  # wm/gm/csf response files (dwi2response dhollander)
    fod_sigma: dict = field(default_factory=dict)  # {"dipy": s, "mrtrix": s} (0 = no noise)


def add_fod_noise(sh: np.ndarray, sigma: float, mask: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Rician noise of scale ``sigma`` on every SH coefficient of the voxels in ``mask``.

    An SH coefficient is signed, so the Rician magnitude is applied to its absolute value and the
    sign is kept: ``c' = sign(c) * sqrt((|c| + n1)^2 + n2^2)``, ``n1, n2 ~ N(0, sigma^2)`` i.i.d.
    per coefficient. For ``|c| >> sigma`` this is ``c + n1`` (Gaussian); for ``|c| <~ sigma`` it
    has the Rician noise floor (mean ``sigma * sqrt(pi / 2)`` at ``c = 0``). Coefficients that are
    exactly 0 get a random sign. Voxels outside ``mask`` are unchanged."""
    sh = np.asarray(sh, np.float32)
    out = sh.copy()
    idx = np.flatnonzero(np.asarray(mask, bool))
    flat = out.reshape(-1, sh.shape[-1])
    c = flat[idx].astype(np.float64)
    n1 = rng.normal(0.0, sigma, c.shape)
    n2 = rng.normal(0.0, sigma, c.shape)
    sign = np.where(c > 0, 1.0, np.where(c < 0, -1.0, rng.choice([-1.0, 1.0], c.shape)))
    flat[idx] = (sign * np.sqrt((np.abs(c) + n1) ** 2 + n2 ** 2)).astype(np.float32)
    return out


def median_wm_c00(sh: np.ndarray, wm: np.ndarray, threshold: float = 0.5) -> float:
    """Median |c00| (the l = 0 coefficient) over voxels with WM fraction > ``threshold``."""
    sel = np.asarray(wm) > threshold
    return float(np.median(np.abs(np.asarray(sh)[..., 0][sel]))) if sel.any() else float("nan")


def fod_noise_sigmas(sigma: float, dipy_c00: float, mrtrix_c00: float) -> dict:
    """Map the paper's sigma onto our two fODFs.

    The paper adds ``sigma`` to dipy CSD fODFs of HCP data. dipy's CSD divides by the response's
    S0, so its fODF is unitless with the same scale on any data: a voxel that matches the response
    has c00 = 1/sqrt(4 pi) = 0.282 (our phantom's WM median is ~0.30). Our dipy fODF therefore
    gets ``sigma`` as is. The MRtrix3 fODF (another basis normalisation and response scale) gets
    the same noise *relative to its own WM median c00*: ``sigma * mrtrix_c00 / dipy_c00``."""
    return {"dipy": float(sigma), "mrtrix": float(sigma * mrtrix_c00 / dipy_c00),
            "relative_to_wm_c00": float(sigma / dipy_c00),
            "dipy_wm_c00": float(dipy_c00), "mrtrix_wm_c00": float(mrtrix_c00)}



def mrtrix_fod_given_responses(f: dict, responses: dict, work: Path, log, nthreads: int = 1,
                               lmax: int = 8) -> Path:
    """``wmfod.mif`` by single-shell ``dwi2fod csd`` (shell closest to b = 3000, as
    :func:`gentract_bids.baselines.mrtrix.estimate_fod`) with *given* dhollander responses."""
    import re

    import nibabel as nib

    from gentract_bids.baselines.mrtrix import _threads, prepare_dwi
    from gentract_bids.fodf.csd import choose_shell

    work.mkdir(parents=True, exist_ok=True)
    b = choose_shell(np.loadtxt(f["bval"], ndmin=1))
    text = Path(responses["wm"]).read_text()
    m = re.search(r"#\s*Shells:\s*([0-9.,\s]+)", text)
    shells = [float(v) for v in m.group(1).replace(",", " ").split()] if m else []
    rows = np.loadtxt(responses["wm"], comments="#", ndmin=2)
    row = rows[int(np.argmin([abs(s - b) for s in shells]))] if shells else rows[-1]
    wm_row = work / f"response_wm_b{b:g}.txt"
    np.savetxt(wm_row, row[None], fmt="%.6f")
    mask = work / "mask.nii.gz"
    data, affine = _load(f["mask"])
    nib.Nifti1Image((data > 0).astype(np.uint8), affine).to_filename(str(mask))
    dwi_mif = prepare_dwi(f["dwi"], f["bval"], f["bvec"], work, log, nthreads)
    sub = work / f"dwi_b{b:g}.mif"
    log.run(["dwiextract", "-quiet", "-force", dwi_mif, "-shells", f"0,{b:g}", sub,
             *_threads(nthreads)], "dwiextract")
    fod = work / "wmfod.mif"
    log.run(["dwi2fod", "csd", "-quiet", "-force", sub, wm_row, fod, "-mask", mask,
             "-lmax", str(lmax), *_threads(nthreads)], "dwi2fod")
    return fod


def prepare_fods(cohort_root: Path, label: str, work: Path, nthreads: int = 1,
                 responses: dict | None = None) -> dict:
    """dipy CSD (L_max 6) and MRtrix3 CSD (L_max 8) fODFs of one subject, as NIfTI; reused when
    present. ``responses``: dhollander response files to use instead of estimating them (the
    ISBI geometry has no GM, where ``dwi2response dhollander`` fails). Returns paths, response
    files, WM median c00 of both fODFs and the seconds spent."""
    import nibabel as nib

    from gentract_bids.baselines.mrtrix import CommandLog, estimate_fod
    from gentract_bids.fodf.csd import fit_csd, make_gtab
    from gentract_bids.io.dwi import read_dwi

    f = subject_files(cohort_root, label)
    work.mkdir(parents=True, exist_ok=True)
    info_file = work / "fods.json"
    if info_file.exists():
        return json.loads(info_file.read_text())
    mask = _load(f["mask"])[0] > 0
    wm = _load(f["wm"])[0]
    t0 = time.perf_counter()
    dwi = read_dwi(f["dwi"], f["bval"], f["bvec"])
    sh, csd_info = fit_csd(dwi.data, make_gtab(dwi.bvals, dwi.bvecs), mask, sh_order=6)
    dipy_sh = work / "dipy_csd_sh.nii.gz"
    nib.Nifti1Image(sh, dwi.affine).to_filename(str(dipy_sh))
    t_dipy = time.perf_counter() - t0
    del dwi
    t0 = time.perf_counter()
    log = CommandLog([], {})
    if responses is None:
        fod_mif, meta = estimate_fod(f["dwi"], f["bval"], f["bvec"], f["mask"], work / "mrtrix",
                                     nthreads=nthreads, log=log)
        responses = meta["ResponseFiles"]
    else:
        fod_mif = mrtrix_fod_given_responses(f, responses, work / "mrtrix", log, nthreads)
    fod_nii = work / "mrtrix_wmfod.nii.gz"
    log.run(["mrconvert", "-quiet", "-force", fod_mif, fod_nii, "-datatype", "float32"],
            "mrconvert_fod")
    t_mrtrix = time.perf_counter() - t0
    fod = _load(fod_nii)[0]
    info = {"dipy_sh": str(dipy_sh), "mrtrix_fod": str(fod_nii),
            "responses": dict(responses), "dipy_wm_c00": median_wm_c00(sh, wm),
            "mrtrix_wm_c00": median_wm_c00(fod, wm), "dipy_csd_seconds": round(t_dipy, 2),
            "mrtrix_fod_seconds": round(t_mrtrix, 2), "dipy_csd": csd_info,
            "mrtrix_steps_seconds": dict(log.seconds), "mrtrix_commands": log.commands}
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    return info


def _noisy_copy(src: str, dst: Path, sigma: float, mask_file: str, rng) -> str:
    import nibabel as nib

    if dst.exists():
        return str(dst)
    img = nib.load(src)
    data = np.asarray(img.dataobj, np.float32)
    mask = _load(mask_file)[0] > 0
    noisy = add_fod_noise(data, sigma, mask, rng)
    nib.Nifti1Image(noisy, img.affine, img.header).to_filename(str(dst))
    return str(dst)


def subject_inputs(condition: Condition, cohort_root: Path, label: str, fods: dict,
                   settings: Settings, work: Path) -> SubjectInputs:
    """The inputs of one subject under ``condition`` (noisy fODF copies written when needed)."""
    f = subject_files(cohort_root, label)
    dipy_sh, mrtrix_fod, sig = fods["dipy_sh"], fods["mrtrix_fod"], {"dipy": 0.0, "mrtrix": 0.0}
    if condition.fod_noise:
        sig = fod_noise_sigmas(settings.fod_sigma, fods["dipy_wm_c00"], fods["mrtrix_wm_c00"])
        ss = np.random.SeedSequence([settings.seed, int(label), 5])  # fixed per subject
        r_dipy, r_mrtrix = (np.random.default_rng(s) for s in ss.spawn(2))
        work.mkdir(parents=True, exist_ok=True)
        dipy_sh = _noisy_copy(dipy_sh, work / "dipy_csd_sh_noise.nii.gz", sig["dipy"], f["mask"],
                              r_dipy)
        mrtrix_fod = _noisy_copy(mrtrix_fod, work / "mrtrix_wmfod_noise.nii.gz", sig["mrtrix"],
                                 f["mask"], r_mrtrix)
    return SubjectInputs(subject=label, condition=condition.name, cohort_root=str(cohort_root),
                         dipy_sh=dipy_sh, mrtrix_fod=mrtrix_fod, responses=fods["responses"],
                         fod_sigma=sig, **f)



def prepare_cohorts(specs: list[CohortSpec], settings: Settings, labels: list[str], out: Path,
                    keep_work: bool = False) -> tuple[dict, dict, list]:
    """Build every cohort of ``specs`` (:func:`~phantom.cohorts.cohort_specs`) under
    ``out/cohorts`` and the fODFs of its subjects ``labels`` under ``out/work``. Returns the
    cohort roots ``{name: Path}``, the fODF records ``{(name, label): dict}`` of
    :func:`prepare_fods` and the preprocessing rows of ``results.json``."""
    cohorts, fods, prep = {}, {}, []
    for spec in specs:
        cohorts[spec.name] = build_cohort(spec, settings, out / "cohorts")
        for lab in labels:
            # external geometries have no GM, where dwi2response dhollander fails: they borrow
            # the responses of the same subject of the base cohort (same signal model and scheme)
            resp = fods["base", lab]["responses"] if spec.geometry else None
            fods[spec.name, lab] = prepare_fods(cohorts[spec.name], lab,
                                                out / "work" / spec.name / f"sub-{lab}",
                                                settings.prep_nthreads, responses=resp)
            if not keep_work:  # the fODFs are kept as NIfTI; drop MRtrix's DWI copies
                mdir = out / "work" / spec.name / f"sub-{lab}" / "mrtrix"
                for junk in [*mdir.glob("*.mif"), mdir / "dwi2response_scratch"]:
                    shutil.rmtree(junk) if junk.is_dir() else junk.unlink(missing_ok=True)
            prep.append({"cohort": spec.name, "subject": lab,
                         **{k: fods[spec.name, lab][k] for k in
                            ("dipy_csd_seconds", "mrtrix_fod_seconds", "dipy_wm_c00",
                             "mrtrix_wm_c00")}})
            _log(f"fODFs {spec.name} sub-{lab}: dipy {prep[-1]['dipy_csd_seconds']:.0f} s, "
                 f"MRtrix {prep[-1]['mrtrix_fod_seconds']:.0f} s")
    return cohorts, fods, prep
