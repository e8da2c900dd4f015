"""``gentract-train``: train the GenTract model on a BIDS cohort with reference tractograms.

    gentract-train BIDS_DIR RUN_DIR --config phantom.yaml [--stage vae|generator|all]

The run directory receives the resolved config, the subject split, loss curves (CSV + PNG), the
resumable training state and the checkpoint (``checkpoint/gentract.safetensors`` + ``.json``).
Running the same command again resumes an interrupted run. Several processes (one per GPU;
gloo on CPU) split every step's batch and average their gradients:

    torchrun --standalone --nproc-per-node 2 --no-python gentract-train BIDS_DIR RUN_DIR ...
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from .. import __version__
from ..errors import EX_FAILURE, EX_OK, GenTractError, NoInputError, UsageError
from ..io.bids import bare_labels
from .parser import ExitCodeParser

LOG = logging.getLogger("gentract.train")
STAGES = ("vae", "generator", "all")


def build_parser():
    p = ExitCodeParser(prog="gentract-train", description=__doc__.split("\n\n")[0],
                       formatter_class=__import__("argparse").ArgumentDefaultsHelpFormatter)
    p.add_argument("bids_dir", type=Path, help="BIDS dataset with the training subjects' DWI")
    p.add_argument("run_dir", type=Path, help="where the run (state, logs, checkpoint) is written")
    p.add_argument("--config", default="phantom.yaml",
                   help="a recipe shipped in gentract_bids/data/configs (phantom.yaml, paper.yaml) "
                        "or a path to a YAML file")
    p.add_argument("--reference", type=Path, default=None,
                   help="BIDS-Derivatives folder with per-subject reference tractograms "
                        "(default: BIDS_DIR/derivatives/phantom-truth)")
    p.add_argument("--stage", choices=STAGES, default="all")
    p.add_argument("--participant-label", nargs="+", default=None,
                   help="subjects to use (default: all with a reference tractogram)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override recipe values, e.g. generator.steps=100 model.objective=flow")
    p.add_argument("--random-seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where fODFs on the canonical grid are cached (default: RUN_DIR/cache)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice, all cores); 1 is faster "
                        "on a machine busy with other work")
    p.add_argument("--grad-accumulation", type=int, default=1, metavar="N",
                   help="micro-batches per process per step, their gradients averaged: the global "
                        "batch is batch_size x processes x N; runs with the same processes x N "
                        "train the same model (and can resume each other)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--version", action="version", version=f"gentract {__version__}")
    return p


# ----------------------------------------------------------------------------- recipe
def recipe_path(name: str) -> Path:
    path = Path(name)
    if path.exists():
        return path
    shipped = resources.files("gentract_bids") / "data" / "configs" / name
    if shipped.is_file():
        return Path(str(shipped))
    raise UsageError(f"training config not found: {name} (neither a file nor a shipped recipe)")


def _set(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        if not isinstance(node.get(key), dict):
            raise UsageError(f"--set {dotted}: '{key}' is not a section of the recipe")
        node = node[key]
    if leaf not in node:
        raise UsageError(f"--set {dotted}: unknown key '{leaf}'")
    node[leaf] = value


def load_recipe(name: str, overrides=()) -> dict:
    recipe = yaml.safe_load(recipe_path(name).read_text())
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"--set expects KEY=VALUE, got '{item}'")
        key, raw = item.split("=", 1)
        _set(recipe, key, yaml.safe_load(raw))
    return recipe


def model_config(recipe: dict):
    from ..model.gentract import GenTractConfig

    m = dict(recipe["model"])
    return GenTractConfig.from_dict(m)


TEMPLATES = ("none", "cohort", "atlas")


def model_template(recipe: dict, cfg, train_sources):
    """The template the recipe's model is trained in (``data.template``): ``atlas``, the packaged
    TractSeg atlas FA (or ``data.atlas_dir``) on a canonical grid centred on its brain; ``cohort``,
    the mean FA of the training subjects as they are placed; ``none`` (default): no template, the
    model grid is the subjects' world."""
    from ..registration.template import mean_template, template_from_atlas

    data = recipe.get("data", {})
    kind = str(data.get("template", "none"))
    if kind not in TEMPLATES:
        raise UsageError(f"recipe data.template must be one of {', '.join(TEMPLATES)}, got {kind!r}")
    if kind == "none":
        return None
    if kind == "atlas":
        from ..phantom.atlas import load_atlas

        return template_from_atlas(load_atlas(data.get("atlas_dir")), cfg.grid_spacing,
                                   tuple(cfg.grid_shape))
    from ..fodf.grid import canonical_grid
    from ..train.dataset import subject_fa

    pairs = [subject_fa(s, cfg.grid_spacing, tuple(cfg.grid_shape)) for s in train_sources]
    space = str(data.get("template_space", "cohort"))
    return mean_template([p[0] for p in pairs], [p[1] for p in pairs],
                         canonical_grid(cfg.grid_spacing, tuple(cfg.grid_shape))[0], space,
                         f"mean FA of the {len(pairs)} training subjects (sub-"
                         + ", sub-".join(s.label for s in train_sources) + "), as placed")


def _prepare_data(opts, recipe, cfg, bids_dir: Path, reference: Path, run_dir: Path):
    """Subjects, split, template and the fODFs on the canonical grid (cached in the run)."""
    from ..train import dataset as ds

    sources = ds.discover_subjects(bids_dir, reference,
                                   participant_label=bare_labels(opts.participant_label, "sub-"))
    labels = [s.label for s in sources]
    split_file = run_dir / "split.json"
    if split_file.exists():
        split = json.loads(split_file.read_text())
    else:
        split = ds.split_subjects(labels, tuple(recipe["data"]["split"]), seed=opts.random_seed)
        ds.write_split(split_file, split)
    used = set(split["train"]) | set(split["validation"])
    cache_dir = opts.cache_dir or run_dir / "cache"
    t0 = time.perf_counter()
    template = model_template(recipe, cfg, [s for s in sources if s.label in split["train"]])
    t_template = time.perf_counter() - t0
    register = template is not None and bool(recipe["data"].get("register", True))
    prepared = ds.prepare_subjects([s for s in sources if s.label in used], cfg,
                                   cfg.transformer.n_points, cache_dir=cache_dir,
                                   template=template if register else None,
                                   workers=max(1, opts.threads or 1))
    t_fod = time.perf_counter() - t0 - t_template
    return split, template, register, ds.TrainingData(prepared), t_template, t_fod


# ----------------------------------------------------------------------------- run
def main(argv=None) -> int:
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    opts = build_parser().parse_args(argv)
    logging.basicConfig(level=("WARNING", "INFO", "DEBUG")[min(opts.verbose, 2)],
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        train(opts)
    except GenTractError as err:
        print(f"gentract-train: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("gentract-train: interrupted; run the same command again to resume",
              file=sys.stderr)
        return EX_FAILURE
    return EX_OK


def _write_yaml_once(path: Path, data: dict, what: str) -> dict:
    """Write ``data`` the first time; on a resume, insist that it is unchanged."""
    if path.exists():
        old = yaml.safe_load(path.read_text())
        if old != data:
            raise UsageError(f"{path} exists with a different {what}: use a new run directory "
                             "(or the same settings to resume)")
        return old
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return data


def train(opts) -> dict:
    import torch

    from ..config import resolve_device
    from ..io.checkpoint import save_checkpoint
    from ..model.gentract import GenTract
    from ..train.augment import augmentation_rotations, augmentation_scalings
    from ..train.loop import (GeneratorSettings, RunContext, VAESettings, finish_distributed,
                              init_distributed, main_first, train_generator, train_vaes)

    t_start = time.perf_counter()
    bids_dir = opts.bids_dir.resolve()
    if not bids_dir.is_dir():
        raise NoInputError(f"training dataset not found: {bids_dir}")
    reference = (opts.reference or bids_dir / "derivatives" / "phantom-truth").resolve()
    if not reference.is_dir():
        raise NoInputError(f"reference tractograms not found: {reference} (use --reference)")
    recipe = load_recipe(opts.config, opts.overrides)
    if opts.grad_accumulation < 1:
        raise UsageError("--grad-accumulation must be at least 1")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    rank, world, device = init_distributed(resolve_device(opts.device))
    run_dir = opts.run_dir.resolve()
    resolved = {"recipe": recipe, "bids_dir": str(bids_dir), "reference": str(reference),
                "random_seed": opts.random_seed}
    if world * opts.grad_accumulation > 1:  # the shards of each step's global batch (loop.py)
        resolved["batch_shards"] = world * opts.grad_accumulation
    torch.manual_seed(opts.random_seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cfg = model_config(recipe)

    # rank 0 first writes config, split and fODF cache; the other processes then read them
    with main_first(rank, world):
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_yaml_once(run_dir / "config.yaml", resolved, "configuration")
        split, template, register, data, t_template, t_fod = _prepare_data(
            opts, recipe, cfg, bids_dir, reference, run_dir)
    rot = recipe["data"]["rotations"]
    rotations = (augmentation_rotations(tuple(rot["angles"]))
                 + augmentation_scalings(tuple(recipe["data"].get("scales") or ())))
    data.register_rotations(rotations)  # the coordinate bounds cover every augmentation
    data.fit_statistics(split["train"])
    train_pairs = data.choose_pairs(split["train"], rotations, rot["per_subject"],
                                    seed=opts.random_seed)
    val_pairs = data.choose_pairs(split["validation"], rotations, 0, seed=opts.random_seed)

    model = GenTract(cfg).to(device)
    model.set_coordinate_bounds(data.lo, data.hi)
    ctx = RunContext(run_dir=run_dir, seed=opts.random_seed, device=device,
                     progress=not opts.no_progress, rank=rank, world_size=world,
                     accumulate=opts.grad_accumulation)
    ctx.timings["template_seconds"] = round(t_template, 1)
    ctx.timings["fodf_seconds"] = round(t_fod, 1)  # with the registrations when registering
    results: dict = {}

    from ..model.connectivity import ConnectivityPrior, connectivity_path

    prior = ConnectivityPrior.from_streamlines(  # the training subjects' ends, model space
        [data.subjects[lab].streamlines for lab in split["train"]])

    def checkpoint(step=None):
        from ..io.checkpoint import file_sha256
        from ..registration.template import save_model_template

        conn = prior.save(connectivity_path(run_dir / "checkpoint" / "gentract"))
        meta = {
            "connectivity": {"file": conn.name, "sha256": file_sha256(conn),
                             "learned_from": "reference streamlines of the training subjects",
                             **prior.as_dict()},
            "template": (None if template is None else
                         {**save_model_template(run_dir / "checkpoint" / "gentract", template),
                          "registered_training": register}),
            "zscore": {"mean": data.mean.tolist(), "std": data.std.tolist()},
            "coord_bounds": {"lo": data.lo.tolist(), "hi": data.hi.tolist()},
            "provenance": {
                "software": "gentract", "version": __version__, "recipe": recipe.get("name"),
                "random_seed": opts.random_seed, "device": device, "torch": torch.__version__,
                "train_subjects": split["train"], "validation_subjects": split["validation"],
                "training_data": str(bids_dir), "reference": str(reference),
                "generator_step": step, "timings": dict(ctx.timings), **results,
            },
        }
        return save_checkpoint(run_dir / "checkpoint" / "gentract", model, meta)

    if opts.stage in ("vae", "all"):
        results["vae"] = train_vaes(model, data, train_pairs, VAESettings(**recipe["vae"]), ctx)
    else:
        from ..train.state import load_state

        if load_state(run_dir / "state" / "vae", {"vaes": model.vaes}, {}) is None:
            raise UsageError(f"--stage generator needs a trained VAE stage in {run_dir}")
    if opts.stage in ("generator", "all"):
        out = train_generator(model, data, train_pairs, val_pairs,
                              GeneratorSettings(**recipe["generator"]), ctx,
                              on_checkpoint=checkpoint if rank == 0 else None)
        results.update(out)
    ctx.timings["total_seconds"] = round(time.perf_counter() - t_start, 1)
    ctx.timings["processes"] = world
    finish_distributed()
    if rank == 0:
        from ..reports.training import plot_losses, write_training_report

        plot_losses(run_dir)
        path = checkpoint()
        summary = {"checkpoint": str(path), "timings": ctx.timings, **results}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        write_training_report(run_dir, summary)
        print(json.dumps({k: v for k, v in summary.items() if k != "vae"}, indent=1,
                         default=str))
        return summary
    return {}


if __name__ == "__main__":
    sys.exit(main())
