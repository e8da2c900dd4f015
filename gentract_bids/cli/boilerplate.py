"""``logs/CITATION.{md,html,bib}``: the methods a run actually used, with their references."""

from __future__ import annotations

import html
from pathlib import Path

from .. import __version__
from ..references import REFS, reference_text

TRACKER_TEXT = {
    "gentract": ("GenTract, a generative model of whole streamlines conditioned on the fODF",
                 ["gentract"]),
    "ifod2": ("MRtrix3's probabilistic iFOD2 tracker, filtered with SIFT", ["mrtrix", "sift"]),
    "sdstream": ("MRtrix3's deterministic SD_Stream tracker, filtered with SIFT",
                 ["sdstream", "mrtrix", "sift"]),
    "tckglobal": ("MRtrix3's global tractography (tckglobal)", ["mrtrix"]),
    "dipy-det": ("dipy's deterministic local tracking", ["dipy"]),
    "dipy-prob": ("dipy's probabilistic local tracking", ["dipy"]),
}


def methods(config) -> tuple[str, list[str]]:
    """The methods paragraph (Markdown, ``[n]`` citations) and the cited keys in order."""
    wf = config.workflow
    keys: list[str] = []

    def cite(*names):
        for name in names:
            if name not in keys:
                keys.append(name)
        return ", ".join(f"[{keys.index(n) + 1}]" for n in names)

    csd = "multi-shell multi-tissue CSD" if wf.csd_method == "msmt" else "constrained " \
        "spherical deconvolution (CSD)"
    text = (f"Diffusion data were processed with gentract {__version__}, a BIDS-App built on "
            f"Nipype {cite('nipype')} and PyBIDS {cite('pybids')}. Fibre orientation "
            f"distributions (spherical harmonics up to order {wf.sh_order}) were estimated with "
            f"{csd} {cite('msmt' if wf.csd_method == 'msmt' else 'csd')} in dipy "
            f"{cite('dipy')}.")
    for tracker in wf.trackers:
        what, refs = TRACKER_TEXT[tracker]
        text += (f" Whole-brain tractograms of {wf.n_streamlines} streamlines were made with "
                 f"{what} {cite(*refs)}.")
    if not wf.trackers:
        text += " No tractography was run (fODF stage only)."
    return text, keys


def write_citation(config, out_dir: Path) -> list[Path]:
    """CITATION.md, CITATION.html and CITATION.bib in ``out_dir`` (OUTPUT_DIR/logs)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text, keys = methods(config)
    refs = [REFS[k] for k in keys]

    def line(ref):
        return reference_text(ref) + (f" doi:{ref[4]}" if ref[4] else "")

    md = "# Methods\n\n" + text + "\n\n## References\n\n" + "".join(
        f"{n}. {line(r)}\n" for n, r in enumerate(refs, 1))
    items = "".join(
        f"<li>{html.escape(line(r))}</li>\n" if not r[4] else
        f"<li>{html.escape(line(r)[:-len(r[4]) - 4])} <a href=\"https://doi.org/{r[4]}\">"
        f"doi:{r[4]}</a></li>\n" for r in refs)
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>gentract methods"
            f"</title></head><body>\n<h1>Methods</h1>\n<p>{html.escape(text)}</p>\n"
            f"<h2>References</h2>\n<ol>\n{items}</ol>\n</body></html>\n")
    bib = "".join(
        f"@article{{{key},\n  author = {{{r[0]}}},\n  title = {{{r[1]}}},\n"
        f"  journal = {{{r[2]}}},\n  year = {{{r[3]}}}" + (f",\n  doi = {{{r[4]}}}" if r[4]
                                                            else "") + "\n}\n\n"
        for key, r in zip(keys, refs))
    from ..io.commit import write_atomic

    paths = []  # concurrent runs of other participants write them too: whole files only
    for name, content in (("CITATION.md", md), ("CITATION.html", page), ("CITATION.bib", bib)):
        paths.append(write_atomic(out_dir / name, content))
    return paths
