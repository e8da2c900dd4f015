"""The fMRIPrep/QSIRecon execution flags: parser level, and fODF-only runs on a tiny phantom."""

from __future__ import annotations

import os
import time

import pytest

from gentract_bids.cli.parser import build_parser, parse_args
from gentract_bids.cli.run import main
from gentract_bids.errors import (
    EX_CANTCREAT,
    EX_NOINPUT,
    EX_NOTHING_MATCHED,
    EX_OK,
    EX_USAGE,
    UsageError,
)
from helpers import run_cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A one-subject 4 mm tube phantom and one fODF-only run of it."""
    from gentract_bids.phantom.cohort import make_cohort

    root = tmp_path_factory.mktemp("flags")
    bids = make_cohort(root / "bids", n_subjects=1, voxel_size=4.0, n_dirs=20)
    out, work = root / "out", root / "work"
    (work / "stale").mkdir(parents=True)
    (work / "stale" / "old.txt").write_text("from an earlier run")
    here = os.getcwd()
    os.chdir(root)  # nipype's resource monitor leaves .proc-* files in the current folder
    try:
        code = run_cli(bids, out, root, "--stop-on-first-crash", "--resource-monitor",
                       "--write-graph", "--clean-workdir", "--notrack", "--mem", "2G")
    finally:
        os.chdir(here)
    return bids, out, root, code


def test_help_does_not_repeat_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: all) (default" not in text and "(default: []" not in text
    for flag in ("--nthreads", "--mem", "--config-file", "--bids-filter-file",
                 "--stop-on-first-crash", "--notrack", "--resource-monitor", "--write-graph",
                 "--clean-workdir", "--reports-only", "--boilerplate"):
        assert flag in text, flag
    assert "never tracks" in text


def test_resource_aliases_and_memory(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    base = [str(bids), str(tmp_path / "out"), "participant", "--tracker", "none"]
    for flag in ("--nthreads", "--n_cpus", "--n-cpus", "--nprocs"):
        assert parse_args([*base, flag, "3"]).execution.nprocs == 3
    for value, mb in (("2048", 2048), ("16G", 16384), ("16GB", 16384), ("512M", 512)):
        assert parse_args([*base, "--mem", value]).execution.mem_mb == mb
    assert parse_args([*base, "--mem-mb", "1000"]).execution.mem_mb == 1000
    with pytest.raises(SystemExit) as exc:
        parse_args([*base, "--mem", "lots"])
    assert exc.value.code == EX_USAGE


def test_plugin_and_sampler_follow_the_budget(tmp_path, monkeypatch):
    from gentract_bids.cli.execution import apply_resources, plugin_settings
    from gentract_bids.model.inference import _available_bytes, _free_bytes

    bids = tmp_path / "bids"
    bids.mkdir()
    ex = parse_args([str(bids), str(tmp_path / "o"), "participant", "--tracker", "none",
                     "--nthreads", "2", "--mem", "1G", "--omp-nthreads", "1"]).execution
    monkeypatch.delenv("GENTRACT_MEM_MB", raising=False)
    monkeypatch.delenv("GENTRACT_NTHREADS", raising=False)
    import torch

    threads = torch.get_num_threads()
    try:
        apply_resources(ex)
        assert torch.get_num_threads() == 2
        assert os.environ["GENTRACT_NTHREADS"] == "2"
        assert _available_bytes("cpu") == min(_free_bytes("cpu"), 2**30)
    finally:
        torch.set_num_threads(threads)
    name, args = plugin_settings(ex)
    assert name == "MultiProc" and args["n_procs"] == 2 and args["memory_gb"] == 1.0


def test_precision_reaches_the_sampling_node(tmp_path):
    from gentract_bids.workflows.base import _tracking_wf

    bids = tmp_path / "bids"
    bids.mkdir()
    args = [str(bids), str(tmp_path / "o"), "participant", "--tracker", "none"]
    assert parse_args(args).model.precision == "auto"
    config = parse_args(args + ["--precision", "float32"])
    assert config.model.precision == "float32"
    wf = _tracking_wf(config, "gentract", "cpu", False, {"sample": 1.0})
    assert wf.get_node("sample").inputs.precision == "float32"
    with pytest.raises(SystemExit):
        parse_args(args + ["--precision", "float16"])


def test_config_file_and_command_line_override(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    cfg = tmp_path / "opts.toml"
    cfg.write_text('sh-order = 4\nn_streamlines = 500\ntracker = ["none"]\n'
                   'output-format = "tck"\nstop-on-first-crash = true\n')
    base = [str(bids), str(tmp_path / "out"), "participant", "--config-file", str(cfg)]
    config = parse_args(base)
    assert config.workflow.sh_order == 4 and config.workflow.n_streamlines == 500
    assert config.workflow.output_format == "tck" and config.workflow.trackers == []
    assert config.execution.stop_on_first_crash
    assert parse_args([*base, "--sh-order", "8"]).workflow.sh_order == 8
    for bad in ('no-such-option = 1\n', 'output-format = "mp4"\n', "sh-order = [\n"):
        cfg.write_text(bad)
        with pytest.raises(UsageError, match="--config-file"):
            parse_args(base)


def _timed(argv, capsys):
    started = time.perf_counter()
    code = main(argv)
    return code, time.perf_counter() - started, capsys.readouterr().err


def test_cheap_errors_before_the_model(tmp_path, capsys):
    """The default tracker (GenTract) loads the human model; these errors come before it."""
    bids = tmp_path / "bids"
    (bids / "sub-01").mkdir(parents=True)
    (bids / "dataset_description.json").write_text("{}")
    bad_filter = tmp_path / "filter.json"
    bad_filter.write_text('{"dwi": ')
    cases = [
        ([str(tmp_path / "missing"), str(tmp_path / "out"), "participant"], EX_NOINPUT,
         "not found"),
        ([str(bids), str(bids / "out"), "participant"], EX_CANTCREAT, "inside the input"),
        ([str(bids), str(tmp_path / "out"), "participant", "--participant-label", "07"],
         EX_NOTHING_MATCHED, "07"),
        ([str(bids), str(tmp_path / "out"), "participant", "--bids-filter-file",
          str(bad_filter)], EX_USAGE, "not valid JSON"),
    ]
    for argv, expected, words in cases:
        code, seconds, err = _timed([*argv, "-w", str(tmp_path / "work")], capsys)
        assert code == expected, err
        assert words in err, err
        assert seconds < 5, f"{argv}: {seconds:.1f} s (the model was loaded?)"


def test_bids_filter_file_validation(tmp_path):
    from gentract_bids.cli.execution import load_bids_filters

    f = tmp_path / "f.json"
    f.write_text('{"t1w": {"run": 1}}')
    with pytest.raises(UsageError, match="unknown query t1w"):
        load_bids_filters(f)
    f.write_text('{"dwi": {"subject": "01"}}')
    with pytest.raises(UsageError, match="participant-label"):
        load_bids_filters(f)
    f.write_text('{"dwi": {"acquisition": "multishell", "run": null}}')
    assert load_bids_filters(f) == {"dwi": {"acquisition": "multishell", "run": None}}


def test_bids_filter_applies_to_the_dwi_query(tiny, tmp_path, capsys):
    bids, _, _, _ = tiny
    f = tmp_path / "filter.json"
    f.write_text('{"dwi": {"acquisition": "nosuch"}}')
    code = run_cli(bids, tmp_path / "out", tmp_path, "--bids-filter-file", str(f))
    err = capsys.readouterr().err
    assert code == EX_NOTHING_MATCHED, err
    assert "nosuch" in err
    from gentract_bids.io.bids import collect_dwi, load_layout

    layout = load_layout(bids)
    assert len(collect_dwi(layout, filters={"acquisition": None})) == 1


def test_fodf_run_with_execution_flags(tiny):
    bids, out, root, code = tiny
    assert code == EX_OK
    assert not (root / "work" / "stale").exists()  # --clean-workdir
    cfg = (root / "work" / "nipype" / "nipype.cfg").read_text()
    assert "stop_on_first_crash = true" in cfg
    assert "enabled = true" in cfg  # monitoring (resource monitor)
    from nipype.utils.filemanip import loadpkl

    results = list((root / "work").rglob("result_*.pklz"))
    assert results
    peaks = [getattr(loadpkl(r).runtime, "mem_peak_gb", None) for r in results]
    assert any(p is not None for p in peaks)  # the resource monitor measured the nodes
    assert (out / "logs" / "gentract_wf.dot").is_file()  # --write-graph
    md = (out / "logs" / "CITATION.md").read_text()
    assert "constrained spherical deconvolution" in md and "doi:10.1016/j.neuroimage.2007" in md
    assert "No tractography" in md and "SIFT" not in md  # what ran, not every method
    assert "doi.org/10.3389/fninf.2011.00013" in (out / "logs" / "CITATION.html").read_text()
    assert "doi = {10.21105/joss.01294}" in (out / "logs" / "CITATION.bib").read_text()


def test_reports_only_and_boilerplate(tiny, tmp_path):
    bids, out, root, code = tiny
    assert code == EX_OK
    report = out / "sub-01.html"
    report.unlink()
    work = tmp_path / "work2"
    args = [str(bids), str(out), "participant", "-w", str(work), "--skip-bids-validation"]
    assert main([*args, "--reports-only"]) == EX_OK  # default tracker: no model loaded
    assert report.is_file() and not work.exists()  # nothing ran
    out2 = tmp_path / "out2"
    assert main([str(bids), str(out2), "participant", "-w", str(work), "--boilerplate",
                 "--tracker", "ifod2"]) == EX_OK
    md = (out2 / "logs" / "CITATION.md").read_text()
    assert "iFOD2" in md and "10.1016/j.neuroimage.2012.11.049" in md
    assert not any(out2.glob("sub-*"))


def _checkpoint_with(tmp_path, sampler_defaults):
    """A copy of the shipped tube checkpoint whose JSON carries ``sampler_defaults``."""
    import json
    import shutil

    from gentract_bids.io.checkpoint import seal_metadata
    from gentract_bids.model.inference import TUBE_MODEL

    for f in TUBE_MODEL.parent.glob(TUBE_MODEL.name + "*"):  # weights, template, prior
        shutil.copy(f, tmp_path / f.name)
    stem = tmp_path / TUBE_MODEL.name
    meta = json.loads(TUBE_MODEL.with_suffix(".json").read_text())
    meta["sampler_defaults"] = sampler_defaults
    stem.with_suffix(".json").write_text(json.dumps(seal_metadata(meta)))
    return stem


def test_sampler_defaults_come_from_the_checkpoint(tmp_path):
    from gentract_bids.cli.parser import SAMPLER_DEFAULTS

    ckpt = _checkpoint_with(tmp_path, {"smc_times": [], "connectivity_prior": "on",
                                       "density_acceptance": 4.0})
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    m = parse_args([str(bids), str(out), "participant", "--model", str(ckpt)]).model
    assert (m.smc_times, m.connectivity_prior, m.density_strength) == ([], True, 4.0)
    assert m.guidance_scale == SAMPLER_DEFAULTS["guidance_scale"]  # not in the checkpoint
    assert m.checkpoint_defaults == ["--smc-times 0", "--density-acceptance 4.0",
                                     "--connectivity-prior on"]
    # what the user gives wins; without the support filter all of them are off
    m = parse_args([str(bids), str(out), "participant", "--model", str(ckpt), "--smc-times",
                    "0.4", "--connectivity-prior", "off"]).model
    assert (m.smc_times, m.connectivity_prior, m.density_strength) == ([0.4], False, 4.0)
    m = parse_args([str(bids), str(out), "participant", "--model", str(ckpt),
                    "--support-threshold", "0"]).model
    assert (m.guidance_scale, m.smc_times, m.density_strength, m.connectivity_prior) == \
        (0.0, [], 0.0, False)
    # a checkpoint without sampler_defaults: the app's
    m = parse_args([str(bids), str(out), "participant", "--model", "gentract_phantom"]).model
    assert (m.guidance_scale, m.smc_times, m.density_strength, m.connectivity_prior) == \
        (SAMPLER_DEFAULTS["guidance_scale"], SAMPLER_DEFAULTS["smc_times"],
         SAMPLER_DEFAULTS["density_acceptance"], False)
    assert m.checkpoint_defaults == []


def test_unknown_sampler_defaults_are_refused(tmp_path):
    ckpt = _checkpoint_with(tmp_path, {"smc": []})
    (tmp_path / "bids").mkdir()
    with pytest.raises(UsageError, match="sampler_defaults has unknown keys \\['smc'\\]"):
        parse_args([str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                    "--model", str(ckpt)])
