"""``gentract``: parse -> config -> checks -> nipype workflow -> derivatives."""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import re
import resource
import shutil
import signal
import sys
import time
from pathlib import Path

from ..config import Config, resolve_device
from ..errors import (
    EX_FAILURE,
    EX_OK,
    BadDataError,
    CannotCreateOutput,
    DiskFull,
    GenTractError,
    NoInputError,
    OutOfMemory,
    Terminated,
)
from ..logs import StageProgress, setup_logging
from .parser import parse_args

LOG = logging.getLogger("gentract")


def main(argv=None) -> int:
    """Console entry point; returns (and exits with) a BIDS-Apps exit code."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    os.environ.setdefault("TEMPLATEFLOW_AUTOUPDATE", "0")
    previous = _catch_signals()
    try:
        config = parse_args(argv, check_paths=True)
        setup_logging(config.execution.verbosity)
        args = sys.argv[1:] if argv is None else list(argv)
        code = run(config, command=" ".join(["gentract", *map(str, args)]))
    except GenTractError as err:
        if isinstance(err, BadDataError):  # "cannot read X" from a MemoryError: say so
            err = _resource_cause(err) or err
        print(f"gentract: error: {err}", file=sys.stderr)
        code = err.exit_code
    except Exception as err:  # a bug, not bad input: one line, the traceback with -v
        LOG.debug("unexpected error", exc_info=True)
        found = resource_error(err)  # a full disk or no memory: no bug, say which
        print(f"gentract: error: {found or f'internal error: {type(err).__name__}: {err}'}",
              file=sys.stderr)
        code = found.exit_code if found else EX_FAILURE
        if isinstance(found, OutOfMemory):  # nipype half-imported: its exit hook would
            cfg = sys.modules.get("nipype.utils.config")  # import it again and fail loudly
            if hasattr(cfg, "free_display"):
                atexit.unregister(cfg.free_display)
    except Terminated as err:  # a scheduler's time limit, Ctrl-C, a closed terminal
        signal.signal(err.signum, signal.SIG_IGN)
        stop_children()
        print(f"gentract: error: {err}; committed series are whole, nothing else was written "
              "to the output (run the same command again to resume)", file=sys.stderr)
        code = err.exit_code
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code


NO_SPACE = ("[Errno 28]", "No space left on device", "[Errno 122]", "Disk quota exceeded")
NO_MEMORY = ("MemoryError", "Cannot allocate memory", "can't allocate memory",
             "failed to map segment", "Unable to allocate", "[Errno 12]")
MEMORY_HINT = ("raise the memory limit, or lower --nprocs, --n-streamlines or --batch-size "
               "(--mem sizes the batches)")


def _free_mb(path) -> str:
    """Free space on the device of ``path`` (or of its nearest existing folder), in MB."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    with contextlib.suppress(OSError):
        return f"{shutil.disk_usage(existing).free / 1e6:.1f} MB free"
    return "free space unknown"


def resource_error(err, target=None, node: str = "") -> GenTractError | None:
    """:class:`DiskFull` (73) or :class:`OutOfMemory` (1), one line each, when ``err`` (an
    exception, or the last line of a failed node's traceback) says the disk or the memory ran
    out; else None. ``target``: the directory that filled (default: the error's file)."""
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}".rstrip(": ")
    during = f" while {node} ran" if node else ""
    if (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
            or any(m in text for m in NO_SPACE)):
        target = target or getattr(err, "filename", None) or "the output or work directory"
        return DiskFull(f"no space left on the device of {target} ({_free_mb(target)} now)"
                        f"{during}: free space or choose another location, then run the same "
                        "command again (nothing of an unfinished series is in the output)")
    if (isinstance(err, MemoryError) or any(m in text for m in NO_MEMORY)
            or not isinstance(err, str) and _at_memory_limit()):
        first = (text.strip().splitlines() or [""])[0][:200]
        return OutOfMemory(f"out of memory{during} ({first}): {MEMORY_HINT}")
    return None


def _at_memory_limit(margin: int = 64 << 20) -> bool:
    """Whether this process came within ``margin`` bytes of its address-space limit (``ulimit
    -v``, ``prlimit --as``): allocations that fail inside CPython (while importing, compiling)
    surface as odd errors (SystemError, ValueError) rather than MemoryError."""
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY:
        return False
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text().splitlines()
        peak = int(next(ln for ln in status if ln.startswith("VmPeak")).split()[1]) * 1024
        return peak > soft - margin
    return False


def _resource_cause(err: BaseException) -> GenTractError | None:
    """:func:`resource_error` of the MemoryError or full-disk OSError behind ``err``, if any."""
    for _ in range(5):
        err = err.__cause__ or err.__context__
        if isinstance(err, MemoryError) or isinstance(err, OSError) and err.errno in (
                errno.ENOSPC, errno.EDQUOT):
            return resource_error(err)
        if err is None:
            return None
    return None


CAUGHT: list[int] = []  # signals received by this process


def _stop_check(callback):
    """Wrap nipype's status callback: raise :class:`Terminated` before any further node runs
    once a signal was caught (the callback's exceptions leave nipype's plugins)."""
    def check(node, status):
        if CAUGHT:
            raise Terminated(CAUGHT[0])
        callback(node, status)

    return check


def _catch_signals() -> dict:
    """SIGTERM/SIGINT/SIGHUP raise :class:`Terminated` in the main thread; returns the old
    handlers."""
    def stop(signum, frame):
        CAUGHT.append(signum)  # nipype's nodes catch even BaseException: see _stop_check
        raise Terminated(signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        previous[signum] = signal.signal(signum, stop)
    return previous


def _descendants(pid: int) -> list[int]:
    """Process ids of all descendants of ``pid`` (from /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def stop_children(grace: float = 5.0) -> None:
    """SIGTERM every descendant (nipype workers, MRtrix3), SIGKILL those left after ``grace``
    seconds (a worker holding its signals while it commits finishes its renames first)."""
    pids = _descendants(os.getpid())
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        for pid in pids:
            with contextlib.suppress(OSError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_paths(config: Config) -> None:
    """The input must exist; outputs and work must not be inside it (it is never modified)."""
    ex = config.execution
    if not ex.bids_dir.is_dir():
        raise NoInputError(f"input dataset not found: {ex.bids_dir}")
    for what, path in (("output", ex.output_dir), ("work", ex.work_dir)):
        if _inside(path, ex.bids_dir):
            raise CannotCreateOutput(
                f"the {what} directory {path} is inside the input dataset {ex.bids_dir}; "
                "choose a location outside it (the input is never modified)"
            )
        check_writable(path, what)


def check_writable(path: Path, what: str) -> None:
    """:class:`CannotCreateOutput` unless ``path`` is a writable directory or can be created:
    its nearest existing ancestor must be a writable directory."""
    if path.exists() and not path.is_dir():
        raise CannotCreateOutput(f"the {what} directory {path} exists and is not a directory")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise CannotCreateOutput(f"cannot create the {what} directory {path}: {existing} is a "
                                 "file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" ({existing} is not writable)"
        raise CannotCreateOutput(f"the {what} directory {path} is not writable{where}")


def preflight(inputs, workflow) -> None:
    """Read every selected series completely and check that CSD (``workflow``'s settings) can
    fit it, before anything is written."""
    from ..io.bids import check_distinct_series
    from ..io.dwi import check_csd_input, read_dwi, read_mask

    check_distinct_series(inputs)
    for item in inputs:
        name = Path(item.dwi).name
        if item.bval is None or item.bvec is None:
            missing = " and ".join(k for k in ("bval", "bvec") if getattr(item, k) is None)
            raise BadDataError(f"{name}: no .{missing} file found for this DWI series")
        try:
            dwi = read_dwi(item.dwi, item.bval, item.bvec)
            mask = (None if item.mask is None
                    else read_mask(item.mask, dwi.affine, dwi.data.shape, name))
            check_csd_input(dwi, mask, sh_order=workflow.sh_order, method=workflow.csd_method,
                            shell=workflow.csd_shell,
                            names=(name, Path(item.bval).name,
                                   item.mask and Path(item.mask).name))
        except BadDataError as err:
            raise BadDataError(f"sub-{item.subject}: {err}") from None


def run(config: Config, command: str | None = None) -> int:
    """Run the analysis level of ``config``; ``command`` (the command line) goes into the
    participant reports."""
    from . import execution
    from .boilerplate import write_citation

    ex = config.execution
    check_paths(config)
    if ex.boilerplate_only:
        for path in write_citation(config, execution.logs_dir(ex)):
            print(f"gentract: methods: {path}")
        return EX_OK
    if ex.reports_only:
        subjects = sorted(d.name[4:] for d in ex.output_dir.glob("sub-*") if d.is_dir()
                          and (not ex.participant_label or d.name[4:] in ex.participant_label))
        if not subjects:
            raise NoInputError(f"--reports-only: no sub-* outputs in {ex.output_dir}")
        return EX_OK if write_reports(config, subjects, command) else EX_FAILURE
    if ex.analysis_level == "group":
        from .group import run_group

        return run_group(config)

    from ..io.bids import collect_dwi, is_qsiprep, load_layout, validate_bids

    qsiprep = ex.input_type == "qsiprep" or (ex.input_type == "auto" and is_qsiprep(ex.bids_dir))
    if not ex.skip_bids_validation and not qsiprep:  # a QSIPrep folder is a derivative
        validate_bids(ex.bids_dir)
    layout = load_layout(ex.bids_dir)
    inputs = collect_dwi(layout, ex.participant_label, ex.session_label,
                         filters=ex.bids_filters.get("dwi"), qsiprep=qsiprep)
    preflight(inputs, config.workflow)
    device = resolve_device(ex.device)

    if ex.clean_workdir:
        execution.clean_workdir(ex)
    created_output = not ex.output_dir.exists()
    try:
        ex.work_dir.mkdir(parents=True, exist_ok=True)
        ex.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CannotCreateOutput(f"cannot create {err.filename}: {err.strerror}") from None
    config.to_toml(ex.work_dir / "config.toml")
    from ..io.commit import recover

    for run_name in recover(ex.output_dir):
        LOG.warning("completed the interrupted commit of %s into %s", run_name, ex.output_dir)

    failure = None
    try:
        ok = _run_workflow(config, inputs, device)
    except (DiskFull, OutOfMemory) as err:  # the series committed before it stay described
        ok, failure = False, err
    committed = any(ex.output_dir.glob("sub-*"))
    if committed:
        from ..io.bids import write_dataset_description

        write_dataset_description(ex.output_dir, source=ex.bids_dir)
        write_citation(config, execution.logs_dir(ex))
    elif created_output and not any(ex.output_dir.iterdir()):
        ex.output_dir.rmdir()
    if failure is not None:
        raise failure
    if not ok:
        return EX_FAILURE
    trackers = config.workflow.trackers
    print(f"gentract: derivatives of {len(inputs)} DWI series written to {ex.output_dir}"
          + (f" (trackers: {', '.join(trackers)})" if trackers else " (fODF only)"))
    subjects = sorted({item.subject for item in inputs})
    return EX_OK if write_reports(config, subjects, command) else EX_FAILURE


def write_reports(config: Config, subjects, command: str | None = None) -> bool:
    """Write ``OUTPUT_DIR/sub-<label>.html`` for each subject and print where it is. A report
    that fails is reported on stderr (with the traceback at -v) and leaves every committed
    derivative in place; returns whether all reports were written."""
    from ..reports.subject import write_subject_report

    ok = True
    for subject in subjects:
        try:
            path = write_subject_report(config.execution.output_dir, subject,
                                        config=config.to_dict(), command=command)
        except Exception as err:  # the derivatives are committed: keep them, say what failed
            LOG.debug("report of sub-%s failed", subject, exc_info=True)
            print(f"gentract: error: the report of sub-{subject} could not be written "
                  f"({type(err).__name__}: {err}); its derivatives in "
                  f"{config.execution.output_dir} are complete and were kept", file=sys.stderr)
            ok = False
            continue
        print(f"gentract: report: {path}")
    return ok


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)(:|$)")  # "MemoryError", too


def crash_reasons(crash_dir: Path, since: float = 0.0) -> list[str]:
    """One line per nipype crash file written after ``since``: the failed node and the last line
    of its traceback (the exception and its message), e.g. a failed registration."""
    out = []
    for path in sorted(Path(crash_dir).glob("crash-*.txt")):
        if path.stat().st_mtime < since:
            continue
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        node = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Node:")), "?")
        tb = [ln for ln in lines if ln.startswith("Traceback")]
        last = next((ln for ln in reversed(lines) if EXCEPTION_LINE.match(ln)), None) or next(
            (ln for ln in reversed(lines) if ":" in ln and not ln.startswith(
                ("File ", "Node", "Working", "Traceback"))), lines[-1] if lines else "")
        out.append(f"{node}: {last}" if tb or last else node)
    return out


def _resource_failure(reasons: list[str], err: Exception, ex) -> GenTractError | None:
    """A full disk or exhausted memory behind the failed nodes (``reasons``, "node: last line"
    each) or ``err``: the commit node writes the output directory, every other node the work
    directory; a work device left with under 1 MB free also counts (its crash files may be
    empty)."""
    for line in [*reasons, f"{type(err).__name__}: {err}"]:
        node, text = line.split(": ", 1) if line in reasons and ": " in line else ("", line)
        target = ex.output_dir if node.endswith(".commit") else ex.work_dir
        found = resource_error(text, target=target, node=node)
        if found is not None:
            return found
    with contextlib.suppress(OSError):
        if shutil.disk_usage(ex.work_dir).free < 1e6:
            return resource_error(OSError(errno.ENOSPC, "full"), target=ex.work_dir)
    return None


class CrashSummary(logging.Filter):
    """nipype logs "Saving crash info to FILE" with the node's whole traceback (on stdout): keep
    the line, drop the traceback (it is in FILE; ``-v`` keeps it)."""

    def filter(self, record):
        if str(record.msg).startswith("Saving crash info to") and record.args:
            record.msg, record.args = "Saving crash info to %s", record.args[:1]
        return True


def _crash_logging(verbosity: int) -> None:
    logger = logging.getLogger("nipype.workflow")
    for old in [f for f in logger.filters if isinstance(f, CrashSummary)]:
        logger.removeFilter(old)
    if verbosity == 0:
        logger.addFilter(CrashSummary())


def _run_workflow(config: Config, inputs, device: str) -> bool:
    from nipype import config as ncfg

    from ..workflows.base import init_gentract_wf, series_id
    from . import execution

    ex = config.execution
    execution.apply_resources(ex)
    _crash_logging(ex.verbosity)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ex.omp_nthreads)  # inherited by nipype's worker processes
    ncfg.set("execution", "crashdump_dir", str(ex.work_dir / "crash"))
    ncfg.set("execution", "crashfile_format", "txt")
    execution.nipype_settings(ncfg, ex)
    # MultiProc workers start from a forkserver and read nipype's config afresh: hand them this
    # one (log levels, crash folder) through NIPYPE_CONFIG_DIR
    cfg_dir = ex.work_dir / "nipype"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg_dir / "nipype.cfg", "w") as fh:
        ncfg._config.write(fh)
    os.environ["NIPYPE_CONFIG_DIR"] = str(cfg_dir)
    wf = init_gentract_wf(config, inputs, device)
    progress = StageProgress(wf, {f"{series_id(item)}_wf": item.label for item in inputs})
    # forkserver, not fork: a worker forked from a process whose OpenMP pool has started (torch
    # loaded the model to check it) can deadlock in its first parallel op
    plugin = execution.plugin_settings(ex)
    if ex.write_graph:
        execution.write_graph(wf, ex)
    plugin[1]["status_callback"] = _stop_check(progress)
    execution.apply_node_requests(wf, plugin[0], ex)  # --use-plugin SLURM: per-node requests
    if config.model.checkpoint_defaults and "gentract" in config.workflow.trackers:
        LOG.info("sampler defaults of the model's checkpoint: %s",
                 ", ".join(config.model.checkpoint_defaults))
    LOG.info("processing %d DWI series with %s", len(inputs),
             f"nipype's {plugin[0]} plugin" if ex.plugin else
             f"{ex.nprocs} processes" if ex.nprocs > 1 else "one process")
    started = time.time()
    try:
        wf.run(plugin=plugin[0], plugin_args=plugin[1])
    except Exception as err:  # nipype: RuntimeError (MultiProc) or the node's error (Linear)
        if CAUGHT:
            raise Terminated(CAUGHT[0]) from None
        reasons = crash_reasons(ex.work_dir / "crash", since=started)
        found = _resource_failure(reasons, err, ex)
        if found is not None:
            raise found from None
        for line in reasons:
            print(f"gentract: error: {line}", file=sys.stderr)
        summary = (f"{len(reasons)} node(s) failed" if reasons
                   else (str(err).strip().splitlines() or [type(err).__name__])[0])
        print(
            f"gentract: error: processing failed ({summary}); crash reports are in "
            f"{ex.work_dir / 'crash'}; outputs of failed series were not written",
            file=sys.stderr,
        )
        return False
    if CAUGHT:
        raise Terminated(CAUGHT[0])
    return True


if __name__ == "__main__":
    sys.exit(main())
