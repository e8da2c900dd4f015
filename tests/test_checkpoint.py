"""Checkpoint I/O: safetensors weights + JSON metadata, checksum, no pickle."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from gentract_bids.errors import EX_DATAERR, BadDataError, CheckpointError
from gentract_bids.io.checkpoint import (file_sha256, load_checkpoint, read_checkpoint_metadata,
                                         save_checkpoint)
from gentract_bids.model.encoder import EncoderConfig
from gentract_bids.model.gentract import GenTract, GenTractConfig
from gentract_bids.model.transformer import TransformerConfig
from gentract_bids.model.vae import VAEConfig

torch.set_num_threads(1)
META = {
    "zscore": {"mean": [0.1] * 28, "std": [1.5] * 28},
    "coord_bounds": {"lo": [-70.0, -100.0, -60.0], "hi": [70.0, 80.0, 80.0]},
    "provenance": {"software": "gentract", "random_seed": 0, "train_subjects": ["01", "02"]},
}


def tiny_model(objective="diffusion") -> GenTract:
    cfg = GenTractConfig(grid_shape=(16, 16, 16), objective=objective,
                         vae=VAEConfig(channels=(4, 8, 8), norm_num_groups=4),
                         encoder=EncoderConfig(channels=(8, 8), out_channels=2, emb_dim=8,
                                               norm_num_groups=4),
                         transformer=TransformerConfig(width=32, depth=2, heads=4, n_points=16))
    torch.manual_seed(0)
    return GenTract(cfg)


@pytest.fixture
def saved(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path / "ckpt" / "gentract", model, META)
    return model, path


def _samples(model, seed=5):
    torch.manual_seed(123)  # fixed volume; the sampling noise comes from the generator
    sh = torch.randn(28, 16, 16, 16)
    ctx = model.encode_context(sh)
    return model.sample(ctx, 5, steps=3, batch_size=4, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("objective", ["diffusion", "flow"])
def test_round_trip_gives_bit_identical_samples(tmp_path, objective):
    model = tiny_model(objective).eval()
    path = save_checkpoint(tmp_path / "gentract.safetensors", model, META)
    assert path == tmp_path / "gentract.safetensors"
    assert (tmp_path / "gentract.json").is_file()
    for handle in (path, tmp_path / "gentract.json", tmp_path / "gentract"):
        loaded, meta = load_checkpoint(handle)
        assert not loaded.training
        assert loaded.config == model.config
        assert torch.equal(_samples(loaded), _samples(model))
    new = loaded.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(new[k], v), k


def test_metadata_contents(saved):
    model, path = saved
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["format"].startswith("gentract-checkpoint")
    assert meta["sha256"] == file_sha256(path)
    assert meta["model_config"] == model.config.to_dict()
    assert GenTractConfig.from_dict(meta["model_config"]) == model.config
    assert meta["sh_order"] == 6 and meta["sh_basis"] == "descoteaux07"
    assert meta["legacy_basis"] is False
    assert meta["grid_spacing"] == 1.875 and meta["grid_shape"] == [16, 16, 16]
    assert meta["n_points"] == 16
    for key in ("zscore", "coord_bounds", "provenance"):
        assert meta[key] == META[key]
    assert read_checkpoint_metadata(path) == meta


def test_tampered_weights_are_refused(saved):
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum") as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert err.value.exit_code == EX_DATAERR == 65 and isinstance(err.value, BadDataError)


def test_edited_json_checksum_is_refused(saved):
    _, path = saved
    jpath = path.with_suffix(".json")
    meta = json.loads(jpath.read_text())
    meta["sha256"] = "0" * 64
    jpath.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)
    meta["sha256"] = file_sha256(path)
    jpath.write_text(json.dumps(meta))
    load_checkpoint(path, expected_sha256=meta["sha256"])  # restored: loads again
    with pytest.raises(CheckpointError, match="expected"):
        load_checkpoint(path, expected_sha256="f" * 64)


def test_missing_or_invalid_json_is_refused(saved):
    _, path = saved
    jpath = path.with_suffix(".json")
    jpath.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    jpath.unlink()
    with pytest.raises(CheckpointError, match="not found") as err:
        load_checkpoint(path)
    assert str(jpath) in str(err.value)
    save_checkpoint(path, tiny_model(), META)
    path.unlink()
    with pytest.raises(CheckpointError, match="weights not found"):
        load_checkpoint(path)


def test_state_dict_not_matching_config_is_refused(saved):
    from gentract_bids.io.checkpoint import seal_metadata

    _, path = saved
    jpath = path.with_suffix(".json")
    meta = json.loads(jpath.read_text())
    meta["model_config"]["transformer"]["depth"] = 3  # one layer more than the weights hold
    jpath.write_text(json.dumps(seal_metadata(meta)))  # re-sealed: the deeper checks
    with pytest.raises(CheckpointError, match="do not match its model_config") as err:
        load_checkpoint(path)
    assert "missing" in str(err.value)
    meta["model_config"]["transformer"]["depth"] = 2
    meta["model_config"]["encoder"]["out_channels"] = 3  # wrong shapes
    jpath.write_text(json.dumps(seal_metadata(meta)))  # re-sealed: the deeper checks
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(path)
    meta["model_config"]["objective"] = "gan"
    jpath.write_text(json.dumps(seal_metadata(meta)))  # re-sealed: the deeper checks
    with pytest.raises(CheckpointError, match="invalid model_config"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this creates a marker file: proof that pickle code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_renamed_safetensors_is_not_executed(saved, tmp_path):
    from gentract_bids.io.checkpoint import seal_metadata

    _, path = saved
    marker = tmp_path / "pwned"
    path.write_bytes(pickle.dumps({"weights": _Payload(marker)}))
    # even with a matching checksum in the JSON, the file is refused without unpickling
    jpath = path.with_suffix(".json")
    meta = json.loads(jpath.read_text())
    meta["sha256"] = file_sha256(path)
    jpath.write_text(json.dumps(seal_metadata(meta)))
    with pytest.raises(CheckpointError, match="not a valid safetensors file") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    # a torch.save() zip archive is refused the same way
    torch.save({"w": torch.zeros(2)}, path)
    meta["sha256"] = file_sha256(path)
    jpath.write_text(json.dumps(seal_metadata(meta)))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path)


@pytest.mark.parametrize("edit", ["zscore", "coord_bounds", "grid_spacing"])
def test_edited_metadata_is_refused(saved, edit):
    """The checksum covers the JSON too: an edited statistic or bound is refused (it used to be
    accepted and then crash, or quietly drop streamlines)."""
    _, path = saved
    jpath = path.with_suffix(".json")
    meta = json.loads(jpath.read_text())
    assert len(meta["metadata_sha256"]) == 64
    if edit == "zscore":
        meta["zscore"]["mean"][3] += 0.5
    elif edit == "coord_bounds":
        meta["coord_bounds"]["hi"][1] = 20.0
    else:
        meta["grid_spacing"] = 2.0
    jpath.write_text(json.dumps(meta, indent=4))
    with pytest.raises(CheckpointError, match="modified"):
        read_checkpoint_metadata(path)
    with pytest.raises(CheckpointError, match="modified"):
        load_checkpoint(path)


def test_reindented_metadata_still_loads(saved):
    _, path = saved
    jpath = path.with_suffix(".json")
    jpath.write_text(json.dumps(json.loads(jpath.read_text()), indent=None))
    load_checkpoint(path)


def test_shipped_checksums_are_pinned(tmp_path, monkeypatch):
    import shutil

    from gentract_bids.io.checkpoint import seal_metadata
    from gentract_bids.model import inference

    for stem, pinned in inference.SHIPPED_CHECKSUMS.items():
        meta = read_checkpoint_metadata(inference.SHIPPED_MODELS_DIR / stem)
        assert meta["metadata_sha256"] == pinned, f"update SHIPPED_CHECKSUMS[{stem!r}]"
    # a shipped JSON edited and re-sealed (checksum recomputed) is still refused
    fake = tmp_path / "models"
    shutil.copytree(inference.SHIPPED_MODELS_DIR, fake)
    jpath = fake / "gentract_phantom.json"
    meta = json.loads(jpath.read_text())
    meta["zscore"]["std"][0] *= 2
    jpath.write_text(json.dumps(seal_metadata(meta)))
    read_checkpoint_metadata(fake / "gentract_phantom")  # consistent in itself
    monkeypatch.setattr(inference, "SHIPPED_MODELS_DIR", fake)
    with pytest.raises(CheckpointError, match="not the one released"):
        inference.load_model(fake / "gentract_phantom")
