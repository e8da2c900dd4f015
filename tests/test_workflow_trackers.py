"""`gentract --tracker ...`: every baseline runs end to end on a phantom subject and is scored."""

from __future__ import annotations

import csv
import json

import pytest

from helpers import validate_derivatives, whole_brain_tractograms
from gentract_bids.cli.run import main
from gentract_bids.io.tractogram import load_tractogram
from gentract_bids.phantom.cohort import make_cohort

TRACKERS = {"ifod2": "ifod2", "sdstream": "sdstream", "tckglobal": "tckglobal",
            "dipy-det": "dipydet", "dipy-prob": "dipyprob"}
N = 400
KEYS = ("mode", "n_streamlines", "precision", "valid_bundles", "n_bundles", "mean_overlap",
        "mean_overreach", "mean_f1", "bundles")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trackers")
    bids = make_cohort(root / "bids", n_subjects=1, voxel_size=3.0, seed=11,
                       n_truth_streamlines=50)
    out, work = root / "out", root / "work"
    code = main([str(bids), str(out), "participant", "--model", "gentract_phantom", "-w", str(work), "--skip-bids-validation",
                 "--tracker", *TRACKERS, "--n-streamlines", str(N), "--sift-factor", "2",
                 "--tckglobal-niter", "2e6",
                 "--min-bundle-streamlines", "2", "--nprocs", "2", "--random-seed", "4"])
    assert code == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("tracker", list(TRACKERS))
def test_tracker_outputs_are_scored(run, tracker):
    model = TRACKERS[tracker]
    dwi = run / "sub-01" / "dwi"
    trx = dwi / f"sub-01_space-dwi_model-{model}_streamlines.trx"
    streamlines, _ = load_tractogram(trx)
    assert 0 < len(streamlines) <= N
    side = json.loads(trx.with_suffix(".json").read_text())
    # the tool that tracked keeps its own Software; gentract is the Pipeline around it
    for key in ("Software", "PipelineVersion", "RandomSeed", "Device", "Container", "Evaluation"):
        assert key in side, key
    assert side["Software"].split()[0] == ("dipy" if tracker.startswith("dipy") else "MRtrix3")
    assert side["Pipeline"] == "gentract" and "ModelChecksum" not in side
    assert side["RandomSeed"] == 4

    metrics = json.loads((dwi / f"sub-01_space-dwi_desc-eval_model-{model}_metrics.json")
                         .read_text())
    for key in KEYS:
        assert key in metrics, key
    assert metrics["mode"] == "groundtruth"  # the phantom's truth was found and used
    assert metrics["n_streamlines"] == len(streamlines)
    assert metrics["n_bundles"] == 22 and 0.0 <= metrics["precision"] <= 1.0
    assert "sanity" in metrics

    with (dwi / f"sub-01_space-dwi_model-{model}_bundlestats.tsv").open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == 22
    # per-bundle tractograms hold exactly the valid streamlines the table counts
    for row in rows:
        label = row["bundle"].replace("_", "")
        path = dwi / f"sub-01_space-dwi_bundle-{label}_model-{model}_streamlines.trx"
        n = int(row["n_streamlines"])
        assert path.exists() == (n > 0), row
        if n:
            assert len(load_tractogram(path)[0]) == n
    figs = run / "sub-01" / "figures"
    assert (figs / f"sub-01_desc-directions_model-{model}_streamlines.png").exists()


@pytest.mark.slow
def test_local_trackers_find_real_bundles(run):
    """Coordinates are right end to end: streamline trackers reach valid connections."""
    dwi = run / "sub-01" / "dwi"
    prec = {m: json.loads((dwi / f"sub-01_space-dwi_desc-eval_model-{m}_metrics.json")
                          .read_text())["precision"] for m in TRACKERS.values()}
    print("precision by tracker:", prec)
    assert prec["sdstream"] > 0.2 and prec["ifod2"] > 0.05 and prec["dipydet"] > 0.05


@pytest.mark.slow
def test_outputs_pass_the_validator_and_pybids(run):
    """``bids-validator-deno --datasetTypes derivative`` exits 0; pybids with the shipped config
    finds one whole-brain tractogram per tracker; MRtrix3's responses are derivatives and the
    sidecars point to them, not into the work directory; the mask says it is the phantom's truth."""
    validate_derivatives(run)
    assert whole_brain_tractograms(run) == {
        m: [f"sub-01_space-dwi_model-{m}_streamlines.trx"] for m in TRACKERS.values()}
    dwi = run / "sub-01" / "dwi"
    for model in ("sdstream", "ifod2"):
        side = json.loads((dwi / f"sub-01_space-dwi_model-{model}_streamlines.json").read_text())
        assert set(side["ResponseFiles"]) == {"wm", "gm", "csf"}
        for tissue, uri in side["ResponseFiles"].items():
            assert uri == f"bids::sub-01/dwi/sub-01_desc-{tissue}_model-{model}_response.txt"
            rows = [r for r in (run / uri[6:]).read_text().splitlines() if not r.startswith("#")]
            assert rows and all(float(v) == float(v) for v in rows[0].split())
        resp = json.loads((dwi / f"sub-01_desc-wm_model-{model}_response.json").read_text())
        assert resp["Software"].startswith("MRtrix3") and resp["Pipeline"] == "gentract"
    mask = json.loads((dwi / "sub-01_space-dwi_desc-brain_mask.json").read_text())
    assert "ground-truth" in mask["Description"]
    assert mask["Sources"] == [
        "bids:raw:derivatives/phantom-truth/sub-01/dwi/sub-01_space-dwi_desc-brain_mask.nii.gz"]
    assert mask["SpatialReference"] == "bids:raw:sub-01/dwi/sub-01_dwi.nii.gz"
    desc = json.loads((run / "dataset_description.json").read_text())
    assert desc["DatasetLinks"]["raw"] == desc["SourceDatasets"][0]["URL"]
