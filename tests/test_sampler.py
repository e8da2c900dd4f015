"""The sampler's fODF guidance and model-fit verdict (issue 16): the monomial SH basis, the
differentiable support score, guided flow integration, ModelFit and its report box."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from dipy.core.geometry import cart2sphere
from dipy.reconst.shm import real_sh_descoteaux

from test_support import AFFINE, _line, _tube_volume

from gentract_bids.model.flow import FlowMatchingObjective
from gentract_bids.model.gentract import CoordinateScaler
from gentract_bids.model.inference import (EXPECTED_ACCEPTANCE_FILE, MODEL_FIT_RATIO,
                                           model_fit)
from gentract_bids.model.support import (DEFAULT_GUIDANCE_SCALE, GUIDANCE_CAP, FodGuidance,
                                         FodSupport)
from gentract_bids.reports.model_fit import model_fit_box, model_fit_cell


@pytest.fixture(scope="module")
def tube():
    sup = FodSupport(*_tube_volume(), AFFINE)
    # bounds lo = -1, hi = 1 and data scale 1: model coordinates are millimetres
    return sup, lambda scale: FodGuidance(sup, CoordinateScaler([-1] * 3, [1] * 3), 1.0, scale)


def test_the_monomial_basis_is_dipys_sh_basis(tube):
    d = np.random.default_rng(0).normal(size=(500, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    _, theta, phi = cart2sphere(*d.T)
    want, _, _ = real_sh_descoteaux(6, theta, phi, legacy=False)
    np.testing.assert_allclose(tube[0].sh_basis(d), want, atol=1e-9)


def test_the_guidance_score_is_the_support_amplitude(tube):
    sup, guide = tube
    line = _line([-20, 1.2, 0.4], [20, 3.9, -1.0], 8)  # inside the tube, slightly oblique
    g = guide(1.0)
    score = g.score(torch.as_tensor(line[None], dtype=torch.float32))
    seg = np.diff(line, axis=0)
    pts = line[:-1, None] + ((np.arange(4) + 0.5) / 4)[None, :, None] * seg[:, None]
    dirs = np.repeat(seg / np.linalg.norm(seg, axis=1, keepdims=True), 4, axis=0)
    want = np.minimum(sup.amplitude(pts.reshape(-1, 3), dirs), GUIDANCE_CAP).sum()
    assert float(score[0]) == pytest.approx(want, rel=1e-4)
    assert want > 0.5 * GUIDANCE_CAP * len(dirs)  # well supported, so a meaningful check


def test_guidance_pulls_a_streamline_onto_the_fibres(tube):
    _, guide = tube
    beside = torch.as_tensor(_line([-20, 6.7, 0], [20, 6.7, 0])[None], dtype=torch.float32)
    grad = guide(1.0)(beside)
    assert (grad[0, :, 1] < 0).all()  # towards the tube (|y| <= 5)
    # guided rectified flow towards that line: it ends nearer the fibres, better supported
    target = beside[0]

    def velocity(x_t, t1000):  # the exact flow from noise to the target line
        t = (t1000 / 1000.0).view(-1, 1, 1)
        return (target - x_t) / (1 - t).clamp(min=1e-3)

    flow = FlowMatchingObjective()
    runs = {}
    for scale in (0.0, 3.0):
        gen = torch.Generator().manual_seed(0)
        runs[scale] = flow.sample(velocity, (16, 12, 3), steps=10, generator=gen,
                                  guidance=guide(scale) if scale else None)
    g = guide(1.0)
    assert g.score(runs[3.0]).mean() > 1.5 * g.score(runs[0.0]).mean()
    assert runs[3.0][..., 1].mean() < runs[0.0][..., 1].mean() - 0.2


def test_model_fit_says_plainly_when_the_model_does_not_fit():
    table = json.loads(EXPECTED_ACCEPTANCE_FILE.read_text())
    entry = table["gentract_phantom"]
    meta = {"sha256": entry["sha256"]}
    expected = entry["acceptance"]
    ok, bad = model_fit(meta, expected * 0.9), model_fit(meta, 0.0022)  # ISBI geometry: 0.22 %
    assert ok["Verdict"] == "fits" and ok["ExpectedAcceptance"] == expected
    assert bad["Verdict"] == "does not fit" and bad["Ratio"] < MODEL_FIT_RATIO
    assert "does not fit this subject" in bad["Message"]
    assert model_fit({"sha256": "0" * 64}, 0.5)["Verdict"] == "unknown"
    assert model_fit_cell({"ModelFit": bad}) == f"does not fit ({bad['Ratio']:.2f} of expected)"
    assert model_fit_cell({"ModelFit": ok}) == "fits (0.90 of expected)"
    assert model_fit_cell({"ModelFit": model_fit({"sha256": "0" * 64}, 0.5)}) == "unknown"
    assert model_fit_cell({}) == "–"
    box = model_fit_box({"ModelFit": bad})
    assert "Warning: the model does not fit this subject" in box and "0.0022" in box
    assert model_fit_box({"ModelFit": ok}) == "" == model_fit_box({})


def test_model_fit_compares_only_runs_with_the_expectations_sampler_settings():
    """Guidance and SMC lift the acceptance two to three times: the human model's held-out
    subject with the filter alone accepted 9.9 % against 33.4 % expected with the defaults, and
    was called "does not fit" at 55 % precision. A run is compared only with an expectation
    measured with its own guidance scale and SMC times."""
    table = json.loads(EXPECTED_ACCEPTANCE_FILE.read_text())
    human, tube = ({"sha256": table[k]["sha256"]} for k in ("gentract_human_phantom",
                                                            "gentract_phantom"))
    plain = {"guidance_scale": 0.0, "smc_times": []}
    defaults = {"guidance_scale": 0.03, "smc_times": [0.5]}
    fit = model_fit(human, 0.099, plain)
    assert fit["Verdict"] == "unknown" and fit["ExpectedAcceptance"] is None
    assert "not with this run's guidance scale 0, no SMC" in fit["Message"]
    assert model_fit(human, 0.099, defaults)["Verdict"] == "does not fit"
    assert model_fit(human, 0.32, defaults)["Verdict"] == "fits"
    # the tube model has an unguided expectation too (0.476): compared with that one
    fit = model_fit(tube, 0.40, plain)
    assert fit["Verdict"] == "fits" and fit["ExpectedAcceptance"] == 0.476
    assert "alone" in fit["ExpectedFrom"]
    assert model_fit(tube, 0.0022, plain)["Verdict"] == "does not fit"  # ISBI geometry
    assert model_fit(tube, 0.40, defaults)["ExpectedAcceptance"] == 0.838
    # under SMC the connectivity prior weighs the resampling and lifts the acceptance: the human
    # model's defaults (SMC at 0.8, prior on) are compared only with a run that has both
    own = dict(table["gentract_human_phantom"]["sampler"])
    assert own["smc_times"] == [0.8] and own["connectivity_prior"] is True
    assert model_fit(human, 0.6, own)["ExpectedAcceptance"] == 0.642
    fit = model_fit(human, 0.6, dict(own, connectivity_prior=False))
    assert fit["Verdict"] == "unknown" and "weighed by the connectivity prior" in fit["Message"]
    assert model_fit(human, 0.45, dict(defaults, connectivity_prior=False)
                     )["ExpectedAcceptance"] == 0.483
    # without SMC the prior acts after the filter: it does not change what is compared
    assert model_fit(tube, 0.40, dict(plain, connectivity_prior=True))["Verdict"] == "fits"


def test_the_guidance_option_reaches_the_config_and_needs_the_filter(tmp_path):
    from gentract_bids.cli.parser import parse_args
    from gentract_bids.errors import UsageError

    args = [str(tmp_path), str(tmp_path / "out"), "participant", "--guidance-scale", "0.1"]
    assert parse_args(args).model.guidance_scale == 0.1
    assert parse_args(args[:3]).model.guidance_scale == DEFAULT_GUIDANCE_SCALE
    assert parse_args(args[:3] + ["--support-threshold", "0"]).model.guidance_scale == 0.0
    with pytest.raises(UsageError, match="needs the support filter"):
        parse_args(args + ["--support-threshold", "0"])
    with pytest.raises(UsageError):
        parse_args(args[:-1] + ["-1"])


def test_the_report_shows_the_box_in_the_trackers_section(tmp_path):
    from importlib.resources import files

    from gentract_bids.reports.subject import _tracker_view

    series = {"prefix": "sub-01", "entities": {"subject": "01"}}
    side = {"Description": "GenTract", "ModelFit": model_fit({"sha256": "x"}, 0.5)}
    track = {"model": "gentract", "sidecar": side, "metrics": {}, "bundles": [],
             "streamlines_per_second": None}
    assert _tracker_view(tmp_path, series, track)["model_fit"] is None  # verdict unknown
    side["ModelFit"] = dict(side["ModelFit"], Verdict="does not fit", Message="far below")
    assert _tracker_view(tmp_path, series, track)["model_fit"]["Message"] == "far below"
    page = (files("gentract_bids") / "data" / "templates" / "subject.html.j2").read_text()
    assert page.index("model_fit(t.model_fit)") < page.index("Evaluation summary")
