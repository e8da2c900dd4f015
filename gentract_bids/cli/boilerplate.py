"""``logs/CITATION.{md,html,bib}``: the methods a run actually used, with their references."""

from __future__ import annotations

import html
from pathlib import Path

from .. import __version__

# key: (authors, title, venue, year, DOI or None)
REFS = {
    "gentract": ("Sargood A, et al.", "GenTract: Generative Global Tractography", "CVPR", 2026,
                 "10.48550/arXiv.2511.13183"),  # arXiv's DOI
    "csd": ("Tournier J-D, Calamante F, Connelly A.", "Robust determination of the fibre "
            "orientation distribution in diffusion MRI: non-negativity constrained super-resolved "
            "spherical deconvolution", "NeuroImage 35(4):1459-1472", 2007,
            "10.1016/j.neuroimage.2007.02.016"),
    "msmt": ("Jeurissen B, et al.", "Multi-tissue constrained spherical deconvolution for "
             "improved analysis of multi-shell diffusion MRI data", "NeuroImage 103:411-426",
             2014, "10.1016/j.neuroimage.2014.07.061"),
    "dipy": ("Garyfallidis E, et al.", "Dipy, a library for the analysis of diffusion MRI data",
             "Front. Neuroinform. 8:8", 2014, "10.3389/fninf.2014.00008"),
    "nipype": ("Gorgolewski K, et al.", "Nipype: a flexible, lightweight and extensible "
               "neuroimaging data processing framework in Python", "Front. Neuroinform. 5:13",
               2011, "10.3389/fninf.2011.00013"),
    "pybids": ("Yarkoni T, et al.", "PyBIDS: Python tools for BIDS datasets",
               "J. Open Source Softw. 4(40):1294", 2019, "10.21105/joss.01294"),
    "mrtrix": ("Tournier J-D, et al.", "MRtrix3: A fast, flexible and open software framework "
               "for medical image processing and visualisation", "NeuroImage 202:116137", 2019,
               "10.1016/j.neuroimage.2019.116137"),
    "sdstream": ("Tournier J-D, Calamante F, Connelly A.", "MRtrix: Diffusion tractography in "
                 "crossing fiber regions", "Int. J. Imaging Syst. Technol. 22(1):53-66", 2012,
                 "10.1002/ima.22005"),
    "sift": ("Smith RE, Tournier J-D, Calamante F, Connelly A.", "SIFT: Spherical-deconvolution "
             "informed filtering of tractograms", "NeuroImage 67:298-312", 2013,
             "10.1016/j.neuroimage.2012.11.049"),
}
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
        authors, title, venue, year, doi = ref
        return f"{authors} {title}. {venue}, {year}." + (f" doi:{doi}" if doi else "")

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
