"""Console logging of a run: one handler for the ``gentract`` loggers, stage lines with timings.

Every app logger is named under ``gentract`` (``gentract.inference``, ``gentract.train``, ...) and
writes through one stderr handler; nipype keeps its own (stdout) handler and does not propagate,
so no line is printed twice. :class:`StageProgress` is nipype's ``status_callback``: it runs in the
main process whatever the plugin, and logs when each stage of each series starts and ends.
"""

from __future__ import annotations

import logging
import os
import sys
import time

LOG = logging.getLogger("gentract")
FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"
DATEFMT = "%H:%M:%S"
LEVEL_ENV = "GENTRACT_LOG_LEVEL"  # read by nipype's worker processes (worker_logging)


def _handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    return handler


def setup_logging(verbosity: int) -> None:
    """gentract logs at INFO (DEBUG with -v); nipype at WARNING (its INFO lines with -vv)."""
    from nipype import config as ncfg
    from nipype import logging as nlogging

    level = ("INFO", "DEBUG", "DEBUG")[min(verbosity, 2)]
    LOG.handlers[:] = [_handler()]
    LOG.setLevel(level)
    LOG.propagate = False
    os.environ[LEVEL_ENV] = level
    ncfg.set("logging", "workflow_level", ("WARNING", "WARNING", "INFO")[min(verbosity, 2)])
    ncfg.set("logging", "interface_level", "WARNING")
    ncfg.set("logging", "utils_level", "WARNING")
    nlogging.update_logging(ncfg)
    logging.getLogger("nipype").propagate = False  # its own handler prints it once


def worker_logging() -> None:
    """In a nipype worker process (MultiProc), give the ``gentract`` loggers the console handler
    of the main process (same stderr, level from the environment); nothing when it has one."""
    if not LOG.handlers:
        LOG.addHandler(_handler())
        LOG.setLevel(os.environ.get(LEVEL_ENV, "INFO"))
        LOG.propagate = False


def stage_name(part: str) -> str:
    """The stage of a node from the name of its sub-workflow under the series workflow."""
    if part == "fodf_wf":
        return "fODF"
    for prefix, stage in (("track_", "tracking"), ("eval_", "evaluation")):
        if part.startswith(prefix) and part.endswith("_wf"):
            return f"{stage} ({part[len(prefix):-3]})"
    return "outputs"  # derivatives workflows, gather and commit


class StageProgress:
    """nipype ``status_callback``: a line when a stage of a series starts and when its last node
    ends (with its duration), a summary of GenTract sampling, and each node at DEBUG.

    ``series`` maps the name of each series workflow under ``wf`` to the label printed."""

    def __init__(self, wf, series: dict[str, str]):
        from nipype.interfaces.utility import IdentityInterface

        self.series = series
        self.left: dict[tuple[str, str], int] = {}  # nodes still to run in each stage
        for name in wf.list_node_names():
            parts = name.split(".")
            # identity nodes are removed from the graph nipype runs
            if len(parts) > 1 and not isinstance(wf.get_node(name).interface, IdentityInterface):
                key = (parts[0], stage_name(parts[1]))
                self.left[key] = self.left.get(key, 0) + 1
        self.started: dict[tuple[str, str], float] = {}

    def _key(self, node) -> tuple[str, str] | None:
        parts = node.fullname.split(".")
        for i, part in enumerate(parts[:-1]):
            if part in self.series:
                return part, stage_name(parts[i + 1])
        return None

    def __call__(self, node, status: str) -> None:
        key = self._key(node)
        if key is None:
            return
        label = self.series[key[0]]
        now = time.perf_counter()
        if status == "start":
            LOG.debug("%s: node %s started", label, node.fullname)
            if key not in self.started:
                self.started[key] = now
                LOG.info("%s: %s started", label, key[1])
            return
        elapsed = now - self.started.get(key, now)
        if status == "exception":
            LOG.error("%s: %s failed after %.1f s (node %s)", label, key[1], elapsed,
                      node.fullname)
            return
        LOG.debug("%s: node %s finished", label, node.fullname)
        if node.name == "sample" and key[1].startswith("tracking"):
            self._sampling_summary(label, node)
        self.left[key] = self.left.get(key, 1) - 1
        if self.left[key] == 0:
            LOG.info("%s: %s done in %.1f s", label, key[1], elapsed)

    @staticmethod
    def _sampling_summary(label: str, node) -> None:
        try:
            meta = node.result.outputs.metadata
        except Exception:  # no result to read: nothing to summarise
            return
        LOG.info("%s: GenTract kept %d of %d streamlines drawn (requested %d) in %.1f s, "
                 "%.0f streamlines/s, batches of %d", label, meta["NumberOfStreamlines"],
                 meta["NumberSampled"], meta["NumberRequested"],
                 meta["Timings"]["SamplingSeconds"], meta["StreamlinesPerSecond"],
                 meta["BatchSize"])
