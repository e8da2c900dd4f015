"""Report details of issue 18 point 7: the shipped model's training data is named, the support
filter's draws and acceptance are shown, long command lines wrap, references give their DOIs."""

import json

from gentract_bids.model.inference import SHIPPED_MODELS_DIR
from gentract_bids.reports.html import render
from gentract_bids.reports.subject import (
    REFERENCE_DOIS,
    REFERENCES,
    _gentract_rows,
    references,
    shipped_model_name,
)


def _sidecar(sha):
    return {"Model": {"Name": "phantom", "SHA256": sha}, "ModelChecksum": sha,
            "NumberSampled": 1024, "NumberOfStreamlines": 200,
            "SupportFilter": {"Threshold": 0.05, "AcceptanceRate": 0.4443}}


def test_shipped_model_is_said_to_be_phantom_trained():
    sha = json.loads((SHIPPED_MODELS_DIR / "gentract_phantom.json").read_text())["sha256"]
    assert shipped_model_name(_sidecar(sha)) == "gentract_phantom"
    rows, shipped = _gentract_rows(_sidecar(sha))
    assert dict(rows) == {"streamlines drawn / kept": "1024 / 200",
                          "support filter acceptance": "0.444"}
    assert shipped == "gentract_phantom"
    rows, shipped = _gentract_rows(_sidecar("0" * 64))  # a user's own checkpoint
    assert shipped is None and len(rows) == 2


def test_long_lines_wrap_and_references_have_dois():
    page = render("base.html.j2", title="t")
    assert "pre-wrap" in page and "overflow-wrap:anywhere" in page
    # every reference has a DOI (GenTract's is arXiv's), linked through doi.org
    assert set(REFERENCE_DOIS) == set(REFERENCES)
    assert all(doi.startswith("10.") for doi in REFERENCE_DOIS.values())
    html = render("references.html.j2", methods="m", references=references(REFERENCES))
    for doi in REFERENCE_DOIS.values():
        assert f'<a href="https://doi.org/{doi}">doi:{doi}</a>' in html


def test_methods_cite_sd_stream_and_sift_when_they_ran():
    from gentract_bids.reports.subject import methods_paragraph

    def series(commands):
        return [{"fod_meta": {"Version": "0.1.0", "Model": {"Parameters": {
                    "method": "ssst", "sh_order": 6, "shells_used": [3000]}}},
                 "trackers": [{"model": "sdstream", "sidecar": {"Commands": commands},
                               "metrics": {"mode": "sanity"}}]}]

    text, cites = methods_paragraph(series([["tckgen", "-algorithm", "SD_Stream"],
                                            ["tcksift", "in.tck", "out.tck"]]))
    assert cites == ["nipype", "pybids", "csd", "dipy", "mrtrix", "sdstream", "sift"]
    assert "(MRtrix3 SD_Stream [6], filtered with SIFT [7])" in text
    text, cites = methods_paragraph(series([["tckgen", "-algorithm", "SD_Stream"]]))
    assert "sift" not in cites and "SIFT" not in text
