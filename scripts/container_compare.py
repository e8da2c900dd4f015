"""Compare the container-test outputs inside (ctr-test/in) and outside (ctr-test/out) the image.

Usage: container_compare.py TEST_DIR EXPECTED_LIST. Fails when an expected file is missing on
either side, the phantoms differ, or a tractogram's streamlines differ."""
import filecmp
import json
import sys
from pathlib import Path

import numpy as np


def main(test_dir: str, expected: str) -> int:
    t = Path(test_dir)
    bad = []
    for side in ("in", "out"):
        for rel in Path(expected).read_text().split():
            if not list((t / side).glob(rel)):
                bad.append(f"{side}: missing {rel}")
    for f in sorted((t / "bids").rglob("*.nii.gz")):
        twin = t / "bids-outside" / f.relative_to(t / "bids")
        if not filecmp.cmp(f, twin, shallow=False):
            bad.append(f"phantom differs: {f.name}")
    import trx.trx_file_memmap as tmm

    for f in sorted((t / "in").rglob("*_streamlines.trx")):
        twin = t / "out" / f.relative_to(t / "in")
        a, b = tmm.load(str(f)), tmm.load(str(twin))
        same = np.array_equal(a.streamlines._data, b.streamlines._data)
        print(f"{f.name}: {len(a.streamlines)} streamlines, identical inside/outside: {same}")
        if not same:
            bad.append(f"tractogram differs: {f.name}")
    for f in sorted((t / "in").rglob("*_desc-eval_*_metrics.json")):
        twin = t / "out" / f.relative_to(t / "in")
        p_in, p_out = (100 * json.loads(p.read_text())["precision"] for p in (f, twin))
        print(f"{f.name}: precision inside {p_in:.1f} %, outside {p_out:.1f} %")
    print("\n".join(bad) or "container-test: all expected outputs present, inside = outside")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
