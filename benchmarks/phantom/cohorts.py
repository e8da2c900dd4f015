"""Cohorts and conditions of the phantom benchmark: which synthetic cohorts a run needs
(:class:`CohortSpec`, :func:`make_conditions`, :func:`cohort_specs`), writing one
(:func:`build_cohort`, reused when its stamp matches) and a subject's files in it."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import REPO, Settings, _log

ISBI_GEOMETRY = Path("/work/shared/data/external/isbi2013-phantom/isbi_challenge_2013.json")
if not ISBI_GEOMETRY.exists():  # the same folder relative to the repository (README: ../shared)
    ISBI_GEOMETRY = REPO.parent / "shared/data/external/isbi2013-phantom/isbi_challenge_2013.json"
CONDITION_ORDER = ("clean", "fodnoise", "lowsnr", "lr_noise", "ood")
HUMAN_CONDITIONS = ("clean", "fodnoise", "lr_noise")  # the default run on the human anatomy
COHORT_STAMP = "benchmark_cohort.json"  # the parameters a cohort folder was made with


@dataclass(frozen=True)
class CohortSpec:
    """One synthetic cohort (all subjects share the seed and the acquisition)."""

    name: str
    snr: float
    voxel_size: float
    geometry: str | None = None  # phantomas JSON path; None = our brain-like template
    anatomy: str = "tubes"  # gentract-phantom --anatomy: tubes or human (72 TractSeg bundles)


@dataclass(frozen=True)
class Condition:
    """A benchmark condition: a cohort, with or without noise on the fODF input."""

    name: str
    cohort: CohortSpec
    fod_noise: bool
    description: str


def make_conditions(settings: Settings, names=CONDITION_ORDER,
                    ood_geometry: Path | str | None = ISBI_GEOMETRY) -> list[Condition]:
    """The benchmark conditions ``names`` (in :data:`CONDITION_ORDER`)."""
    s = settings
    human = s.anatomy == "human"
    if human and "ood" in names:
        raise ValueError("the ood condition (ISBI 2013 geometry) has no human-anatomy form")
    pre, kind = ("human-", "human") if human else ("", "tubes")
    base = CohortSpec(f"{pre}base", s.clean_snr, s.clean_voxel_size, anatomy=kind)
    all_c = {
        "clean": Condition("clean", base, False,
                           f"{s.clean_voxel_size:g} mm, SNR {s.clean_snr:g}"),
        "fodnoise": Condition("fodnoise", base, True,
                              f"clean + Rician noise on the fODF input (paper sigma "
                              f"{s.fod_sigma:g})"),
        "lowsnr": Condition("lowsnr", CohortSpec(f"{pre}lowsnr", s.low_snr, s.clean_voxel_size,
                                                 anatomy=kind), False,
                            f"{s.clean_voxel_size:g} mm, DWI SNR {s.low_snr:g}"),
        "lr_noise": Condition("lr_noise", CohortSpec(f"{pre}lr", s.clean_snr, s.lr_voxel_size,
                                                     anatomy=kind), True,
                              f"{s.lr_voxel_size:g} mm, SNR {s.clean_snr:g} + fODF noise "
                              "(low-field proxy)"),
        "ood": Condition("ood", CohortSpec("ood", s.clean_snr, s.clean_voxel_size,
                                           None if ood_geometry is None else str(ood_geometry)),
                         False, f"ISBI 2013 geometry, {s.clean_voxel_size:g} mm, "
                                f"SNR {s.clean_snr:g} (the clean degradations)"),
    }
    unknown = [n for n in names if n not in all_c]
    if unknown:
        raise ValueError(f"unknown condition(s) {unknown}; choose from {list(all_c)}")
    return [all_c[n] for n in CONDITION_ORDER if n in names]


def cohort_specs(conditions: list[Condition], settings: Settings) -> list[CohortSpec]:
    """The cohorts ``conditions`` read, each once, in order of first use. An external geometry
    borrows the fODF responses of the base cohort, so that one comes first when it is missing."""
    specs = [c.cohort for c in conditions]
    if any(s.geometry for s in specs) and not any(s.name == "base" for s in specs):
        specs.insert(0, make_conditions(settings, ["clean"])[0].cohort)  # responses for ood
    unique: dict[str, CohortSpec] = {}
    for spec in specs:
        unique.setdefault(spec.name, spec)
    return list(unique.values())


def cohort_params(spec: CohortSpec, settings: Settings) -> dict:
    """What a cohort is made from: its stamp, compared by :func:`cohort_is_cached`."""
    return {"spec": asdict(spec), "n_subjects": settings.n_subjects, "seed": settings.seed,
            "n_truth_streamlines": settings.n_truth_streamlines}


def cohort_is_cached(out: Path, params: dict) -> bool:
    """Whether the cohort folder ``out`` was made with ``params``."""
    stamp = out / COHORT_STAMP
    return stamp.exists() and json.loads(stamp.read_text()) == params


def build_cohort(spec: CohortSpec, settings: Settings, root: Path) -> Path:
    """Write ``spec``'s cohort under ``root/<name>`` (reused when the same parameters exist)."""
    from gentract_bids.phantom.cohort import make_cohort

    out = root / spec.name
    params = cohort_params(spec, settings)
    if cohort_is_cached(out, params):
        return out
    t0 = time.perf_counter()
    make_cohort(out, n_subjects=settings.n_subjects, seed=settings.seed, snr=spec.snr,
                voxel_size=spec.voxel_size, geometry=spec.geometry,
                n_truth_streamlines=settings.n_truth_streamlines, anatomy_kind=spec.anatomy)
    (out / COHORT_STAMP).write_text(json.dumps(params, indent=2) + "\n")
    _log(f"cohort {spec.name}: {settings.n_subjects} subject(s) in "
         f"{time.perf_counter() - t0:.0f} s")
    return out


def subject_files(cohort_root: Path, label: str) -> dict:
    """A subject's DWI (raw) and truth mask / tissue maps (derivatives) in a built cohort."""
    raw = cohort_root / f"sub-{label}" / "dwi" / f"sub-{label}_dwi"
    tr = (cohort_root / "derivatives" / "phantom-truth" / f"sub-{label}" / "dwi"
          / f"sub-{label}_space-dwi")
    return {"dwi": f"{raw}.nii.gz", "bval": f"{raw}.bval", "bvec": f"{raw}.bvec",
            "mask": f"{tr}_desc-brain_mask.nii.gz", "wm": f"{tr}_label-WM_probseg.nii.gz",
            "gm": f"{tr}_label-GM_probseg.nii.gz", "csf": f"{tr}_label-CSF_probseg.nii.gz"}
