"""A shared OUTPUT_DIR (issue 19): two participant runs writing into it at the same time both
finish, and what they share (``dataset_description.json``, ``logs/``) and what the group level
reads (reports, sidecars) is whole; the group level then sees both."""

from __future__ import annotations

import csv
import json

from test_reliability_resources import _finish, _gentract, tiny_cohort

from gentract_bids.io.commit import HIDDEN


def test_two_participants_into_one_output_at_once(tmp_path, capsys):
    from gentract_bids.cli.run import main

    bids = tiny_cohort(tmp_path / "bids", n_subjects=2)
    out = tmp_path / "out"
    procs = {s: _gentract(bids, out, tmp_path / f"work{s}", extra=["--participant-label", s])
             for s in ("01", "02")}  # both started before either has done anything
    for s, proc in procs.items():
        text, code = _finish(proc)
        assert code == 0, text
        assert "Traceback" not in text and "gentract: error" not in text, text
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "gentract"
    for s in ("01", "02"):
        assert (out / f"sub-{s}.html").read_text().rstrip().endswith("</html>")
        sidecar = out / f"sub-{s}/dwi/sub-{s}_space-dwi_model-csd_param-fod_dwimap.json"
        assert json.loads(sidecar.read_text())["Model"]
    assert (out / "logs" / "CITATION.md").read_text().startswith("# Methods")
    assert not (out / HIDDEN).exists() and not list(out.rglob("*.partial"))

    code = main([str(bids), str(out), "group", "-w", str(tmp_path / "workg"),
                 "--skip-bids-validation"])
    assert code == 0, capsys.readouterr().err
    with (out / "group_fodf.tsv").open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert sorted(r["file"].split("/")[0] for r in rows) == ["sub-01", "sub-02"]
