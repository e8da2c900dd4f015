"""The references the methods text (``logs/CITATION.*``) and the HTML reports cite: one table."""

from __future__ import annotations

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
    "tractometer": ("Côté M-A, et al.", "Tractometer: towards validation of tractography "
                    "pipelines", "Med. Image Anal. 17(7):844-857", 2013,
                    "10.1016/j.media.2013.03.009"),
    "tractometer2": ("Renauld E, et al.", "Validate your white matter tractography algorithms "
                     "with a reappraised ISMRM 2015 Tractography Challenge scoring system",
                     "Sci. Rep. 13:2347", 2023, "10.1038/s41598-023-28560-w"),
    "recobundles": ("Garyfallidis E, et al.", "Recognition of white matter bundles using local "
                    "and global streamline-based registration and clustering",
                    "NeuroImage 170:283-295", 2018, "10.1016/j.neuroimage.2017.07.015"),
}


def reference_text(ref) -> str:
    """``Authors. Title. Venue, year.`` of one :data:`REFS` entry (without its DOI)."""
    authors, title, venue, year, _ = ref
    return f"{authors} {title}. {venue}, {year}."
