"""Participant report: ``OUTPUT_DIR/sub-<label>.html`` built from the committed derivatives.

Everything the report shows is read back from ``OUTPUT_DIR`` (sidecars, metrics JSON, bundle
tables, figures) and, for the acquisition summary, from the input DWI named in
``dataset_description.json``'s ``SourceDatasets``. Figures are referenced by relative path; the
HTML is otherwise self-contained (inline CSS, no scripts). The functions here collect plain values;
``data/templates/subject.html.j2`` lays them out (:mod:`.html`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..io.bids import SERIES_ENTITIES, output_prefix
from .bundles import MANY_BUNDLES, bundle_group, grouped, sort_key
from ..references import REFS, reference_text
from .html import fmt
from .model_fit import model_fit_cell, model_fit_warning

FOD_GLOB = "*_space-dwi_model-csd_param-fod_dwimap.json"
TRACKER_NAMES = {"gentract": "GenTract", "ifod2": "MRtrix3 iFOD2", "sdstream": "MRtrix3 SD_Stream",
                 "tckglobal": "MRtrix3 tckglobal", "dipydet": "dipy deterministic",
                 "dipyprob": "dipy probabilistic"}
MRTRIX_MODELS = ("ifod2", "sdstream", "tckglobal")

# the report's reference list: the methods text's table (gentract_bids/references.py)
REFERENCES = {key: reference_text(ref) for key, ref in REFS.items()}
REFERENCE_DOIS = {key: ref[4] for key, ref in REFS.items() if ref[4]}

# -- reading the derivatives -----------------------------------------------------------------
def filename_entities(name: str) -> dict:
    """BIDS ``key-value`` pairs of a file name (short keys as written: sub, ses, model, ...)."""
    stem = Path(name).name.split(".")[0]
    return dict(p.split("-", 1) for p in stem.split("_") if "-" in p)


def series_entities(name: str) -> dict:
    """The entities that identify a DWI series (:data:`~gentract_bids.io.bids.SERIES_ENTITIES`:
    subject, session, acquisition, reconstruction, direction, run, part, chunk)."""
    ents = filename_entities(name)
    return {long: ents[short] for long, short in SERIES_ENTITIES.items() if short in ents}


def series_prefix(entities: dict) -> str:
    return output_prefix(entities)


def find_series(output_dir, subject: str) -> list[dict]:
    """Every committed DWI series of ``subject``: ``{"entities", "prefix", "dir", "fod"}``."""
    output_dir = Path(output_dir)
    subject = str(subject).removeprefix("sub-")
    out = []
    for fod in sorted((output_dir / f"sub-{subject}").glob(f"**/dwi/{FOD_GLOB}")):
        ents = series_entities(fod.name)
        out.append({"entities": ents, "prefix": series_prefix(ents), "dir": fod.parent,
                    "fod": fod})
    return out


def find_models(series: dict) -> list[str]:
    """Model labels of the whole-brain tractograms of one series (sorted, GenTract first)."""
    models = set()
    for side in series["dir"].glob(f"{series['prefix']}_space-dwi_model-*_streamlines.json"):
        ents = filename_entities(side.name)
        if "bundle" not in ents and series_entities(side.name) == series["entities"]:
            models.add(ents["model"])
    return sorted(models, key=lambda m: (m != "gentract", m))


def find_registration(output_dir, series: dict) -> dict | None:
    """The series' registration to the model's template: ``{"meta", "xfm", "figure", "space"}``
    (None when the series was not registered)."""
    for side in sorted(series["dir"].glob(f"{series['prefix']}_from-dwi_to-*_mode-image_xfm.json")):
        if series_entities(side.name) != series["entities"]:
            continue
        space = filename_entities(side.name)["to"]
        from ..io.bids import build_path

        fig = Path(output_dir) / build_path({**series["entities"], "datatype": "figures",
                                             "space": space, "desc": "registration",
                                             "suffix": "dwi", "extension": ".png"})
        return {"meta": json.loads(side.read_text()), "xfm": side.with_suffix(".txt"),
                "figure": fig if fig.is_file() else None, "space": space}
    return None


def read_tsv(path) -> list[dict]:
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def tracker_files(series: dict, model: str) -> dict:
    """Paths of one tracker's derivatives (they may not all exist)."""
    d, p = series["dir"], series["prefix"]
    return {"sidecar": d / f"{p}_space-dwi_model-{model}_streamlines.json",
            "metrics": d / f"{p}_space-dwi_desc-eval_model-{model}_metrics.json",
            "bundlestats": d / f"{p}_space-dwi_model-{model}_bundlestats.tsv"}


def figure_path(output_dir, entities: dict, desc: str, model: str, suffix: str) -> Path:
    """Where a figure lives, named by ``io_spec.json``."""
    from ..io.bids import build_path

    return Path(output_dir) / build_path({**entities, "datatype": "figures", "desc": desc,
                                          "model": model, "suffix": suffix,
                                          "extension": ".png"})


def tracking_seconds(sidecar: dict) -> float | None:
    """Seconds spent producing the streamlines (sampling for GenTract, tracking for dipy,
    the whole command chain for MRtrix3)."""
    t = sidecar.get("Timings", {})
    for key in ("SamplingSeconds", "TrackingSeconds", "TotalSeconds"):
        if t.get(key):
            return float(t[key])
    return None


def streamlines_per_second(sidecar: dict, n_streamlines) -> float | None:
    if sidecar.get("StreamlinesPerSecond"):
        return float(sidecar["StreamlinesPerSecond"])
    seconds = tracking_seconds(sidecar)
    if seconds and n_streamlines not in (None, ""):
        return float(n_streamlines) / seconds
    return None


def fod_parameters(meta: dict) -> dict:
    """The CSD parameters of an fODF sidecar: BEP016 ``Model.Parameters`` (or the top-level
    ``Parameters`` of sidecars written before ``Model`` became an object)."""
    model = meta.get("Model")
    if isinstance(model, dict) and isinstance(model.get("Parameters"), dict):
        return model["Parameters"]
    return meta.get("Parameters", {})


def model_sha256(sidecar: dict) -> str | None:
    model = sidecar.get("Model")
    if isinstance(model, dict) and model.get("SHA256"):
        return model["SHA256"]
    return sidecar.get("ModelChecksum")


def tracker_summary(series: dict, model: str) -> dict:
    """One tracker's sidecar, metrics, bundle rows and derived numbers of one series."""
    files = tracker_files(series, model)
    sidecar = json.loads(files["sidecar"].read_text())
    metrics = (json.loads(files["metrics"].read_text()) if files["metrics"].exists() else {})
    bundles = read_tsv(files["bundlestats"]) if files["bundlestats"].exists() else []
    n = metrics.get("n_streamlines", sidecar.get("NStreamlines",
                                                 sidecar.get("NumberOfStreamlines")))
    return {"model": model, "sidecar": sidecar, "metrics": metrics, "bundles": bundles,
            "files": files, "n_streamlines": n,
            "streamlines_per_second": streamlines_per_second(sidecar, n)}


def source_dwi(output_dir, entities: dict) -> Path | None:
    """The input DWI of a series, found through ``SourceDatasets`` (``file://`` URLs)."""
    from urllib.parse import unquote, urlparse

    desc = Path(output_dir) / "dataset_description.json"
    if not desc.exists():
        return None
    for src in json.loads(desc.read_text()).get("SourceDatasets", []):
        url = str(src.get("URL", ""))
        if not url.startswith("file://"):
            continue
        root = Path(unquote(urlparse(url).path))  # file:///a%20b -> /a b
        for path in sorted(root.glob(f"sub-{entities['subject']}/**/dwi/*_dwi.nii*")):
            if series_entities(path.name) == entities:
                return path
    return None


def input_summary(output_dir, series: dict) -> dict:
    """Acquisition summary: from the input DWI and its .bval/.bvec when reachable, else from
    the fODF derivative's header and sidecar."""
    import nibabel as nb

    fod_meta = json.loads(series["fod"].read_text())
    params = fod_parameters(fod_meta)
    info = {"csd_method": params.get("method"), "sh_order": params.get("sh_order"),
            "shells_used": params.get("shells_used"),
            "shells": params.get("shells_available"), "csd_voxels": params.get("n_voxels")}
    dwi = source_dwi(output_dir, series["entities"])
    if dwi is not None:
        img = nb.load(dwi)
        info.update(source=str(dwi), shape=tuple(int(s) for s in img.shape),
                    voxel_mm=tuple(float(z) for z in img.header.get_zooms()[:3]),
                    orientation="".join(nb.aff2axcodes(img.affine)))
        bval = dwi.with_name(dwi.name.split(".")[0] + ".bval")
        if bval.exists():
            b = np.loadtxt(bval).ravel()
            shells = np.round(b / 100.0) * 100.0
            info["n_volumes"] = int(b.size)
            info["n_b0"] = int((shells == 0).sum())
            info["directions_per_shell"] = {int(s): int((shells == s).sum())
                                            for s in np.unique(shells) if s > 0}
    else:
        img = nb.load(series["fod"].with_name(series["fod"].name.replace(".json", ".nii.gz")))
        info.update(source=None, shape=tuple(int(s) for s in img.shape[:3]),
                    voxel_mm=tuple(float(z) for z in img.header.get_zooms()[:3]),
                    orientation="".join(nb.aff2axcodes(img.affine)))
    return info


def make_fod_figure(output_dir, series: dict) -> Path:
    """The fODF figure of a series (peak-direction colour map), written under ``figures/``."""
    import nibabel as nb

    from ..fodf.basis import to_internal
    from .figures import plot_fod_peaks

    meta = json.loads(series["fod"].read_text())
    enc = meta.get("OrientationEncoding", {})
    img = nb.load(series["fod"].with_name(series["fod"].name.replace(".json", ".nii.gz")))
    sh = to_internal(np.asarray(img.dataobj, dtype=np.float32), img.affine, enc)
    mask_path = series["dir"] / f"{series['prefix']}_space-dwi_desc-brain_mask.nii.gz"
    mask = np.asarray(nb.load(mask_path).dataobj) > 0 if mask_path.exists() else None
    path = figure_path(output_dir, series["entities"], "fod", "csd", "dwi")
    path.parent.mkdir(parents=True, exist_ok=True)
    return plot_fod_peaks(sh, img.affine, path,
                          mask=mask, sh_order=int(enc.get("SphericalHarmonicDegree", 6)),
                          title=f"{series['prefix']}: fODF (CSD) peak directions")


# -- report content: plain values for the templates (data/templates/subject.html.j2) ----------
def rel(output_dir, path) -> str:
    """A figure's path relative to the report (reports sit in ``output_dir``)."""
    return Path(path).relative_to(output_dir).as_posix()


def _registration_view(output_dir, reg: dict) -> dict:
    r = reg["meta"].get("Registration", {})
    rows = [("target", f"{reg['space']} template: {reg['meta'].get('Template', '')}"),
            ("method", r.get("Method")), ("brain-mask Dice", fmt(r.get("BrainMaskDice"))),
            ("rotation", f"{fmt(r.get('RotationDegrees'), 1)}°"),
            ("scales", ", ".join(fmt(v) for v in r.get("Scales", []))),
            ("translation (mm)", ", ".join(fmt(v, 1) for v in r.get("TranslationMm", []))),
            ("time", f"{fmt(r.get('Seconds'), 1)} s"), ("transform file", reg["xfm"].name)]
    return {"rows": rows,
            "figure": rel(output_dir, reg["figure"]) if reg["figure"] is not None else None}


def _input_rows(info: dict) -> list:
    shells = info.get("directions_per_shell")
    return [("input DWI", info["source"] if info.get("source") else
             "not reachable (summary from the fODF derivative)"),
            ("image shape", " × ".join(map(str, info["shape"]))),
            ("voxel size (mm)", " × ".join(f"{z:.2f}" for z in info["voxel_mm"])),
            ("orientation", info.get("orientation")),
            ("volumes", fmt(info.get("n_volumes"))),
            ("b = 0 volumes", fmt(info.get("n_b0"))),
            ("directions per shell", ", ".join(f"b={b}: {n}" for b, n in shells.items())
             if shells else None),
            ("shells (s/mm²)", ", ".join(f"{s:g}" for s in info["shells"] or [])
             if info.get("shells") else None),
            ("CSD", f"{info.get('csd_method')}, L_max {info.get('sh_order')}, shell(s) "
                    + ", ".join(f"{s:g}" for s in info.get("shells_used") or [])),
            ("voxels fitted", fmt(info.get("csd_voxels")))]


METRIC_ROWS = (("n_streamlines", "streamlines"), ("precision", "precision (valid streamlines)"),
               ("mean_f1", "mean F1"), ("mean_overlap", "mean overlap"),
               ("mean_overreach", "mean overreach"), ("n_vs", "valid streamlines (VS)"),
               ("n_is", "invalid streamlines (IS)"), ("n_ic", "invalid connections (IC)"),
               ("n_nc", "no connection (NC)"), ("ib", "invalid bundles (IB)"),
               ("density_dice", "density Dice"))
SANITY_ROWS = (("fraction_points_in_wm", "points in WM"), ("wm_coverage", "WM coverage"),
               ("fraction_endpoints_in_gm", "endpoints in GM"),
               ("fraction_out_of_brain", "streamlines leaving the brain"),
               ("fraction_loop", "looping streamlines"), ("n_flagged", "flagged streamlines"))


def references(keys) -> list[dict]:
    """``[{"text", "doi"}, ...]`` of the cited reference keys, in citation order."""
    return [{"text": REFERENCES[k], "doi": REFERENCE_DOIS.get(k)} for k in keys]


def shipped_model_name(sidecar: dict) -> str | None:
    """The shipped checkpoint (``gentract_phantom``, ...) a GenTract sidecar's SHA256 names."""
    from ..model.inference import SHIPPED_MODELS_DIR

    sha = model_sha256(sidecar)
    for meta in sorted(SHIPPED_MODELS_DIR.glob("*.json")):
        if sha and json.loads(meta.read_text()).get("sha256") == sha:
            return meta.stem
    return None


def _gentract_rows(side: dict) -> tuple[list, str | None]:
    """Sampling rows (drawn, kept, support-filter acceptance) and the shipped model's name
    (the report then says it was trained on phantoms only; None for a user's checkpoint)."""
    rows = []
    if side.get("NumberSampled") is not None:
        rows.append(("streamlines drawn / kept", f"{side['NumberSampled']} / "
                     f"{side.get('NumberOfStreamlines')}"))
    accept = (side.get("SupportFilter") or {}).get("AcceptanceRate")
    if accept is not None:
        rows.append(("support filter acceptance", fmt(accept)))
    return rows, shipped_model_name(side)


def _tracker_view(output_dir, series: dict, t: dict) -> dict:
    m, side, met = t["model"], t["sidecar"], t["metrics"]
    fig = figure_path(output_dir, series["entities"], "directions", m, "streamlines")
    rows = [(label, fmt(met.get(k))) for k, label in METRIC_ROWS if met.get(k) is not None]
    if met.get("valid_bundles") is not None and met.get("n_bundles"):
        rows.insert(2, ("bundles found / total", f"{met['valid_bundles']} / {met['n_bundles']}"))
    sps = t["streamlines_per_second"]
    rows.append(("streamlines per second", fmt(sps, 1) if sps else None))
    sanity = met.get("sanity") or {}
    length = sanity.get("length_mm") or {}
    if length:
        rows.append(("length mean / median (mm)",
                     f"{fmt(length.get('mean'), 1)} / {fmt(length.get('median'), 1)}"))
    rows += [(label, fmt(sanity.get(k))) for k, label in SANITY_ROWS if k in sanity]
    shipped = None
    if m == "gentract":
        extra, shipped = _gentract_rows(side)
        rows += extra
    figures = []
    for desc_, suffix, what in (("f1", "bundlestats", "Per-bundle F1"),
                                ("bundles", "bundles", "Valid streamlines by bundle")):
        f = figure_path(output_dir, series["entities"], desc_, m, suffix)
        if f.exists():
            figures.append((what, rel(output_dir, f)))
    timings = dict(side.get("Timings", {}))
    timings.update(side.get("Evaluation", {}).get("Timings") or {})
    return {"model": m, "anchor": f"{series['prefix']}-{m}", "name": TRACKER_NAMES.get(m, m),
            "description": side.get("Description") or side.get("Algorithm"),
            "directions_figure": rel(output_dir, fig) if fig.exists() else None,
            "mode": met.get("mode", "none"), "metric_rows": rows, "shipped_model": shipped,
            "model_fit": model_fit_warning(side),
            "bundles": bundle_table(t["bundles"], m) if t["bundles"] else None,
            "figures": figures, "timings": [(k, fmt(v, 2)) for k, v in timings.items()]}


def _found(row: dict) -> bool:
    return str(row.get("found", "true")).lower() == "true"


def bundle_table(rows: list[dict], model: str) -> dict:
    """The per-bundle table; with many bundles, a per-family summary first and the full table
    sorted by family (left/right pairs together), folded (``macros.html.j2``: ``bundles``)."""
    cols = [c for c in rows[0] if c != "bundle"]
    many = len(rows) > MANY_BUNDLES
    if many:
        rows = sorted(rows, key=lambda r: sort_key(r["bundle"]))
    out = {"many": many, "cls": f"bundles model-{model}",
           "header": (["family"] if many else []) + ["bundle", *cols],
           "rows": [([bundle_group(r["bundle"])] if many else []) + [r["bundle"]]
                    + [fmt(r[c]) for c in cols] for r in rows],
           "attrs": [{"data-bundle": r["bundle"], "class": None if _found(r) else "notfound"}
                     for r in rows]}
    if many:
        by_name = {r["bundle"]: r for r in rows}
        out["summary"] = []
        for family, names in grouped(by_name):
            f1 = [float(by_name[n]["f1"]) for n in names
                  if by_name[n].get("f1") not in (None, "")]
            out["summary"].append([family,
                                   f"{sum(_found(by_name[n]) for n in names)} / {len(names)}",
                                   fmt(float(np.mean(f1)) if f1 else None)])
        out["missing"] = [n for n, r in by_name.items() if not _found(r)]
    return out


def _bundles_html(rows: list[dict], model: str) -> str:
    """The bundle table's HTML on its own (the template's ``bundles`` macro)."""
    from .html import macro

    return str(macro("bundles")(bundle_table(rows, model)))


def _provenance_rows(fod_meta: dict, trackers: list[dict]) -> list:
    rows = [("software", f"{fod_meta.get('Software', 'gentract')} {fod_meta.get('Version', '')}"),
            ("container", fod_meta.get("Container") or "none"),
            ("device", str(fod_meta.get("Device"))),
            ("random seed", str(fod_meta.get("RandomSeed")))]
    for t in trackers:
        s, m = t["sidecar"], t["model"]
        bits = [f"seed {s.get('RandomSeed')}", f"device {s.get('Device')}"]
        if s.get("Software") and s["Software"] != "gentract":
            bits.insert(0, s["Software"])
        if model_sha256(s):
            name = s["Model"].get("Name") if isinstance(s.get("Model"), dict) else None
            bits.append(f"model {name or ''} sha256 {model_sha256(s)}".replace("  ", " "))
        for key, label in (("Sampler", "sampler"), ("Steps", "steps"),
                           ("Precision", "precision"), ("BatchSize", "batch size")):
            if s.get(key) is not None:
                bits.append(f"{label} {s[key]}")
        if s.get("Deterministic") is not None:
            bits.append("deterministic" if s["Deterministic"] else "not bit-reproducible")
        rows.append((f"model-{m}", "; ".join(bits)))
        if s.get("Commands"):
            cmds = [c if isinstance(c, str) else " ".join(map(str, c)) for c in s["Commands"]]
            rows.append((f"model-{m} commands", {"pre": "\n".join(cmds)}))
    return rows


def _ran_sift(series_list: list[dict], model: str) -> bool:
    """Whether a tracker's command lines include MRtrix3's ``tcksift``."""
    return any("tcksift" in str(t["sidecar"].get("Commands", "")) for s in series_list
               for t in s["trackers"] if t["model"] == model)


def methods_paragraph(series_list: list[dict]) -> tuple[str, list[str]]:
    """Boiler-plate methods text (plain, unescaped) for what ran, and the reference keys it
    cites (in order)."""
    cites: list[str] = []

    def cite(*keys):
        for k in keys:
            if k not in cites:
                cites.append(k)
        return "[" + ", ".join(str(cites.index(k) + 1) for k in keys) + "]"

    first = series_list[0]
    fod = first["fod_meta"]
    p = fod_parameters(fod)
    shells = ", ".join(f"{s:g}" for s in p.get("shells_used") or [])
    text = [f"Results included in this report were generated by gentract "
            f"{fod.get('Version', '')}, a BIDS-App built on nipype {cite('nipype')} and "
            f"pybids {cite('pybids')}. Fibre orientation distributions were estimated per voxel "
            f"with {'single-shell' if p.get('method') == 'ssst' else 'multi-shell multi-tissue'}"
            f" constrained spherical deconvolution {cite('csd')} as implemented in dipy "
            f"{cite('dipy')} (spherical-harmonic order {p.get('sh_order')}, "
            f"b = {shells} s/mm², response from high-FA voxels of the brain mask)."]
    models = sorted({t["model"] for s in series_list for t in s["trackers"]})
    for m in models:
        if m == "gentract":
            text.append(f"Whole-brain tractograms were sampled with GenTract {cite('gentract')},"
                        " a generative model that produces complete streamlines conditioned on "
                        "the subject's fODF.")
            f = next((t["sidecar"]["SupportFilter"] for s in series_list for t in s["trackers"]
                      if t["model"] == m and t["sidecar"].get("SupportFilter")), None)
            if f:
                text.append("Sampled streamlines were kept only where the subject's fODF "
                            "supports them (fODF amplitude along the streamline at least "
                            f"{f['Threshold']} times its 99th-percentile peak; unsupported "
                            "ends trimmed, ends extended along the fODF, streamlines with an "
                            "unsupported gap rejected; a gentract addition, not part of the "
                            "published method).")
        elif m in MRTRIX_MODELS:
            text.append(f"Baseline tractograms were computed with MRtrix3 {cite('mrtrix')} "
                        f"({TRACKER_NAMES[m]}"
                        + (f" {cite('sdstream')}" if m == "sdstream" else "")
                        + (f", filtered with SIFT {cite('sift')}" if _ran_sift(series_list, m)
                           else "") + ").")
        elif m.startswith("dipy"):
            text.append(f"Baseline tractograms were computed with dipy's local tracking "
                        f"{cite('dipy')} ({TRACKER_NAMES.get(m, m)}, CMC stopping).")
    modes = {t["metrics"].get("mode") for s in series_list for t in s["trackers"]}
    if "groundtruth" in modes:
        text.append("Tractograms were scored against the known ground truth with "
                    f"Tractometer-style metrics {cite('tractometer', 'tractometer2')} (valid and "
                    "invalid streamlines and bundles, per-bundle overlap, overreach and F1).")
    if "atlas" in modes:
        text.append(f"Bundles were recognised with atlas-based methods {cite('recobundles')}.")
    if "sanity" in modes:
        text.append("Tractograms without a reference were described by sanity metrics only "
                    "(lengths, loops, tissue fractions, coverage).")
    return " ".join(text), cites


def write_subject_report(output_dir, subject, *, config: dict | None = None,
                         command: str | None = None) -> Path:
    """Write ``OUTPUT_DIR/sub-<label>.html`` for one participant from its committed derivatives
    (and the fODF figure ``sub-<label>/figures/..._desc-fod_model-csd_dwi.png``).

    ``config`` (the run's configuration as a dict) and ``command`` (its command line) are shown
    in the provenance section when given. Raises :class:`~gentract_bids.errors.NoInputError`
    when the subject has no fODF derivative in ``output_dir``."""
    import tomli_w

    from ..errors import NoInputError
    from .html import render, write_html

    output_dir = Path(output_dir)
    subject = str(subject).removeprefix("sub-")
    series_list = find_series(output_dir, subject)
    if not series_list:
        raise NoInputError(f"no participant-level outputs for sub-{subject} in {output_dir} "
                           f"(expected sub-{subject}/[ses-*/]dwi/{FOD_GLOB})")
    views, summary = [], []
    for s in series_list:
        s["fod_meta"] = json.loads(s["fod"].read_text())
        s["trackers"] = [tracker_summary(s, m) for m in find_models(s)]
        reg = find_registration(output_dir, s)
        csd = s["fod_meta"].get("Timings", {}).get("CSDSeconds")
        views.append({"prefix": s["prefix"],
                      "input_rows": _input_rows(input_summary(output_dir, s)),
                      "fod_figure": rel(output_dir, make_fod_figure(output_dir, s)),
                      "csd_seconds": fmt(csd, 1) if csd else None,
                      "registration": _registration_view(output_dir, reg) if reg else None,
                      "trackers": [_tracker_view(output_dir, s, t) for t in s["trackers"]],
                      "provenance": _provenance_rows(s["fod_meta"], s["trackers"])})
        for t in s["trackers"]:  # summary: one row per series x tracker
            met = t["metrics"]
            found = (f"{met['valid_bundles']} / {met['n_bundles']}"
                     if met.get("n_bundles") else "–")
            summary.append([s["prefix"], {"href": f"#tracker-{s['prefix']}-{t['model']}",
                                          "text": t["model"]},
                            met.get("mode", "none"), fmt(t["n_streamlines"]),
                            fmt(met.get("precision")), found, fmt(met.get("mean_f1")),
                            fmt(t["streamlines_per_second"], 1), model_fit_cell(t["sidecar"])])
    text, cites = methods_paragraph(series_list)
    html = render(
        "subject.html.j2", title=f"gentract: sub-{subject}", subject=subject, series=views,
        nav=[("summary", "Summary"), ("inputs", "Inputs"), ("fodf", "fODF"),
             ("registration", "Registration"), ("tractography", "Tractography"),
             ("provenance", "Provenance"), ("methods", "Methods")],
        models=sorted({t["model"] for s in series_list for t in s["trackers"]}),
        summary_rows=summary, command=command,
        config_toml=tomli_w.dumps(config) if config else None,
        methods=text, references=references(cites))
    return write_html(output_dir / f"sub-{subject}.html", html)
