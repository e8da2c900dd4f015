#!/usr/bin/env python
"""Write a checkpoint's own sampler defaults (``sampler_defaults`` in its JSON) and seal it again.

    python scripts/set_sampler_defaults.py gentract_human_phantom \
        '{"smc_times": [0.8], "connectivity_prior": "on"}'

The keys are the app's sampler options (``gentract_bids.model.support.SAMPLER_DEFAULTS``:
guidance_scale, smc_times, density_acceptance, connectivity_prior); the app uses them for the
options a user leaves unset (``--support-threshold 0`` still turns them all off). ``{}`` removes
them. Choose them on the development cohort (docs/benchmarks.md, "Sampler defaults per model").
Prints the new ``metadata_sha256``, which goes into ``SHIPPED_CHECKSUMS`` for a shipped model.
"""

from __future__ import annotations

import json
import sys

from gentract_bids.io.checkpoint import checkpoint_paths, read_checkpoint_metadata, seal_metadata
from gentract_bids.errors import UsageError
from gentract_bids.model.inference import check_sampler_defaults, resolve_model_path


def main(argv=None) -> int:
    model, values = (sys.argv[1:] if argv is None else argv)
    path = resolve_model_path(model)
    meta = read_checkpoint_metadata(path)
    values = json.loads(values)
    try:
        check_sampler_defaults(values, f"the checkpoint {model}")
    except UsageError as err:
        raise SystemExit(str(err)) from None
    meta.pop("sampler_defaults", None)
    if values:
        meta["sampler_defaults"] = values
    _, meta_path = checkpoint_paths(path)
    meta = seal_metadata(meta)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{meta_path.name}: sampler_defaults {values}; metadata_sha256 {meta['metadata_sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
