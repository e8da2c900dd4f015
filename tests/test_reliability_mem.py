"""``--mem`` is honoured by GenTract's sampling batch (issues 18 and 19): the same request under
a small budget is sampled in smaller batches, as the run records in the tractogram's sidecar
and its log, and gives the same streamlines (the same seed draws the same noise whatever the
batch)."""

from __future__ import annotations

import json
import shutil

import pytest

from test_reliability_resources import _finish, _gentract, tiny_cohort

pytestmark = pytest.mark.slow  # whole GenTract runs
SIDECAR = "sub-01/dwi/sub-01_space-dwi_model-gentract_streamlines.json"
# 300 streamlines without the support filter: a batch needs at most 512 (a power of two)
OPTIONS = ["--tracker", "gentract", "--n-streamlines", "300", "--support-threshold", "0",
           "--registration", "none", "--eval", "sanity", "--random-seed", "3"]


def _batch(out, text) -> int:
    meta = json.loads((out / SIDECAR).read_text())
    assert meta["NumberSampled"] == meta["NumberRequested"] == 300
    assert f"in batches of {meta['BatchSize']} " in text, text
    return meta["BatchSize"]


def test_mem_caps_the_sampling_batch(tmp_path):
    bids, work = tiny_cohort(tmp_path / "bids"), tmp_path / "work"
    text, code = _finish(_gentract(bids, tmp_path / "out", work, extra=OPTIONS))
    assert code == 0, text
    default = _batch(tmp_path / "out", text)
    # the same work directory without the sampling node: only sampling (and what follows) runs
    # again; --mem reaches the sampler through the environment, not the node's inputs
    shutil.rmtree(work / "gentract_wf/sub_01_wf/track_gentract_wf/sample")
    text, code = _finish(_gentract(bids, tmp_path / "mem", work, extra=[*OPTIONS, "--mem", "200"]))
    assert code == 0, text
    small = _batch(tmp_path / "mem", text)
    # a quarter of 200 MB over ~0.36 MB of activations per streamline: 140, so 128
    assert small == 128 < default, (small, default)
    trx = SIDECAR.replace(".json", ".trx")
    assert (tmp_path / "mem" / trx).read_bytes() == (tmp_path / "out" / trx).read_bytes()
