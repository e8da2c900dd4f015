"""Derivative naming as BIDS tools read it: the shipped pybids config, the ``.bidsignore`` and
``DatasetLinks`` of the output, the mask's sources, the response files' URIs. (The validator runs
on real output folders in test_workflow_phantom.py and test_workflow_trackers.py.)"""

import json

import numpy as np
from bids import BIDSLayout
from bids.layout import Query, parse_file_entities

from helpers import validate_derivatives
from gentract_bids.interfaces.bids import stage_responses
from gentract_bids.io.bids import (
    build_path,
    io_spec,
    mask_metadata,
    pybids_config,
    write_dataset_description,
)

SERIES = {"subject": "01", "session": "1", "run": 2}


def _names():
    """One file of each kind GenTract writes, named by io_spec.json."""
    dwi = {**SERIES, "space": "dwi"}
    return {
        "whole": build_path({**dwi, "model": "sdstream", "suffix": "streamlines",
                             "extension": ".trx"}),
        "bundle": build_path({**dwi, "bundle": "CSTL", "model": "sdstream",
                              "suffix": "streamlines", "extension": ".trx"}),
        "fod": build_path({**dwi, "model": "csd", "param": "fod", "suffix": "dwimap",
                           "extension": ".nii.gz"}),
        "mask": build_path({**dwi, "desc": "brain", "suffix": "mask", "extension": ".nii.gz"}),
    }


def test_io_spec_takes_gentract_entities_from_the_pybids_config():
    names = [e["name"] for e in io_spec()["entities"]]
    shipped = json.loads(open(pybids_config()).read())["entities"]
    assert {e["name"] for e in shipped} == {"bundle", "param"}
    assert all(names.count(e["name"]) == 1 and e in io_spec()["entities"] for e in shipped)
    assert names[-3:] == ["suffix", "datatype", "extension"]


def test_pybids_parses_bundle_param_and_model(tmp_path):
    names = _names()
    for rel in names.values():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    write_dataset_description(tmp_path, source=tmp_path.parent)
    layout = BIDSLayout(str(tmp_path), config=["bids", "derivatives", pybids_config()],
                        validate=False)
    whole = layout.get(suffix="streamlines", bundle=Query.NONE, extension=".trx")
    assert [f.filename for f in whole] == [names["whole"].split("/")[-1]]
    bundle = layout.get(bundle="CSTL")[0].entities
    assert bundle["model"] == "sdstream" and bundle["run"] == 2 and bundle["session"] == "1"
    assert layout.get(param="fod", model="csd", return_type="filename")[0].endswith(names["fod"])
    # the same entities come back from each name, and build the same name again
    for rel in names.values():
        ents = parse_file_entities(str(tmp_path / rel), config=["bids", "derivatives",
                                                                 pybids_config()])
        assert build_path(ents) == rel


def test_dataset_description_links_the_input_and_writes_bidsignore(tmp_path):
    source = tmp_path / "my bids"
    source.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    write_dataset_description(out, source=source)
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetLinks"] == {"raw": source.as_uri()}
    assert desc["SourceDatasets"] == [{"URL": source.as_uri()}]
    ignored = (out / ".bidsignore").read_text().split()
    assert ignored == io_spec()["bidsignore"] and "figures" in ignored and "*.html" in ignored


def _dataset(root, generated_by):
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "x", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": generated_by}]}))
    return root


def test_mask_sidecar_says_where_the_mask_came_from(tmp_path):
    bids = tmp_path / "bids"
    dwi = bids / "sub-01" / "dwi" / "sub-01_dwi.nii.gz"
    truth = _dataset(bids / "derivatives" / "phantom-truth", "gentract-phantom")
    other = _dataset(bids / "derivatives" / "masks", "FSL bet")
    name = "sub-01/dwi/sub-01_space-dwi_desc-brain_mask.nii.gz"
    meta = mask_metadata(truth / name, dwi, bids)
    assert "phantom's ground-truth" in meta["Description"]
    assert meta["Sources"] == [f"bids:raw:derivatives/phantom-truth/{name}"]
    meta = mask_metadata(other / name, dwi, bids)
    assert "ground-truth" not in meta["Description"] and "FSL bet" in meta["Description"]
    meta = mask_metadata(None, dwi, bids)
    assert meta["Sources"] == ["bids:raw:sub-01/dwi/sub-01_dwi.nii.gz"]
    assert "median_otsu" in meta["Description"]


def test_response_files_are_staged_and_named_by_uri(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    files = {}
    for tissue in ("wm", "csf"):
        files[tissue] = work / f"response_{tissue}.txt"
        np.savetxt(files[tissue], np.ones((2, 3)))
    staged, uris = stage_responses(files, {**SERIES, "model": "ifod2"}, tmp_path / "stage",
                                   {"Software": "MRtrix3 3.0.4", "Pipeline": "gentract"})
    assert len(staged) == 4  # text file + sidecar per tissue
    for tissue, uri in uris.items():
        assert uri == f"bids::sub-01/ses-1/dwi/sub-01_ses-1_run-2_desc-{tissue}_model-ifod2" \
                      "_response.txt"
        assert (tmp_path / "stage" / uri[6:]).read_text() == files[tissue].read_text()
        side = json.loads((tmp_path / "stage" / uri[6:]).with_suffix(".json").read_text())
        assert side["Software"] == "MRtrix3 3.0.4" and tissue.upper() in side["Description"]


def test_validator_accepts_our_names_and_ignores_what_bids_lacks(tmp_path):
    """A small output folder (real NIfTI mask with SpatialReference, ignored GenTract files,
    figures, report) passes; without the .bidsignore it does not."""
    import nibabel as nb

    out = tmp_path / "out"
    out.mkdir()
    write_dataset_description(out, source=tmp_path)
    names = _names()
    for rel in names.values():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"x")
    img = nb.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.diag([3.0, 3, 3, 1]))
    img.header.set_xyzt_units("mm")
    img.to_filename(out / names["mask"])
    (out / names["mask"].replace(".nii.gz", ".json")).write_text(json.dumps(
        {"Type": "Brain", "SpatialReference": "bids:raw:sub-01/ses-1/dwi/sub-01_ses-1_run-2"
         "_dwi.nii.gz", "Description": "brain mask", "Sources": ["bids:raw:x.nii.gz"]}))
    (out / "sub-01" / "figures").mkdir()
    (out / "sub-01" / "figures" / "sub-01_desc-fod_model-csd_dwi.png").write_bytes(b"png")
    (out / "sub-01.html").write_text("<html></html>")
    (out / "group_bundlestats.tsv").write_text("subject\tmodel\n01\tsdstream\n")  # group level
    validate_derivatives(out)
    (out / ".bidsignore").unlink()
    try:
        validate_derivatives(out)
    except AssertionError as err:
        assert "NOT_INCLUDED" in str(err)
    else:
        raise AssertionError("the validator passed without the .bidsignore")
