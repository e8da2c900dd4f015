"""Derivative writing with niworkflows' DerivativesDataSink and GenTract's naming spec."""

import os
import shutil
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
)
from niworkflows.interfaces.bids import DerivativesDataSink as _DDS

from ..io.bids import io_spec


class DerivativesDataSink(_DDS):
    """niworkflows' sink writing at the output root with the entities/patterns of io_spec.json."""

    out_path_base = ""
    _config_entities = frozenset(e["name"] for e in io_spec()["entities"])
    _config_entities_dict = io_spec()["entities"]
    _file_patterns = tuple(io_spec()["default_path_patterns"])


class _CommitInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="staged derivatives")
    staging_dir = Directory(mandatory=True, desc="root the staged files are relative to")
    output_dir = Directory(mandatory=True, desc="the derivatives dataset")


class _CommitOutputSpec(TraitedSpec):
    out_files = OutputMultiObject(File(exists=True))


class CommitDerivatives(SimpleInterface):
    """Copy one series' staged derivatives into the output dataset once all of them exist.

    It runs only after every sink of the series succeeded, so a failed series leaves nothing
    half-written in the output; each file lands through an atomic rename.
    """

    input_spec = _CommitInputSpec
    output_spec = _CommitOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        staging = Path(self.inputs.staging_dir)
        output = Path(self.inputs.output_dir)
        out_files = []
        for src in map(Path, self.inputs.in_files):
            dest = output / src.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.partial")
            shutil.copy2(src, tmp)
            os.replace(tmp, dest)
            out_files.append(str(dest))
        self._results["out_files"] = out_files
        return runtime
