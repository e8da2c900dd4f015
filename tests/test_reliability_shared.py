"""A shared OUTPUT_DIR (issue 19): two participant runs writing into it at the same time both
finish, and what they share (``dataset_description.json``, ``logs/``) and what the group level
reads (reports, sidecars) is whole; the group level then sees both, and a kill -9 in the middle
of its writing leaves each of its files old or new, never truncated."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser

from test_reliability_resources import REPO, _finish, _gentract, tiny_cohort

from gentract_bids.io.commit import HIDDEN

DESCRIPTION = {"Name", "BIDSVersion", "DatasetType", "GeneratedBy", "SourceDatasets",
               "DatasetLinks"}


def _html_whole(path) -> str:
    """The page parses and every tag it opens (but void ones) is closed."""
    class Tags(HTMLParser):
        open: list = []

        def handle_starttag(self, tag, attrs):
            if tag not in ("meta", "img", "br", "hr", "link", "input", "col", "wbr"):
                self.open.append(tag)

        def handle_endtag(self, tag):
            assert self.open and self.open.pop() == tag, (path, tag)

    text = path.read_text()
    parser = Tags()
    parser.open = []
    parser.feed(text)
    parser.close()
    assert parser.open == [] and text.rstrip().endswith("</html>"), path
    return text


# the group level, the first file opened for writing whose name holds argv[1] getting half of
# its first write before the process SIGKILLs itself: a kill in the middle of writing, whatever
# the writer does (``open`` and ``Path.open`` both call ``io.open``)
KILLED_WHILE_WRITING = """
import builtins, io, os, signal, sys
real, name = io.open, sys.argv[1]
class Half:
    def __init__(self, fh):
        self.fh = fh
    def write(self, data):
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    def __getattr__(self, attr):
        return getattr(self.fh, attr)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.fh.close()
def opener(file, mode="r", *args, **kwargs):
    fh = real(file, mode, *args, **kwargs)
    return Half(fh) if set(mode) & set("wxa") and name in str(file) else fh
io.open = builtins.open = opener
from gentract_bids.cli.run import main
sys.exit(main(sys.argv[2:]))
"""


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
    assert set(desc) == DESCRIPTION
    for s in ("01", "02"):
        assert f"sub-{s}" in _html_whole(out / f"sub-{s}.html")
        sidecar = out / f"sub-{s}/dwi/sub-{s}_space-dwi_model-csd_param-fod_dwimap.json"
        assert json.loads(sidecar.read_text())["Model"]
    assert (out / "logs" / "CITATION.md").read_text().startswith("# Methods")
    assert not (out / HIDDEN).exists() and not list(out.rglob("*.partial"))
    assert not list(out.rglob(".*lock"))

    group = [str(bids), str(out), "group", "-w", str(tmp_path / "workg"),
             "--skip-bids-validation"]
    assert main(group) == 0, capsys.readouterr().err
    assert _subjects(out) == ["sub-01", "sub-02"]
    old = _html_whole(out / "group.html")

    # sub-02 gone, the group level again, killed halfway through writing group.html (its
    # group_fodf.tsv is new by then): the old report stays whole, the new table too
    shutil.rmtree(out / "sub-02")
    env = {**os.environ, "NIPYPE_NO_ET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", KILLED_WHILE_WRITING, "group.html", *group],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert _html_whole(out / "group.html") == old
    assert _subjects(out) == ["sub-01"]
    assert main(group) == 0, capsys.readouterr().err  # the next write: new, no temporary left
    assert "sub-02" not in _html_whole(out / "group.html") and "sub-02" in old
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".bidsignore"]


def _subjects(out) -> list[str]:
    with (out / "group_fodf.tsv").open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert rows and all(r["version"] for r in rows)  # every row whole
    return sorted(r["file"].split("/")[0] for r in rows)
