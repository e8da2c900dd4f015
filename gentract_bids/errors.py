"""Errors that end a run with one readable message and a BIDS-Apps exit code."""

# BIDS-Apps execution spec (see architecture.md)
EX_OK = 0
EX_FAILURE = 1
EX_BIDS_INVALID = 16
EX_UNKNOWN_LEVEL = 17
EX_NOTHING_MATCHED = 18
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_CANTCREAT = 73


class GenTractError(Exception):
    """Base class: ``exit_code`` is what the command-line returns."""

    exit_code = EX_FAILURE


class UsageError(GenTractError):
    exit_code = EX_USAGE


class BIDSValidationFailed(GenTractError):
    exit_code = EX_BIDS_INVALID


class UnknownAnalysisLevel(GenTractError):
    exit_code = EX_UNKNOWN_LEVEL


class NothingMatched(GenTractError):
    exit_code = EX_NOTHING_MATCHED


class BadDataError(GenTractError):
    exit_code = EX_DATAERR


class NoInputError(GenTractError):
    exit_code = EX_NOINPUT


class CannotCreateOutput(GenTractError):
    exit_code = EX_CANTCREAT


class DiskFull(CannotCreateOutput):
    """No space left (or the quota exceeded) on the device of the output or work directory."""


class OutOfMemory(GenTractError):
    """Memory ran out (a ``ulimit -v``/cgroup limit, ``MemoryError``, a failed allocation)."""

    exit_code = EX_FAILURE


class CheckpointError(BadDataError):
    """A model checkpoint is missing, corrupt, tampered with or does not match its config."""

    exit_code = EX_DATAERR


class Terminated(BaseException):
    """SIGTERM, SIGINT or SIGHUP: a clean stop. A BaseException, so no ``except Exception``
    (nipype's included) swallows it; the exit code is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class OutputBusy(GenTractError):
    """A participant-level commit into the output is unfinished (running or interrupted)."""

    exit_code = EX_NOINPUT
