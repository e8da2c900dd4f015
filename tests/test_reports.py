"""Participant reports (``sub-<label>.html``) and the group level (tables + ``group.html``) from
one small real run: a 2-subject 4 mm phantom, dipy deterministic tracking, 200 streamlines."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nb
import numpy as np
import pytest

from gentract_bids.cli.parser import parse_args
from gentract_bids.cli.run import main, write_reports
from gentract_bids.errors import EX_NOINPUT
from gentract_bids.phantom.cohort import make_cohort

SUBJECTS = ("01", "02")
MODEL = "dipydet"
SECTIONS = ("summary", "inputs", "fodf", "tractography", "provenance", "methods")


class _Page(HTMLParser):
    """Section ids, image sources and the rows of every table (cell texts) of a page."""

    def __init__(self):
        super().__init__()
        self.ids, self.images, self.tables = set(), [], {}
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "table":
            self._table = self.tables.setdefault(a.get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def parse(path) -> _Page:
    page = _Page()
    page.feed(Path(path).read_text(encoding="utf-8"))
    return page


def read_tsv(path) -> list[dict]:
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    bids = make_cohort(root / "bids", n_subjects=2, voxel_size=4.0, seed=3,
                       n_truth_streamlines=40, bvals=(0, 1000, 3000), n_dirs=30, n_b0=3)
    out, work = root / "out", root / "work"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([str(bids), str(out), "participant", "--model", "gentract_phantom", "-w", str(work),
                     "--skip-bids-validation", "--tracker", "dipy-det", "--n-streamlines", "200",
                     "--min-bundle-streamlines", "2", "--random-seed", "5"])
        assert code == 0
        assert main([str(bids), str(out), "group", "-w", str(work)]) == 0
    return {"bids": bids, "out": out, "stdout": stdout.getvalue(), "root": root}


def dwi_dir(out, sub):
    return out / f"sub-{sub}" / "dwi"


@pytest.mark.slow
def test_subject_reports_have_every_section(run):
    out = run["out"]
    for sub in SUBJECTS:
        report = out / f"sub-{sub}.html"
        assert f"gentract: report: {report}" in run["stdout"]
        page = parse(report)
        assert set(SECTIONS) <= page.ids
        assert f"tracker-sub-{sub}-{MODEL}" in page.ids
        text = report.read_text(encoding="utf-8")
        # nothing loaded from outside; the only outside links are the references' DOIs
        assert "<script" not in text and "http://" not in text
        assert text.count("https://") == text.count('<a href="https://doi.org/10.')
        # inputs: the real input DWI's shape and shells
        shape = nb.load(run["bids"] / f"sub-{sub}" / "dwi" / f"sub-{sub}_dwi.nii.gz").shape
        assert " × ".join(map(str, shape)) in text
        assert "b=1000: 30, b=3000: 30" in text
        # metrics summary: numbers of the metrics JSON
        metrics = json.loads((dwi_dir(out, sub) /
                              f"sub-{sub}_space-dwi_desc-eval_model-{MODEL}_metrics.json")
                             .read_text())
        rows = {r[0]: r[1] for r in page.tables["metrics"]}
        assert rows["streamlines"] == str(metrics["n_streamlines"])
        assert float(rows["precision (valid streamlines)"]) == pytest.approx(
            metrics["precision"], abs=5e-4)
        assert rows["bundles found / total"] == (f"{metrics['valid_bundles']} / "
                                                 f"{metrics['n_bundles']}")
        assert float(rows["mean F1"]) == pytest.approx(metrics["mean_f1"], abs=5e-4)
        assert float(rows["streamlines per second"]) > 0
        summary = page.tables["summary"]
        assert summary[0][-1] == "model fit" and summary[1][-1] == "–"  # a baseline: no verdict
        timings = {r[0] for r in page.tables["timings"]}
        assert {"TrackingSeconds", "EvaluationSeconds"} <= timings
        # provenance and the command line
        assert "gentract 0.1.0" in text
        assert "--tracker dipy-det --n-streamlines 200" in text
        assert "seed 5" in text
        # methods cite what ran (dipy CSD + tracking, Tractometer scoring), and only that
        for cited in ("Tournier J-D, Calamante F", "Garyfallidis E, et al. Dipy",
                      "Gorgolewski K", "Yarkoni T", "Côté M-A", "Renauld E"):
            assert cited in text, cited
        assert "Sargood" not in text and "MRtrix3: A fast" not in text


@pytest.mark.slow
def test_bundle_table_matches_bundlestats(run):
    out = run["out"]
    for sub in SUBJECTS:
        page = parse(out / f"sub-{sub}.html")
        table = page.tables[f"bundles model-{MODEL}"]
        header, body = table[0], table[1:]
        tsv = read_tsv(dwi_dir(out, sub) / f"sub-{sub}_space-dwi_model-{MODEL}_bundlestats.tsv")
        assert len(body) == len(tsv) == 22
        col = {c: header.index(c) for c in header}
        for cells, row in zip(body, tsv):
            assert cells[col["bundle"]] == row["bundle"]
            assert int(cells[col["n_streamlines"]]) == int(row["n_streamlines"])
            assert cells[col["found"]] == ("yes" if row["found"] == "true" else "no")
            for key in ("overlap", "overreach", "f1"):
                assert float(cells[col[key]]) == pytest.approx(float(row[key]), abs=5e-4)


@pytest.mark.slow
def test_every_figure_exists_and_is_not_blank(run):
    out = run["out"]
    pages = [out / f"sub-{s}.html" for s in SUBJECTS] + [out / "group.html"]
    seen = []
    for report in pages:
        for src in parse(report).images:
            path = out / src
            assert path.is_file(), src
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
            assert path.stat().st_size > 10_000, src
            pixels = mpimg.imread(path)[..., :3]
            assert pixels.std() > 0.05, f"{src} looks blank (std {pixels.std():.3f})"
            seen.append(Path(src).name)
    for sub in SUBJECTS:  # the fODF figure and the three tracker figures of each subject
        for name in (f"sub-{sub}_desc-fod_model-csd_dwi.png",
                     f"sub-{sub}_desc-directions_model-{MODEL}_streamlines.png",
                     f"sub-{sub}_desc-f1_model-{MODEL}_bundlestats.png",
                     f"sub-{sub}_desc-bundles_model-{MODEL}_bundles.png"):
            assert name in seen, name
    assert {"group_desc-trackers_bundlestats.png", "group_desc-f1_bundlestats.png"} <= set(seen)


@pytest.mark.slow
def test_fod_figure_shows_direction_colours(run):
    """The fODF figure is coloured: white-matter voxels are bright and saturated."""
    img = mpimg.imread(run["out"] / "sub-01" / "figures" / "sub-01_desc-fod_model-csd_dwi.png")
    rgb = img[..., :3]
    saturation = rgb.max(-1) - rgb.min(-1)
    assert (saturation > 0.5).mean() > 0.005


@pytest.mark.slow
def test_group_bundlestats_equals_subject_tables(run):
    out = run["out"]
    rows = read_tsv(out / "group_bundlestats.tsv")
    assert list(rows[0])[:4] == ["subject", "session", "model", "bundle"]
    expected = []
    for sub in SUBJECTS:
        for row in read_tsv(dwi_dir(out, sub) /
                            f"sub-{sub}_space-dwi_model-{MODEL}_bundlestats.tsv"):
            expected.append({"subject": sub, "session": "n/a", "model": MODEL, **row})
    assert len(rows) == len(expected) == 2 * 22
    assert rows == expected
    assert len(read_tsv(out / "group_fodf.tsv")) == 2


@pytest.mark.slow
def test_group_report_compares_subjects(run):
    out = run["out"]
    page = parse(out / "group.html")
    table = page.tables["subjects"]
    header, body = table[0], table[1:]
    assert len(body) == 2
    col = {c: header.index(c) for c in header}
    for cells in body:
        sub = cells[col["subject"]]
        assert cells[col["tracker"]] == MODEL
        metrics = json.loads((dwi_dir(out, sub) /
                              f"sub-{sub}_space-dwi_desc-eval_model-{MODEL}_metrics.json")
                             .read_text())
        assert float(cells[col["precision"]]) == pytest.approx(metrics["precision"], abs=5e-4)
        assert float(cells[col["mean F1"]]) == pytest.approx(metrics["mean_f1"], abs=5e-4)
        assert cells[col["bundles found"]] == f"{metrics['valid_bundles']} / 22"
        side = json.loads((dwi_dir(out, sub) / f"sub-{sub}_space-dwi_model-{MODEL}_streamlines"
                           ".json").read_text())
        sps = metrics["n_streamlines"] / side["Timings"]["TrackingSeconds"]
        assert float(cells[col["streamlines/s"]]) == pytest.approx(sps, abs=0.06)
    assert 'href="sub-01.html"' in (out / "group.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_group_without_participant_results_is_no_input(run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main([str(run["bids"]), str(empty), "group"])
    assert code == EX_NOINPUT
    assert "no participant-level outputs" in capsys.readouterr().err
    assert not (empty / "group.html").exists()
    # an incomplete participant output (a bundle table missing) is named
    partial = tmp_path / "partial"
    shutil.copytree(run["out"], partial)
    gone = dwi_dir(partial, "02") / f"sub-02_space-dwi_model-{MODEL}_bundlestats.tsv"
    gone.unlink()
    assert main([str(run["bids"]), str(partial), "group"]) == EX_NOINPUT
    assert gone.name in capsys.readouterr().err


@pytest.mark.slow
def test_report_failure_keeps_outputs(run, capsys):
    out = run["out"]
    before = sorted(p for p in out.rglob("*") if p.is_file())
    config = parse_args([str(run["bids"]), str(out), "participant", "--model", "gentract_phantom", "--tracker", "dipy-det",
                         "--skip-bids-validation"])
    assert write_reports(config, ["01", "99"]) is False
    captured = capsys.readouterr()
    assert "report of sub-99 could not be written" in captured.err
    assert f"gentract: report: {out / 'sub-01.html'}" in captured.out
    assert sorted(p for p in out.rglob("*") if p.is_file()) == before


def test_many_bundles_grouped_by_family(tmp_path):
    """72 TractSeg bundles: the table gets a per-family summary and a family-sorted full table,
    the F1 figure pairs left/right rows and stays narrow."""
    from PIL import Image

    from gentract_bids.phantom.atlas import load_atlas
    from gentract_bids.reports import figures, subject
    from gentract_bids.reports.bundles import bundle_group, grouped

    names = load_atlas().names
    fams = dict(grouped(names))
    assert list(fams) == ["commissural", "association", "limbic", "projection", "cerebellar"]
    assert sum(map(len, fams.values())) == 72 and fams["cerebellar"][2] == "MCP"
    assert bundle_group("CST_L") == bundle_group("CST_right") == "projection"
    rows = [{"bundle": n, "n_streamlines": 3, "found": str(n != "FX_left").lower(),
             "f1": 0.5 if n.startswith("CC") else 0.1} for n in names]
    html = subject._bundles_html(rows, "sdstream")
    assert html.index('class="families"') < html.index("<details>")
    # CA 0.1, 8 CC* 0.5; numbers right-aligned
    assert '<td>commissural</td><td class="num">9 / 9</td><td class="num">0.456</td>' in html
    assert "not found: FX_left" in html
    png = figures.plot_f1_bars({"bundles": [dict(r, found=r["found"] == "true") for r in rows],
                                "mean_f1": 0.2}, tmp_path / "f1.png")
    w, h = Image.open(png).size
    assert w < 1000 and h > w
