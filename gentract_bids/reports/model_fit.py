"""The subject report's warning box when the model does not fit the subject: the sidecar's
``ModelFit`` (:func:`gentract_bids.model.inference.model_fit`) as a small piece of HTML."""

from __future__ import annotations

from html import escape

BOX_STYLE = ("border:2px solid #c00;background:#fff0f0;padding:.6em 1em;margin:.8em 0;"
             "border-radius:4px")


def model_fit_box(sidecar: dict) -> str:
    """A visible warning box when ``sidecar['ModelFit']`` says the model does not fit, else ''."""
    fit = (sidecar or {}).get("ModelFit") or {}
    if fit.get("Verdict") != "does not fit":
        return ""
    return (f'<div class="warning model-fit" style="{BOX_STYLE}"><strong>Warning: the model '
            f"does not fit this subject.</strong> {escape(str(fit.get('Message', '')))} "
            f"(acceptance {fit.get('Acceptance')}, expected {fit.get('ExpectedAcceptance')})."
            "</div>")
