"""Series of one subject that differ by one entity (``dir-`` AP/PA, ``acq-``, ``rec-``, ``run-``,
``ses-``): distinct workflows, distinct work folders and distinct derivative names.

Issue 19: ``sub-01_dir-AP_dwi`` + ``sub-01_dir-PA_dwi`` crashed with 'Duplicate node name
"sub_01_wf"' because the series' workflow names dropped ``dir-``; the derivatives would have
been written under one name as well.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gentract_bids.cli.parser import parse_args
from gentract_bids.cli.run import main
from gentract_bids.errors import EX_DATAERR, BadDataError
from gentract_bids.io.bids import (
    DWIInput,
    check_distinct_series,
    collect_dwi,
    load_layout,
    output_prefix,
)
from gentract_bids.phantom.cohort import make_cohort
from gentract_bids.workflows.base import init_gentract_wf, series_id

DIRS = ("AP", "PA")


def _split_series(bids: Path, variants: dict[str, str]) -> Path:
    """Replace sub-01's single DWI series by one copy per ``variants`` entry (name -> the
    entities inserted after ``sub-01``, e.g. ``{"AP": "dir-AP"}``)."""
    d = bids / "sub-01" / "dwi"
    originals = [f for f in d.iterdir() if f.name.startswith("sub-01_dwi")]
    for f in originals:
        for ents in variants.values():
            shutil.copyfile(f, d / f.name.replace("sub-01_", f"sub-01_{ents}_"))
        f.unlink()
    return bids


@pytest.fixture(scope="module")
def dir_bids(tmp_path_factory) -> Path:
    """A one-subject 3 mm phantom whose DWI is stored twice, as dir-AP and dir-PA."""
    root = tmp_path_factory.mktemp("dirs")
    bids = make_cohort(root / "bids", n_subjects=1, voxel_size=3.0, seed=11,
                       n_truth_streamlines=50)
    return _split_series(bids, {d: f"dir-{d}" for d in DIRS})


def _item(name: str, **entities) -> DWIInput:
    return DWIInput(subject="01", dwi=f"/data/sub-01/dwi/{name}_dwi.nii.gz", bval=None,
                    bvec=None, mask=None, entities={"subject": "01", **entities})


@pytest.mark.parametrize("a, b", [
    (("sub-01_dir-AP", {"direction": "AP"}), ("sub-01_dir-PA", {"direction": "PA"})),
    (("sub-01_acq-hi", {"acquisition": "hi"}), ("sub-01_acq-lo", {"acquisition": "lo"})),
    (("sub-01_rec-mag", {"reconstruction": "mag"}),
     ("sub-01_rec-cplx", {"reconstruction": "cplx"})),
    (("sub-01_run-1", {"run": 1}), ("sub-01_run-2", {"run": 2})),
    (("sub-01_ses-A", {"session": "A"}), ("sub-01_ses-B", {"session": "B"})),
    (("sub-01_ses-A_acq-x_dir-AP_run-1", {"session": "A", "acquisition": "x", "direction": "AP",
                                          "run": 1}),
     ("sub-01_ses-A_acq-x_dir-PA_run-1", {"session": "A", "acquisition": "x", "direction": "PA",
                                          "run": 1})),
])
def test_series_names_keep_every_entity(a, b):
    one, two = _item(a[0], **a[1]), _item(b[0], **b[1])
    assert series_id(one) != series_id(two)
    assert series_id(one) == a[0].replace("-", "_")
    assert output_prefix(one.series_entities) == a[0]
    assert output_prefix(two.series_entities) == b[0]
    check_distinct_series([one, two])  # no error


@pytest.mark.parametrize("entity, key", [("space", "space"), ("desc", "desc")])
def test_series_that_derivative_names_cannot_tell_apart_are_refused(entity, key):
    """``space-``/``desc-`` have no place in a raw DWI name: the workflows would be distinct
    (the file names differ), but the derivatives would collide, so the run is refused up front
    with both file names, not half-written."""
    one = _item(f"sub-01_{key}-a", **{entity: "a"})
    two = _item(f"sub-01_{key}-b", **{entity: "b"})
    assert series_id(one) != series_id(two)
    with pytest.raises(BadDataError) as err:
        check_distinct_series([one, two])
    assert f"sub-01_{key}-a_dwi.nii.gz" in str(err.value)
    assert f"sub-01_{key}-b_dwi.nii.gz" in str(err.value)


def test_graph_has_one_workflow_per_dir_series(dir_bids, tmp_path):
    """The graph of two dir- series (every tracker kind) builds, with distinct node names and
    distinct staging folders and derivative entities."""
    config = parse_args([str(dir_bids), str(tmp_path / "out"), "participant", "--model", "gentract_phantom", "-w",
                         str(tmp_path / "work"), "--tracker", "gentract", "sdstream", "dipy-det"])
    inputs = collect_dwi(load_layout(dir_bids))
    assert sorted(i.entities["direction"] for i in inputs) == list(DIRS)
    wf = init_gentract_wf(config, inputs, "cpu")
    names = sorted(wf.list_node_names())
    assert {n.split(".")[0] for n in names} == {"sub_01_dir_AP_wf", "sub_01_dir_PA_wf"}
    ap = [n.split(".", 1)[1] for n in names if n.startswith("sub_01_dir_AP_wf.")]
    pa = [n.split(".", 1)[1] for n in names if n.startswith("sub_01_dir_PA_wf.")]
    assert ap == pa and len(ap) > 10  # the same pipeline twice
    commits = {n: wf.get_node(f"{n}.commit") for n in ("sub_01_dir_AP_wf", "sub_01_dir_PA_wf")}
    staging = {c.inputs.staging_dir for c in commits.values()}
    assert len(staging) == 2
    for d in DIRS:
        stage = wf.get_node(f"sub_01_dir_{d}_wf.sdstream_derivatives_wf.stage")
        assert stage.inputs.base_entities == {"subject": "01", "direction": d}


def test_desc_only_series_refused_cleanly(tmp_path, capsys):
    """On the command line: exit 65 and one line naming both files, nothing written."""
    bids = make_cohort(tmp_path / "bids", n_subjects=1, voxel_size=6.0, seed=1,
                       n_truth_streamlines=5, n_dirs=12)
    _split_series(bids, {"a": "desc-a", "b": "desc-b"})
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--model", "gentract_phantom", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--tracker", "none", "--nprocs", "1"])
    err = capsys.readouterr().err
    assert code == EX_DATAERR, err
    lines = [line for line in err.splitlines() if line.startswith("gentract: error:")]
    assert len(lines) == 1 and "sub-01_desc-a_dwi.nii.gz" in lines[0], err
    assert not out.exists()


@pytest.mark.slow
def test_dir_series_run_end_to_end(dir_bids, tmp_path, capsys):
    """Both series run (fODF stage and a tracker) and every derivative is written twice, once
    under each ``dir-`` entity; the report and the group tables list both."""
    out = tmp_path / "out"
    code = main([str(dir_bids), str(out), "participant", "--model", "gentract_phantom", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation", "--tracker", "dipy-det", "--n-streamlines", "100",
                 "--min-bundle-streamlines", "2", "--nprocs", "2", "--random-seed", "3"])
    assert code == 0, capsys.readouterr().err
    dwi, figs = out / "sub-01" / "dwi", out / "sub-01" / "figures"
    names = {}
    for d in DIRS:
        p = f"sub-01_dir-{d}"
        expected = [
            dwi / f"{p}_space-dwi_desc-brain_mask.nii.gz",
            dwi / f"{p}_space-dwi_model-csd_param-fod_dwimap.nii.gz",
            dwi / f"{p}_space-dwi_model-csd_param-fod_dwimap.json",
            dwi / f"{p}_space-gentract_desc-zscored_model-csd_param-fod_dwimap.nii.gz",
            dwi / f"{p}_space-dwi_model-dipydet_streamlines.trx",
            dwi / f"{p}_space-dwi_model-dipydet_streamlines.json",
            dwi / f"{p}_space-dwi_desc-eval_model-dipydet_metrics.json",
            dwi / f"{p}_space-dwi_model-dipydet_bundlestats.tsv",
            figs / f"{p}_desc-fod_model-csd_dwi.png",
            figs / f"{p}_desc-directions_model-dipydet_streamlines.png",
        ]
        missing = [str(f.relative_to(out)) for f in expected if not f.exists()]
        assert not missing, missing
        names[d] = {f.name.replace(f"dir-{d}", "dir-X") for f in out.rglob(f"{p}_*")}
    # the same set of derivatives for each series, and nothing named without its dir- entity
    assert names["AP"] == names["PA"]
    undirected = [f.name for f in out.rglob("sub-01_*") if "_dir-" not in f.name]
    assert not undirected, undirected
    html = (out / "sub-01.html").read_text()
    assert "sub-01_dir-AP" in html and "sub-01_dir-PA" in html

    assert main([str(dir_bids), str(out), "group", "-w", str(tmp_path / "w2")]) == 0
    fodf_rows = (out / "group_fodf.tsv").read_text().splitlines()
    assert len(fodf_rows) == 3
    header, *rows = (out / "group_bundlestats.tsv").read_text().splitlines()
    assert "direction" in header.split("\t")
    col = header.split("\t").index("direction")
    assert {r.split("\t")[col] for r in rows} == set(DIRS)
