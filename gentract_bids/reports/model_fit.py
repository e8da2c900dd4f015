"""The subject report's warning when the model does not fit the subject: the sidecar's
``ModelFit`` (:func:`gentract_bids.model.inference.model_fit`), drawn by the ``model_fit`` macro
of ``data/templates/macros.html.j2``."""

from __future__ import annotations


def model_fit_warning(sidecar: dict) -> dict | None:
    """``sidecar['ModelFit']`` when it says the model does not fit, else None."""
    fit = (sidecar or {}).get("ModelFit") or {}
    return fit if fit.get("Verdict") == "does not fit" else None


def model_fit_cell(sidecar: dict) -> str:
    """The Summary table's "model fit" cell: the verdict and the acceptance as a fraction of the
    model's expected one (``fits (0.95 of expected)``), ``unknown``, or ``–`` without a
    ``ModelFit`` (no support filter, or a baseline tracker)."""
    fit = (sidecar or {}).get("ModelFit") or {}
    verdict = fit.get("Verdict")
    if not verdict:
        return "–"
    ratio = fit.get("Ratio")
    if ratio is None or verdict == "unknown":
        return verdict
    return f"{verdict} ({ratio:.2f} of expected)"


def model_fit_box(sidecar: dict) -> str:
    """The warning box's HTML (escaped) when the model does not fit, else ''."""
    from .html import macro

    fit = model_fit_warning(sidecar)
    return "" if fit is None else str(macro("model_fit")(fit))
