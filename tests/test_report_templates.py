"""Report HTML from the Jinja2 templates (issue 18 point 7): shipped as package data, one base
page for the subject, group and training reports, values escaped by the environment."""

from importlib import resources

from gentract_bids.reports.html import macro, render
from gentract_bids.reports.training import plot_losses, write_training_report


def test_templates_are_package_data_sharing_one_base():
    folder = resources.files("gentract_bids.data").joinpath("templates")
    names = {p.name for p in folder.iterdir()}
    assert {"base.html.j2", "subject.html.j2", "group.html.j2", "training.html.j2"} <= names
    for page in ("subject", "group", "training"):
        assert '{% extends "base.html.j2" %}' in folder.joinpath(f"{page}.html.j2").read_text()


def test_values_are_escaped():
    html = str(macro("kv_table")([("a<b", "<script>x</script>"), ("skipped", None),
                                  ("cmd", {"pre": "tckgen <in> & more"}),
                                  ("link", {"href": "x.html?a=1&b=2", "text": "<x>"})]))
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert "<th>a&lt;b</th>" in html and "skipped" not in html
    assert "<pre>tckgen &lt;in&gt; &amp; more</pre>" in html
    assert '<a href="x.html?a=1&amp;b=2">&lt;x&gt;</a>' in html
    rows = str(macro("grid_table")(["h", "n"], [["x", "1"], ["y", "–"]], cls="t",
                                   attrs=[{"data-bundle": "A&B", "class": None},
                                          {"data-bundle": "C", "class": "notfound"}]))
    assert '<th>h</th><th class="num">n</th>' in rows  # numbers right, text left
    assert '<tr data-bundle="A&amp;B"><td>x</td><td class="num">1</td></tr>' in rows
    assert '<tr data-bundle="C" class="notfound"><td>y</td><td class="num">–</td></tr>' in rows


def test_training_report(tmp_path):
    (tmp_path / "losses_vae.csv").write_text(
        "step,coefficient,l1\n" + "".join(f"{s},{c},{1 / (s + 1)}\n" for s in range(30)
                                         for c in range(3)))
    (tmp_path / "losses_generator.csv").write_text(
        "step,loss,val_loss\n" + "".join(f"{s},{2 / (s + 1)},{'' if s % 10 else 1.5}\n"
                                         for s in range(30)))
    plot_losses(tmp_path)
    summary = {"checkpoint": str(tmp_path / "checkpoint" / "gentract.safetensors"),
               "timings": {"vae_seconds": 12.34, "total_seconds": 56.0},
               "final_val_loss": 0.123456, "note": "a <b> c",
               "vae": [{"coefficient": 0, "final_l1": 0.5}, {"coefficient": 1, "final_l1": 0.25}]}
    path = write_training_report(tmp_path, summary)
    html = path.read_text(encoding="utf-8")
    assert path == tmp_path / "report.html"
    assert '<img src="losses.png"' in html and (tmp_path / "losses.png").is_file()
    assert "<th>final_val_loss</th><td>0.1235</td>" in html
    assert "<th>total_seconds</th><td>56.0</td>" in html
    assert "gentract.safetensors" in html and "final_l1" not in html
    assert "<th>VAE final L1, mean / max over 2 coefficients</th><td>0.3750 / 0.5000</td>" in html
    assert "a &lt;b&gt; c" in html
    assert html == render("training.html.j2", title=f"gentract-train: {tmp_path.name}",
                          run_name=tmp_path.name, summary_rows=[
                              ("checkpoint", summary["checkpoint"]),
                              ("final_val_loss", "0.1235"), ("note", "a <b> c"),
                              ("VAE final L1, mean / max over 2 coefficients", "0.3750 / 0.5000")],
                          timing_rows=[("vae_seconds", "12.3"), ("total_seconds", "56.0")],
                          losses="losses.png")


def test_group_report_of_fodf_only_runs(tmp_path):
    from gentract_bids.reports.group import write_group_report

    (tmp_path / "sub-01.html").write_text("x")
    rows = [{"file": f"sub-{s}/dwi/sub-{s}_space-dwi_model-csd_param-fod_dwimap.nii.gz",
             "csd_method": "ssst", "version": "<0.1>"} for s in ("01", "02")]
    html = write_group_report(tmp_path, rows, [], []).read_text(encoding="utf-8")
    assert "2 participant(s): <a href=\"sub-01.html\">sub-01</a>, sub-02; 2 DWI series" in html
    assert "No tractography results" in html and 'class="subjects"' not in html
    assert '<table class="fodf">' in html and "&lt;0.1&gt;" in html
    assert 'id="tables"' not in html and 'id="figures"' not in html
