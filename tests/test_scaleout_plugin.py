"""--use-plugin (fMRIPrep's nipype plugin file) and the per-node scheduler requests it leads to."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from gentract_bids.cli import execution
from gentract_bids.cli.parser import parse_args
from gentract_bids.config import Config, Execution
from gentract_bids.errors import UsageError
from gentract_bids.io.bids import DWIInput
from gentract_bids.workflows.base import init_gentract_wf, resource_hints

SLURM_YML = """\
plugin: SLURM
plugin_args:
  sbatch_args: --partition local --time 01:00:00
  max_jobs: 8
"""


def test_plugin_file_reaches_nipype_and_the_saved_config(tmp_path):
    (tmp_path / "bids").mkdir()
    plugin = tmp_path / "plugin.yml"
    plugin.write_text(SLURM_YML)
    config = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                         "--use-plugin", str(plugin), "--tracker", "none"])
    name, args = execution.plugin_settings(config.execution)
    assert name == "SLURM"
    assert args == {"sbatch_args": "--partition local --time 01:00:00", "max_jobs": 8}
    args["status_callback"] = print  # run.py adds its callback: the config stays as read
    assert "status_callback" not in config.execution.plugin["plugin_args"]
    again = Config.from_toml(config.to_toml(tmp_path / "config.toml"))
    assert again.execution.plugin == config.execution.plugin
    # without the option: MultiProc from --nthreads, as before
    plain = parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                        "--nthreads", "2", "--tracker", "none"])
    assert execution.plugin_settings(plain.execution)[0] == "MultiProc"


@pytest.mark.parametrize("text, message", [
    ("plugin_args: {}\n", "needs 'plugin: NAME'"),
    ("- SLURM\n", "needs 'plugin: NAME'"),
    ("plugin: SLURM\nplugin-args: {}\n", "unknown key(s) plugin-args"),
    ("plugin: SLURMGraph\n", "use SLURM"),
    ("plugin: Slurm\n", "unknown plugin 'Slurm'"),
    ("plugin: SLURM\nplugin_args: [a, b]\n", "plugin_args must be a mapping"),
    ("plugin: [SLURM\n", "not valid YAML"),
])
def test_bad_plugin_files_are_refused(tmp_path, text, message):
    path = tmp_path / "p.yml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        execution.load_plugin_file(path)


def test_missing_plugin_file_is_a_usage_error(tmp_path, capsys):
    from gentract_bids.cli.run import main

    (tmp_path / "bids").mkdir()
    code = main([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                 "--use-plugin", str(tmp_path / "nope.yml")])
    assert code == 64
    assert "--use-plugin" in capsys.readouterr().err


def _series(tmp_path, shape=(20, 24, 20, 33), subject="01") -> DWIInput:
    d = tmp_path / f"sub-{subject}" / "dwi"
    d.mkdir(parents=True)
    dwi = d / f"sub-{subject}_dwi.nii.gz"
    nb.Nifti1Image(np.zeros(shape, np.float32), np.eye(4) * 2).to_filename(dwi)
    return DWIInput(subject=subject, dwi=str(dwi), bval=str(d / f"sub-{subject}_dwi.bval"),
                    bvec=str(d / f"sub-{subject}_dwi.bvec"), mask=None,
                    entities={"subject": subject})


def test_heavy_nodes_ask_slurm_for_their_cpus_and_memory(tmp_path, monkeypatch):
    monkeypatch.delenv(execution.MEM_ENV, raising=False)
    item = _series(tmp_path, shape=(40, 48, 40, 30))
    config = Config(execution=Execution(bids_dir=tmp_path, output_dir=tmp_path / "out",
                                        work_dir=tmp_path / "work", nprocs=4, omp_nthreads=3))
    config.workflow.trackers = ["sdstream"]
    hints = resource_hints(config, item)
    assert hints["fodf"] == pytest.approx(0.5 + 3 * 40 * 48 * 40 * 30 * 8 / 2**30, abs=0.01)
    assert hints["sample"] == 1.0
    wf = init_gentract_wf(config, [item], "cpu")
    assert execution.apply_node_requests(wf, "MultiProc", config.execution) == 0
    n = execution.apply_node_requests(wf, "SLURM", config.execution)
    nodes = {f"{nd._hierarchy.split('.', 2)[-1]}.{nd.name}": nd for nd in wf._get_all_nodes()}
    assert n == sum(not nd.run_without_submitting for nd in nodes.values())
    csd = nodes["fodf_wf.csd"]
    assert (csd.n_procs, csd.mem_gb) == (3, hints["fodf"])
    assert csd.plugin_args["sbatch_args"] == \
        f"--cpus-per-task=3 --mem={round(hints['fodf'] * 1024)}M"
    assert nodes["track_sdstream_wf.track"].plugin_args["sbatch_args"] == \
        f"--cpus-per-task=3 --mem={round(hints['track'] * 1024)}M"
    assert nodes["fodf_wf.brain_mask"].plugin_args["sbatch_args"] == \
        "--cpus-per-task=1 --mem=205M"  # nipype's default hint: 0.2 GB


def test_multiproc_counts_the_sampling_threads(tmp_path):
    """The sampling node runs --nthreads torch threads: MultiProc must count them, or two
    subjects' samplers run 2 x N threads on N CPUs (the human demo: 5x slower)."""
    items = [_series(tmp_path, subject=s) for s in ("01", "02")]
    config = Config(execution=Execution(bids_dir=tmp_path, output_dir=tmp_path / "out",
                                        work_dir=tmp_path / "work", nprocs=2, omp_nthreads=1))
    config.workflow.trackers = ["gentract"]
    wf = init_gentract_wf(config, items, "cpu")
    samplers = [nd for nd in wf._get_all_nodes() if nd.name == "sample"]
    assert len(samplers) == 2 and all(nd.n_procs == 2 for nd in samplers)


def test_mem_budget_caps_the_hints_and_is_the_sampling_request(tmp_path):
    item = _series(tmp_path, shape=(40, 48, 40, 30))
    config = Config(execution=Execution(mem_mb=560))
    assert resource_hints(config, item) == {"fodf": 0.54, "track": 0.51, "sample": 0.54}
    assert resource_hints(Config(), item)["sample"] == 1.0  # 0.5 + a quarter of 2 GB
    config.execution.mem_mb = 3686  # slurm_participant.sh's 90 % of 4 GB
    hints = resource_hints(config, item)
    assert hints["sample"] == 1.39 and max(hints.values()) <= 3686 / 1024


def test_the_sampling_node_asks_for_the_torch_threads(tmp_path, monkeypatch):
    monkeypatch.delenv(execution.MEM_ENV, raising=False)
    from nipype.pipeline import engine as pe

    from gentract_bids.workflows.tractography import init_gentract_tractography_wf

    wf = init_gentract_tractography_wf(model_path="m", n_streamlines=10, mem_gb=1.0, n_procs=6)
    ex = Execution(nprocs=6)
    top = pe.Workflow(name="top")
    top.add_nodes([wf])
    execution.apply_node_requests(top, "SGE", ex)
    sample = wf.get_node("sample")
    assert sample.plugin_args["qsub_args"] == "-pe smp 6 -l h_vmem=1024M"
    import os

    # no --mem: the sampler's batches get the budget its request was computed from (2 GB)
    assert os.environ[execution.MEM_ENV] == "2048"
