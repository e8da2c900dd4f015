"""BIDS input queries (pybids), validation, and derivative naming (``data/io_spec.json``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .. import __version__
from ..errors import BadDataError, BIDSValidationFailed, NoInputError, NothingMatched

DWI_EXTENSIONS = [".nii", ".nii.gz"]
# The entities that tell one DWI series from another and that every derivative name carries, in
# the order of BIDS file names (pybids name -> file-name key). BIDS allows exactly these in a
# raw ``_dwi`` name; ``data/io_spec.json`` has a slot for each of them in every path pattern.
SERIES_ENTITIES = {"subject": "sub", "session": "ses", "acquisition": "acq",
                   "reconstruction": "rec", "direction": "dir", "run": "run", "part": "part",
                   "chunk": "chunk"}


@lru_cache
def io_spec() -> dict:
    """The derivative naming spec: pybids entities and path patterns (naming as data).

    The entities pybids' own ``bids`` and ``derivatives`` configs lack (``bundle``, ``param``) live
    in the shipped pybids config (:func:`pybids_config`) and are merged in here."""
    data = resources.files("gentract_bids.data")
    spec = json.loads(data.joinpath("io_spec.json").read_text())
    extra = json.loads(data.joinpath(spec["pybids_config"]).read_text())["entities"]
    spec["entities"] = [*spec["entities"][:-3], *extra, *spec["entities"][-3:]]
    return spec


def pybids_config() -> str:
    """Path of the shipped pybids config: with pybids' own, it parses every GenTract output,
    ``BIDSLayout(out, config=["bids", "derivatives", pybids_config()], validate=False)``."""
    spec = json.loads(resources.files("gentract_bids.data").joinpath("io_spec.json").read_text())
    return str(resources.files("gentract_bids.data").joinpath(spec["pybids_config"]))


def input_link(bids_dir) -> str:
    """The ``DatasetLinks`` name of the input dataset in BIDS URIs: ``qsiprep`` or ``raw``."""
    return "qsiprep" if is_qsiprep(Path(bids_dir)) else "raw"


def bids_uri(path, root, dataset: str = "") -> str:
    """``bids:<dataset>:<path relative to root>`` (``bids::...`` for this dataset); a ``file:``
    URI for a path outside ``root``. Symbolic links are kept (DataLad/git-annex datasets)."""
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if not path.is_relative_to(root):
        return path.as_uri()
    return f"bids:{dataset}:{path.relative_to(root).as_posix()}"


def build_path(entities: dict) -> str:
    """Derivative path (relative to the output root) for ``entities``, from ``io_spec.json``."""
    from bids.layout.writing import build_path as _build

    path = _build(entities, path_patterns=io_spec()["default_path_patterns"], strict=True)
    if path is None:
        raise ValueError(f"no derivative naming pattern matches {entities}")
    return path


def _require_description(bids_dir: Path) -> None:
    if not (bids_dir / "dataset_description.json").is_file():
        raise BIDSValidationFailed(
            f"{bids_dir} is not a BIDS dataset: it has no dataset_description.json"
        )


def validate_bids(bids_dir: Path) -> None:
    """Run the BIDS validator (bids-validator-deno); raise :class:`BIDSValidationFailed`."""
    _require_description(bids_dir)
    beside = Path(sys.executable).parent / "bids-validator-deno"
    exe = str(beside) if beside.is_file() else shutil.which("bids-validator-deno")
    if exe is None:
        raise BIDSValidationFailed(
            "bids-validator-deno is not installed; install it or pass --skip-bids-validation"
        )
    proc = subprocess.run(
        [exe, "--json", str(bids_dir)], capture_output=True, text=True, check=False
    )
    if proc.returncode == 0:
        return
    try:
        issues = json.loads(proc.stdout)["issues"]["issues"]
        errors = sorted({i["code"] for i in issues if i.get("severity") == "error"})
        reason = ", ".join(errors) or proc.stderr.strip()[-500:]
    except (ValueError, KeyError, TypeError):
        reason = (proc.stderr or proc.stdout).strip()[-500:]
    raise BIDSValidationFailed(
        f"{bids_dir} failed BIDS validation ({reason}). Fix the dataset or pass "
        "--skip-bids-validation"
    )


def load_layout(bids_dir: Path):
    """A pybids layout of the raw dataset plus any derivatives inside it (read-only)."""
    from bids import BIDSLayout
    from bids.exceptions import BIDSValidationError

    _require_description(bids_dir)
    derivatives = [
        p.parent for p in sorted((bids_dir / "derivatives").glob("*/dataset_description.json"))
    ]
    try:
        return BIDSLayout(str(bids_dir), validate=False, derivatives=[str(d) for d in derivatives])
    except (BIDSValidationError, ValueError) as err:
        raise BIDSValidationFailed(f"{bids_dir}: {err}") from None


@dataclass
class DWIInput:
    """One DWI series of one participant, with what pybids found beside it."""

    subject: str
    dwi: str
    bval: str | None
    bvec: str | None
    mask: str | None
    entities: dict

    @property
    def series_entities(self) -> dict:
        """The :data:`SERIES_ENTITIES` of this series (what its derivative names carry)."""
        return {k: self.entities[k] for k in SERIES_ENTITIES if k in self.entities}

    @property
    def label(self) -> str:
        """The series' name: its DWI file name without ``_dwi`` and extension, so every entity
        written in that name is kept (e.g. ``sub-01_ses-1_dir-AP_run-2``)."""
        return series_label(self.dwi)


def series_label(dwi_path) -> str:
    """``sub-01_dir-AP`` for ``.../sub-01_dir-AP_dwi.nii.gz`` (every entity of the name)."""
    stem = Path(dwi_path).name.split(".")[0]
    return stem[: -len("_dwi")] if stem.endswith("_dwi") else stem


def output_prefix(entities: dict) -> str:
    """``sub-01_dir-AP``: the series part of a derivative name, from :data:`SERIES_ENTITIES`."""
    return "_".join(f"{key}-{entities[k]}" for k, key in SERIES_ENTITIES.items() if k in entities)


def check_distinct_series(inputs) -> None:
    """Two series whose derivatives would get the same names are refused before anything runs.

    Series differing by any of :data:`SERIES_ENTITIES` (``ses``, ``acq``, ``rec``, ``dir``,
    ``run``, ``part``, ``chunk``) are fine; entities BIDS does not allow in a raw DWI name
    (``space``, ``desc``, ...) have no place in the derivative names, so series that differ only
    by those are refused with their file names (:class:`BadDataError`)."""
    seen: dict[str, str] = {}
    for item in inputs:
        key = output_prefix(item.series_entities)
        if key in seen:
            raise BadDataError(
                f"{Path(seen[key]).name} and {Path(item.dwi).name} would write derivatives of "
                f"the same name ({key}_...): DWI series must differ by one of the entities "
                f"{', '.join(f'{v}-' for v in SERIES_ENTITIES.values())} (BIDS allows no other "
                "in a DWI file name); rename one or select one with --participant-label / "
                "--session-label")
        seen[key] = item.dwi


def bare_labels(labels, prefix: str) -> list[str]:
    """Command-line labels without their entity prefix: ``sub-01`` -> ``01``. One prefix only,
    so ``sub-sub-01`` stays ``sub-01`` (and is then an unknown label)."""
    return [str(lab).removeprefix(prefix) for lab in labels or []]


def is_qsiprep(bids_dir: Path) -> bool:
    """Whether ``bids_dir`` is a QSIPrep output folder (``GeneratedBy`` names QSIPrep)."""
    try:
        desc = json.loads((Path(bids_dir) / "dataset_description.json").read_text())
    except (OSError, ValueError):
        return False
    generated = desc.get("GeneratedBy") or []
    return any("qsiprep" in str(g.get("Name", "")).lower() for g in generated
               if isinstance(g, dict)) or desc.get("PipelineDescription", {}).get(
                   "Name", "").lower() == "qsiprep"


def collect_dwi(layout, participant_label=None, session_label=None,
                filters=None, qsiprep: bool = False) -> list[DWIInput]:
    """Every DWI series of the selected participants and sessions (``filters``: the ``dwi``
    query of a ``--bids-filter-file``, JSON values).

    Labels are bare (see :func:`bare_labels`). Raises :class:`NothingMatched` for labels not in
    the dataset and :class:`NoInputError` when the selection holds no DWI.
    """
    subjects = list(participant_label or [])
    sessions = list(session_label or [])
    all_subjects = layout.get_subjects()
    if subjects:
        unknown = sorted(set(subjects) - set(all_subjects))
        if unknown:
            raise NothingMatched(
                f"participant label(s) {', '.join(unknown)} not found in {layout.root} "
                f"(it has: {', '.join(all_subjects) or 'none'})"
            )
    else:
        subjects = all_subjects
    if sessions:
        known = set(layout.get_sessions(subject=subjects))
        unknown = sorted(set(sessions) - known)
        if unknown:
            raise NothingMatched(f"session label(s) {', '.join(unknown)} not found")
    query = dict(subject=subjects, suffix="dwi", extension=DWI_EXTENSIONS, scope="raw")
    if qsiprep:  # QSIPrep's preprocessed series (space-ACPC or space-T1w), in its own root
        query.update(scope="all", desc="preproc", invalid_filters="allow")
    if sessions:
        query["session"] = sessions
    if filters:
        from ..cli.execution import pybids_filters

        query["invalid_filters"] = "allow"
        files = layout.get(**query, **pybids_filters(filters))
        if not files:
            raise NothingMatched(f"the --bids-filter-file's dwi filters {filters} match no DWI "
                                 f"series of participant(s) {', '.join(subjects)}")
    else:
        files = layout.get(**query)
    if not files:
        raise NoInputError(
            f"no DWI series (sub-*/[ses-*/]dwi/*_dwi.nii[.gz]) for participant(s) "
            f"{', '.join(subjects) or '(none)'} in {layout.root}"
        )
    inputs = []
    for f in files:
        ents = {k: v for k, v in f.get_entities().items() if k not in ("extension",)}
        inputs.append(
            DWIInput(
                subject=ents["subject"],
                dwi=f.path,
                bval=_sidecar(layout.get_bval, f.path),
                bvec=_sidecar(layout.get_bvec, f.path),
                mask=_qsiprep_mask(f.path) if qsiprep else _find_mask(layout, ents),
                entities=ents,
            )
        )
    return inputs


def _sidecar(getter, path) -> str | None:
    """The .bval/.bvec pybids associates with ``path`` (inheritance principle), or None."""
    try:
        found = getter(path)
    except (IndexError, ValueError):  # pybids raises IndexError when nothing is found
        return None
    if not found:
        return None
    return found if isinstance(found, str) else found[0]


def _qsiprep_mask(dwi_path: str) -> str | None:
    """QSIPrep's brain mask of a preprocessed series: the same name with ``desc-brain_mask``
    (``sub-01_space-ACPC_desc-preproc_dwi`` -> ``sub-01_space-ACPC_desc-brain_mask``)."""
    path = Path(dwi_path)
    stem = path.name.split(".")[0].replace("_desc-preproc_dwi", "_desc-brain_mask")
    found = [path.parent / f"{stem}{ext}" for ext in DWI_EXTENSIONS]
    return next((str(f) for f in found if f.is_file()), None)


def _find_mask(layout, ents) -> str | None:
    """A brain mask for this series in the dataset's derivatives (space-dwi), if any.

    A mask applies to a series when each series entity it names (``ses``, ``acq``, ``rec``,
    ``dir``, ``run``, ...) has the series' value; one that leaves an entity out applies to every
    value of it (BIDS inheritance). The most specific mask wins (then the first by name), so
    ``sub-01_dir-PA`` never takes ``sub-01_dir-AP``'s mask."""
    found = layout.get(
        scope="derivatives", subject=ents["subject"], suffix="mask", desc="brain",
        datatype="dwi", extension=DWI_EXTENSIONS, invalid_filters="allow",
    )
    scored = []
    for f in found:
        name = Path(f.path).name
        if "space-" in name and "space-dwi" not in name:
            continue
        mask_ents = f.get_entities()
        named = [k for k in SERIES_ENTITIES if k in mask_ents]
        if all(str(mask_ents[k]) == str(ents.get(k)) for k in named):
            scored.append((-len(named), f.path))
    return sorted(scored)[0][1] if scored else None


def _generated_by(path, root) -> list[str]:
    """``GeneratedBy`` names of the dataset holding ``path`` (the nearest
    ``dataset_description.json`` between its folder and ``root``)."""
    root = Path(root).resolve()
    for folder in Path(path).resolve().parents:
        desc = folder / "dataset_description.json"
        if desc.is_file():
            try:
                gen = json.loads(desc.read_text()).get("GeneratedBy") or []
            except ValueError:
                return []
            return [str(g.get("Name", "")) for g in gen if isinstance(g, dict)]
        if folder == root:
            break
    return []


def mask_metadata(mask, dwi, bids_dir) -> dict:
    """``Sources`` and ``Description`` of the brain-mask derivative: the mask given with the input
    (said to be the phantom's ground truth when ``gentract-phantom`` wrote it), or the DWI it
    was computed from."""
    link = input_link(bids_dir)
    if mask is None:
        return {"Sources": [bids_uri(dwi, bids_dir, link)],
                "Description": "brain mask computed from the DWI (dipy median_otsu, mean b=0)"}
    names = _generated_by(mask, bids_dir)
    if "gentract-phantom" in names:
        desc = ("the phantom's ground-truth brain mask (written by gentract-phantom), used as "
                "given: not estimated from the DWI")
    else:
        desc = f"the brain mask given with the input ({', '.join(names) or 'input dataset'})"
    return {"Sources": [bids_uri(mask, bids_dir, link)], "Description": desc}


def write_dataset_description(output_dir: Path, *, source: Path | None = None) -> Path:
    """``dataset_description.json`` of the derivatives dataset (``DatasetType: derivative``,
    ``DatasetLinks`` naming the input) and its ``.bidsignore`` (``io_spec.json``)."""
    desc = {
        "Name": "GenTract derivatives",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "gentract",
                "Version": __version__,
                "CodeURL": "https://github.com/gentract/gentract-bids",
                "Description": "Generative global tractography (GenTract) as a BIDS-App",
            }
        ],
    }
    from ..config import container

    if container():
        desc["GeneratedBy"][0]["Container"] = {"Type": container()}
    if source is not None:
        url = Path(os.path.abspath(source)).as_uri()
        desc["SourceDatasets"] = [{"URL": url}]
        desc["DatasetLinks"] = {input_link(source): url}  # for the sidecars' bids:raw:... URIs
    from .commit import write_atomic

    # what BIDS has no names for yet (BEP016 models, tractography, BEP014 transforms, reports)
    write_atomic(output_dir / ".bidsignore", "\n".join(io_spec()["bidsignore"]) + "\n")
    text = json.dumps(desc, indent=2) + "\n"
    return write_atomic(output_dir / "dataset_description.json", text)
