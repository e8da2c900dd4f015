"""The one configuration object of a run: execution, workflow, model and seeds.

It is built by the CLI, saved as TOML in the work directory, and echoed (``provenance()``) in every
output sidecar.
"""

from __future__ import annotations

import os
import platform
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import tomli_w

from . import __version__


@dataclass
class Execution:
    bids_dir: Path | None = None
    output_dir: Path | None = None
    work_dir: Path | None = None
    analysis_level: str = "participant"
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    skip_bids_validation: bool = False
    nprocs: int = 1
    omp_nthreads: int = 1
    device: str = "auto"
    verbosity: int = 0
    mem_mb: int | None = None  # memory budget: nipype's memory_gb and the sampler's batches
    bids_filters: dict = field(default_factory=dict)  # --bids-filter-file: query -> filters
    stop_on_first_crash: bool = False
    resource_monitor: bool = False  # nipype's resource monitor (psutil)
    write_graph: bool = False  # the workflow graph into OUTPUT_DIR/logs
    clean_workdir: bool = False
    reports_only: bool = False  # regenerate the reports from existing outputs, run nothing
    boilerplate_only: bool = False  # write logs/CITATION.* and stop
    input_type: str = "auto"  # auto | bids | qsiprep (auto: from dataset_description.json)
    notrack: bool = False  # accepted for fMRIPrep compatibility: nothing is ever tracked
    plugin: dict | None = None  # --use-plugin: {"plugin": "SLURM", "plugin_args": {...}}


@dataclass
class Workflow:
    sh_order: int = 6
    csd_method: str = "auto"  # auto | ssst | msmt
    csd_shell: float | None = None  # b-value for single-shell CSD on multi-shell data
    grid_spacing: float = 1.875
    grid_shape: tuple[int, int, int] = (80, 96, 80)  # the model's, when GenTract runs
    registration: str = "affine"  # affine | none (the data are in the model's space already)
    min_registration_dice: float = 0.75  # brain-mask overlap below this: registration failed
    trackers: list[str] = field(default_factory=list)  # gentract and/or baselines (ifod2, ...)
    n_streamlines: int = 100_000
    sift_factor: float = 10.0  # iFOD2/SD_Stream: generate factor x n, then tcksift to n
    tckglobal_niter: float = 2e7  # tckglobal iterations
    output_format: str = "trx"  # trx | tck | trk
    step_size: float | None = 1.0  # mm, GenTract resampling (None: off)
    denoise: str = "none"  # none | mppca | patch2self (raw DWI, before CSD)
    unring: bool = False  # Gibbs-ringing removal (after denoising)


@dataclass
class Evaluation:
    mode: str = "auto"  # auto | sanity | groundtruth | atlas | none
    truth_dir: Path | None = None  # phantom ground truth (default: derivatives/phantom-truth)
    waypoint_atlas: Path | None = None
    recobundles_models: Path | None = None
    bundleseg_atlas: Path | None = None
    bundle_atlas: Path | None = None  # TractSeg layout, template space (needs the registration)
    bundle_ending_dilation_mm: float = 4.0  # bundle atlas: dilation of the begin/end regions
    bundle_mask_dilation_mm: float = 2.0  # bundle atlas: dilation of the bundle masks
    bundle_min_inside: float = 0.8  # bundle atlas: fraction of points inside the mask
    min_bundle_streamlines: int = 10


PRECISIONS = ("auto", "float32", "bfloat16")  # --precision: the network's while it samples
SCHEDULES = ("uniform", "late", "early", "cosine")  # the flow sampler's time grids


@dataclass
class Model:
    path: Path | None = None  # None: the shipped checkpoint
    sha256: str | None = None  # of the weights, filled in when the checkpoint is checked
    sampler: str | None = None  # ddim | flow; None: the one that fits the model's objective
    steps: int | None = None  # None: the model's default (10)
    batch_size: int | None = None  # None: from the request and free memory
    support_threshold: float | None = None  # fODF support filter (model/support.py); None: off
    guidance_scale: float = 0.0  # fODF guidance of the flow steps; 0: off (the CLI: 0.03)
    smc_times: list[float] = field(default_factory=list)  # SMC resampling times; []: off
    density_strength: float = 0.0  # density-aware acceptance (coverage); 0: off
    time_schedule: str = "uniform"  # the flow's time grid (model/flow.py time_grid)
    connectivity_prior: bool = False  # the checkpoint's endpoint-pair prior (the CLI: on)
    precision: str = "auto"  # the network's number format while sampling: auto | float32 | bfloat16
    # the sampler options whose default came from the checkpoint's sampler_defaults, as
    # "--flag value" (for the log)
    checkpoint_defaults: list[str] = field(default_factory=list)


@dataclass
class Seeds:
    master: int = 0

    @property
    def numpy(self) -> int:
        return int(np.random.SeedSequence([self.master, 1]).generate_state(1)[0])

    @property
    def torch(self) -> int:
        return int(np.random.SeedSequence([self.master, 2]).generate_state(1)[0])


@dataclass
class Config:
    execution: Execution = field(default_factory=Execution)
    workflow: Workflow = field(default_factory=Workflow)
    evaluation: Evaluation = field(default_factory=Evaluation)
    model: Model = field(default_factory=Model)
    seeds: Seeds = field(default_factory=Seeds)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        def clean(obj):
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items() if v is not None}
            if isinstance(obj, (list, tuple)):
                return [clean(v) for v in obj]
            if isinstance(obj, Path):
                return str(obj)
            return obj

        out = clean(asdict(self))
        out["environment"] = {
            "version": __version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "container": container(),
        }
        return clean(out)

    def to_toml(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(tomli_w.dumps(self.to_dict()))
        return path

    @classmethod
    def from_toml(cls, path: Path) -> "Config":
        raw = tomllib.loads(Path(path).read_text())
        sections = {}
        for f in fields(cls):
            section_cls = f.default_factory
            values = raw.get(f.name, {})
            kwargs = {}
            for sf in fields(section_cls):
                if sf.name in values:
                    value = values[sf.name]
                    if sf.type.startswith("Path") and value is not None:
                        value = Path(value)
                    if sf.name == "grid_shape":
                        value = tuple(value)
                    kwargs[sf.name] = value
            sections[f.name] = section_cls(**kwargs)
        return cls(**sections)

    def provenance(self, device: str | None = None) -> dict:
        """What every output sidecar records about the run that made it."""
        return {
            "Software": "gentract",
            "Version": __version__,
            "RandomSeed": self.seeds.master,
            "Device": device or resolve_device(self.execution.device),
            "ModelChecksum": self.model.sha256,
            "Container": container(),
        }


def container() -> str | None:
    """The gentract container the run is in: ``GENTRACT_CONTAINER`` (set by our image), or
    Singularity/Apptainer's own variables. ``/.dockerenv`` is not evidence: it exists in any
    Docker-made sandbox, including machines that run the package from a plain install."""
    if os.environ.get("GENTRACT_CONTAINER"):
        return os.environ["GENTRACT_CONTAINER"]
    if os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER"):
        return "singularity"
    return None


def resolve_device(requested: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one fails."""
    import torch

    if requested == "cpu":
        return "cpu"
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        from .errors import UsageError

        raise UsageError("--device cuda was requested but no CUDA device is available")
    return "cuda" if has_cuda else "cpu"
