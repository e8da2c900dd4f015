"""The connectivity prior (model/connectivity.py): learned pairs pass, others fail, it travels
with the checkpoint (checksum), and the sampler rejects what it rejects."""

import json
import shutil

import numpy as np
import pytest

from test_inference import tiny_ckpt, zscored_sh  # noqa: F401 (fixtures)

from gentract_bids.io.checkpoint import CheckpointError, read_checkpoint_metadata
from gentract_bids.model.connectivity import (ConnectivityPrior, attach_connectivity,
                                              connectivity_path, load_connectivity)
from gentract_bids.model.inference import SHIPPED_MODELS_DIR, load_model, shipped_models


def _lines(a, b, p=8):
    """Straight streamlines (n, p, 3) from the points ``a`` to ``b``."""
    t = np.linspace(0, 1, p)[None, :, None]
    return np.asarray(a, float)[:, None] + t * (np.asarray(b, float) - np.asarray(a, float))[:, None]


def test_learned_pairs_pass_in_either_order_and_others_fail():
    a = np.array([[-40.0, 0, 0], [0, 30, 10]])
    b = np.array([[40.0, 0, 0], [0, -30, 10]])
    prior = ConnectivityPrior.from_streamlines(_lines(a, b), cell_mm=8.0, reach=0)
    assert len(prior.keys) == 2
    # the same pairs, moved within their cells and reversed, pass; crossed pairs fail
    assert prior.allowed(_lines(b + 1.0, a + 1.0)).all()
    crossed = _lines(a, b[::-1])
    assert not prior.allowed(crossed).any()
    # a neighbouring cell passes only with reach 1
    shifted = _lines(a + [8.0, 0, 0], b)
    assert not prior.allowed(shifted).any()
    wide = ConnectivityPrior(prior.keys, prior.cell_mm, reach=1)
    assert wide.allowed(shifted).all() and not wide.allowed(_lines(a + [24.0, 0, 0], b)).any()
    assert prior.allowed(np.zeros((0, 8, 3))).shape == (0,)


def test_prior_travels_with_the_checkpoint(tmp_path):
    for suffix in (".safetensors", ".json"):
        shutil.copy(SHIPPED_MODELS_DIR / f"gentract_phantom{suffix}", tmp_path / f"m{suffix}")
    meta = read_checkpoint_metadata(tmp_path / "m")
    meta.pop("connectivity", None)
    meta.pop("metadata_sha256", None)
    (tmp_path / "m.json").write_text(json.dumps(meta))
    assert load_connectivity(tmp_path / "m", read_checkpoint_metadata(tmp_path / "m")) is None
    prior = ConnectivityPrior.from_streamlines(_lines([[0.0, 0, 0]], [[50.0, 0, 0]]))
    meta = attach_connectivity(tmp_path / "m", prior, "a test")
    back = load_connectivity(tmp_path / "m", read_checkpoint_metadata(tmp_path / "m"))
    assert np.array_equal(back.keys, prior.keys) and back.cell_mm == prior.cell_mm
    assert meta["connectivity"]["Pairs"] == 1
    connectivity_path(tmp_path / "m").write_bytes(b"not the prior")
    with pytest.raises(CheckpointError, match="checksum"):
        load_connectivity(tmp_path / "m", read_checkpoint_metadata(tmp_path / "m"))


@pytest.mark.parametrize("name", ["gentract_phantom", "gentract_human_phantom"])
def test_shipped_models_carry_a_prior_of_their_training_cohort(name):
    assert name in shipped_models()
    _, meta = load_model(name)  # the pinned metadata checksum covers the prior's entry
    prior = load_connectivity(SHIPPED_MODELS_DIR / name, meta)
    assert prior is not None and prior.n_streamlines >= 50_000
    assert meta["connectivity"]["Pairs"] == len(prior.keys) > 1000
    assert "training subjects" in meta["connectivity"]["learned_from"]


def test_sample_tractogram_keeps_only_what_the_prior_allows(tiny_ckpt, zscored_sh, tmp_path):
    import torch
    from test_support import _half_space_support

    from gentract_bids.cli.parser import parse_args
    from gentract_bids.io.tractogram import load_tractogram
    from gentract_bids.model.inference import ModelMismatchError, sample_tractogram, sh_tensor

    model, meta = load_model(tiny_ckpt)
    support, _, affine, mask = _half_space_support(meta)
    with torch.inference_mode():
        context = model.encode_context(sh_tensor(model, zscored_sh))

    def run(name, prior, n=30):
        info = sample_tractogram(model, meta, zscored_sh, tmp_path / name, n_streamlines=n,
                                 ref_affine=affine, ref_shape=mask.shape, seed=5,
                                 batch_size=64, support=support, context=context,
                                 connectivity=prior)
        return np.stack(load_tractogram(tmp_path / name)[0]), info

    plain, _ = run("a.trx", None)
    # a prior learned from half of the unfiltered pool: every kept streamline's pair is in it
    half = ConnectivityPrior.from_streamlines(plain[::2], cell_mm=8.0, reach=0)
    kept, info = run("p.trx", half)
    assert half.allowed(kept).all() and len(kept) > 0
    assert not half.allowed(plain).all()  # so the prior did reject some
    assert 0 < info["ConnectivityPrior"]["PassRate"] < 1
    far = ConnectivityPrior.from_streamlines(_lines([[900.0, 0, 0]], [[-900.0, 0, 0]]))
    with pytest.raises(ModelMismatchError):
        run("none.trx", far, n=5)
    base = [str(tmp_path), str(tmp_path / "out"), "participant"]
    # the tube model carries no sampler defaults, so the app's (prior off) hold
    assert parse_args(base + ["--model", "gentract_phantom"]).model.connectivity_prior is False
    assert parse_args(base + ["--connectivity-prior", "off"]).model.connectivity_prior is False
    assert parse_args(base + ["--connectivity-prior", "on"]).model.connectivity_prior is True
    assert parse_args(base + ["--connectivity-prior", "on", "--support-threshold", "0"]
                      ).model.connectivity_prior is False
