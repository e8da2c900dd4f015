"""Execution options shared with fMRIPrep/QSIRecon: resources, config and filter files, nipype's
execution settings, the work directory and the citation boilerplate of a run."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tomllib
from pathlib import Path

from ..errors import UsageError

LOG = logging.getLogger("gentract")
# read by model/inference.py in nipype's worker processes (the sampling node)
NTHREADS_ENV, MEM_ENV = "GENTRACT_NTHREADS", "GENTRACT_MEM_MB"
FILTER_QUERIES = ("dwi",)  # the queries a --bids-filter-file may filter
_UNITS = {"": 1, "m": 1, "mb": 1, "g": 1024, "gb": 1024, "t": 1024**2, "tb": 1024**2}


def parse_mem(value: str) -> int:
    """``--mem``: megabytes, or a number with a unit (``16G``, ``16GB``, ``512M``)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(value)
    return max(1, int(float(match.group(1)) * _UNITS[unit]))


parse_mem.__name__ = "memory size"  # argparse names the type in its error message


def read_option_file(path: Path, option: str, parse, error, kind: str):
    """The content of the file an ``option`` names, parsed by ``parse``; an unreadable file or a
    parse ``error`` is one :class:`UsageError` line naming the option and the file."""
    try:
        return parse(Path(path).read_text())
    except OSError as err:
        raise UsageError(f"{option} {path}: {err.strerror}") from None
    except error as err:
        raise UsageError(f"{option} {path}: not valid {kind} ({err})") from None


def config_file_defaults(parser, path: Path) -> dict:
    """The options of a ``--config-file`` TOML (``option = value``, dashes or underscores, as on
    the command line) as parser defaults: the command line still overrides each of them."""
    raw = read_option_file(path, "--config-file", tomllib.loads, tomllib.TOMLDecodeError, "TOML")
    actions = {}
    for action in parser._actions:
        for opt in action.option_strings:
            actions[opt.lstrip("-").replace("-", "_")] = action
    defaults = {}
    for key, value in raw.items():
        action = actions.get(key.replace("-", "_"))
        if action is None or not action.option_strings or key in ("config_file", "version"):
            raise UsageError(f"--config-file {path}: unknown option '{key}'")
        values = value if isinstance(value, list) else [value]
        if action.type is not None:
            try:
                values = [action.type(v) if isinstance(v, str) else v for v in values]
            except (TypeError, ValueError):
                raise UsageError(f"--config-file {path}: bad value for '{key}': {value!r}") \
                    from None
        if action.choices and any(v not in action.choices for v in values):
            raise UsageError(f"--config-file {path}: '{key}' must be one of "
                             f"{', '.join(map(str, action.choices))}, got {value!r}")
        defaults[action.dest] = values if action.nargs in ("+", "*") else values[0]
    return defaults


def load_bids_filters(path: Path) -> dict:
    """``--bids-filter-file``: a JSON object of pybids filters per query, as in fMRIPrep
    (``{"dwi": {"acquisition": "multishell", "run": 1}}``); ``null`` matches files without the
    entity, ``"*"`` any value."""
    filters = read_option_file(path, "--bids-filter-file", json.loads, ValueError, "JSON")
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise UsageError(f"--bids-filter-file {path}: must be a JSON object of objects, e.g. "
                         '{"dwi": {"acquisition": "multishell"}}')
    unknown = sorted(set(filters) - set(FILTER_QUERIES))
    if unknown:
        raise UsageError(f"--bids-filter-file {path}: unknown query {', '.join(unknown)} "
                         f"(this app queries: {', '.join(FILTER_QUERIES)})")
    for query in filters.values():
        if query.keys() & {"subject", "session", "suffix", "extension", "scope"}:
            raise UsageError(f"--bids-filter-file {path}: subject, session, suffix, extension "
                             "and scope are set by the app (use --participant-label and "
                             "--session-label)")
    return filters


def pybids_filters(filters: dict) -> dict:
    """JSON filters as pybids queries: ``null`` -> ``Query.NONE``, ``"*"`` -> ``Query.ANY``."""
    from bids.layout import Query

    special = {None: Query.NONE, "*": Query.ANY}
    return {k: special.get(v, v) if not isinstance(v, list) else v for k, v in filters.items()}


def apply_resources(ex) -> None:
    """``--nthreads`` and ``--mem``: torch's threads here and, through the environment, in
    nipype's workers (the sampling node); the memory budget caps the sampler's batches."""
    os.environ[NTHREADS_ENV] = str(ex.nprocs)
    if ex.mem_mb:
        os.environ[MEM_ENV] = str(ex.mem_mb)
    else:
        os.environ.pop(MEM_ENV, None)
    import torch

    torch.set_num_threads(ex.nprocs)


def nipype_settings(ncfg, ex) -> None:
    """``--stop-on-first-crash`` and ``--resource-monitor`` in nipype's configuration."""
    ncfg.set("execution", "stop_on_first_crash", str(ex.stop_on_first_crash).lower())
    if ex.resource_monitor:
        ncfg.enable_resource_monitor()
    else:
        ncfg.set("monitoring", "enabled", "false")


# plugins whose wf.run() waits for the nodes (a *Graph plugin returns once the jobs are queued,
# before the outputs exist, and gentract then writes its reports from them)
PLUGINS = ("Linear", "MultiProc", "LegacyMultiProc", "SLURM", "SGE", "PBS", "LSF", "Condor",
           "OAR", "IPython")
# nodes that run torch with --nthreads threads (GENTRACT_NTHREADS; the workflow sets their
# n_procs to it) and size their batches from the memory budget
TORCH_NODES = ("sample",)


def load_plugin_file(path: Path) -> dict:
    """``--use-plugin``: fMRIPrep's YAML, ``plugin: SLURM`` and an optional ``plugin_args:``
    mapping handed to nipype's ``wf.run`` (e.g. ``sbatch_args: "-p short --time 2:00:00"``)."""
    import yaml

    raw = read_option_file(path, "--use-plugin", yaml.safe_load, yaml.YAMLError, "YAML")
    if not isinstance(raw, dict) or not isinstance(raw.get("plugin"), str):
        raise UsageError(f"--use-plugin {path}: needs 'plugin: NAME' (e.g. SLURM, MultiProc)")
    unknown = sorted(set(raw) - {"plugin", "plugin_args"})
    if unknown:
        raise UsageError(f"--use-plugin {path}: unknown key(s) {', '.join(unknown)} "
                         "(a plugin file has plugin and plugin_args)")
    name = raw["plugin"].removesuffix("Plugin")
    if name.endswith("Graph"):
        raise UsageError(f"--use-plugin {path}: {name} returns before its jobs have run, "
                         f"so outputs and reports cannot follow; use {name[:-5]}")
    if name not in PLUGINS:
        raise UsageError(f"--use-plugin {path}: unknown plugin {name!r} "
                         f"(one of {', '.join(PLUGINS)})")
    args = raw.get("plugin_args") or {}
    if not isinstance(args, dict):
        raise UsageError(f"--use-plugin {path}: plugin_args must be a mapping")
    return {"plugin": name, "plugin_args": args}


def plugin_settings(ex) -> tuple[str, dict]:
    """nipype's plugin: the ``--use-plugin`` file's, else MultiProc with ``--nthreads``
    processes and the ``--mem`` budget."""
    if ex.plugin:
        return ex.plugin["plugin"], dict(ex.plugin["plugin_args"])
    if ex.nprocs == 1:
        return "Linear", {}
    args = {"n_procs": ex.nprocs, "mp_context": "forkserver"}
    if ex.mem_mb:
        args["memory_gb"] = ex.mem_mb / 1024
    return "MultiProc", args


def node_requests(node) -> tuple[int, float]:
    """(CPUs, GB) a node asks the scheduler for: its ``n_procs``/``mem_gb`` hints."""
    return max(1, int(node.n_procs)), float(node.mem_gb)


# how each batch plugin is told a node's CPUs and memory (GB), appended to its own arguments
_REQUESTS = {
    "SLURM": ("sbatch_args", "--cpus-per-task={cpus} --mem={mb}M"),
    "SGE": ("qsub_args", "-pe smp {cpus} -l h_vmem={mb}M"),
    "PBS": ("qsub_args", "-l nodes=1:ppn={cpus},mem={mb}mb"),
}


def apply_node_requests(wf, plugin: str, ex) -> int:
    """Turn the nodes' resource hints into per-node scheduler requests (``node.plugin_args``) for
    SLURM, SGE and PBS; returns how many nodes got one. Other plugins read the hints themselves
    (MultiProc) or ignore them."""
    if plugin not in ("Linear", "MultiProc", "LegacyMultiProc", "IPython"):
        import getpass

        os.environ.setdefault("LOGNAME", getpass.getuser())  # job names (unset in containers)
    if plugin not in _REQUESTS:
        return 0
    key, template = _REQUESTS[plugin]
    count = 0
    for node in wf._get_all_nodes():
        if node.run_without_submitting:
            continue
        cpus, gb = node_requests(node)
        if node.name in TORCH_NODES and not ex.mem_mb:  # the budget its request was made for
            from ..workflows.base import SAMPLE_BUDGET_GB

            os.environ[MEM_ENV] = str(int(SAMPLE_BUDGET_GB * 1024))
        request = template.format(cpus=cpus, mb=max(1, int(round(gb * 1024))))
        node.plugin_args = {**node.plugin_args, key: request, "overwrite": False}
        count += 1
    return count


def clean_workdir(ex) -> None:
    """``--clean-workdir``: empty the work directory before the run (as fMRIPrep does)."""
    work = Path(ex.work_dir)
    if work.is_dir():
        LOG.info("removing the contents of the work directory %s", work)
        for child in work.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def logs_dir(ex) -> Path:
    return Path(ex.output_dir) / "logs"


def write_graph(wf, ex) -> Path:
    """``--write-graph``: the workflow graph as Graphviz ``.dot`` in OUTPUT_DIR/logs (and as SVG
    when Graphviz's ``dot`` is installed)."""
    out = logs_dir(ex)
    out.mkdir(parents=True, exist_ok=True)
    dot = out / "gentract_wf.dot"
    fmt = "svg" if shutil.which("dot") else "dot"
    wf.write_graph(dotfilename=str(dot), graph2use="colored", format=fmt, simple_form=True)
    return dot
