"""Provenance in the sidecars: each tool keeps its own version, the GenTract checksum only where
GenTract (or its statistics) made the file."""

from gentract_bids.interfaces.bids import tracker_provenance
from gentract_bids.workflows.outputs import init_fodf_derivatives_wf

PROV = {"Software": "gentract", "Version": "1.2.3", "RandomSeed": 7, "ModelChecksum": "abc"}


def test_baseline_sidecar_keeps_mrtrix_version_and_drops_the_model_checksum():
    side = tracker_provenance(PROV, {"Software": "MRtrix3 3.0.4", "Algorithm": "SD_Stream"},
                              "sdstream")
    assert side["Software"] == "MRtrix3 3.0.4"
    assert side["Pipeline"] == "gentract" and side["PipelineVersion"] == "1.2.3"
    assert "ModelChecksum" not in side and side["RandomSeed"] == 7


def test_gentract_sidecar_keeps_the_checksum():
    side = tracker_provenance(PROV, {"Sampler": "ddim"}, "gentract")
    assert side["ModelChecksum"] == "abc" and side["Software"] == "gentract"


def test_fodf_sinks_carry_the_checksum_only_on_canonical_files(tmp_path):
    wf = init_fodf_derivatives_wf(staging_dir=str(tmp_path), provenance=PROV)
    for field in ("mask_file", "fod_derivative", "fod_response"):
        inputs = wf.get_node(f"ds_{field}").interface._metadata
        assert "ModelChecksum" not in inputs and inputs["Software"] == "gentract"
    for field in ("canonical_fod", "canonical_mask"):
        assert wf.get_node(f"ds_{field}").interface._metadata["ModelChecksum"] == "abc"
