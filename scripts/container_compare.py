"""Compare the container-test outputs inside (ctr-test/in) and outside (ctr-test/out) the image.

Usage: container_compare.py TEST_DIR EXPECTED_LIST. Fails when an expected file is missing on
either side, the phantoms or output images differ in a byte, a tractogram's members (the TRX zip's
files) differ in a byte, or the evaluation metrics differ (timings aside). The TRX archives
themselves differ: zip member times, and trx-python writes members in directory-listing order,
which differs between the container's overlay filesystem and the host's."""
import filecmp
import json
import sys
import zipfile
from pathlib import Path


def _members(trx: Path) -> dict | None:
    """The TRX zip's members by name; ``None`` when the file is missing."""
    if not trx.exists():
        return None
    with zipfile.ZipFile(trx) as z:
        return {name: z.read(name) for name in z.namelist()}


SAMPLING_KEYS = ("Precision", "BatchSize", "Device", "NumberSampled", "SequentialMonteCarlo")


def _sampling(trx: Path) -> str:
    """What decided the streamlines, from the tractogram's sidecar (printed when they differ)."""
    side = trx.with_suffix(".json")
    if not side.exists():
        return "no sidecar"
    meta = json.loads(side.read_text())
    return ", ".join(f"{k} {meta[k]}" for k in SAMPLING_KEYS if k in meta) or "no sampling keys"


def _untimed(obj):
    """A metrics JSON without its run times (``*Seconds``)."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if not k.endswith("Seconds")}
    return [_untimed(v) for v in obj] if isinstance(obj, list) else obj


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
    images = sorted((t / "in").rglob("*.nii.gz"))
    for f in images:
        if not filecmp.cmp(f, t / "out" / f.relative_to(t / "in"), shallow=False):
            bad.append(f"image differs: {f.name}")
    print(f"{len(images)} output images, byte-identical inside/outside unless listed below")
    for f in sorted((t / "in").rglob("*_streamlines.trx")):
        twin = t / "out" / f.relative_to(t / "in")
        a, b = _members(f), _members(twin)
        n = json.loads(a["header.json"])["NB_STREAMLINES"]
        print(f"{f.name}: {n} streamlines, members byte-identical inside/outside: {a == b}")
        if b is None:
            bad.append(f"tractogram missing outside: {f.name}")
        elif a != b:
            bad.append(f"tractogram differs: {f.name} (inside: {_sampling(f)}; "
                       f"outside: {_sampling(twin)})")
    for f in sorted((t / "in").rglob("*_desc-eval_*_metrics.json")):
        m_in, m_out = (json.loads(p.read_text()) for p in (f, t / "out" / f.relative_to(t / "in")))
        print(f"{f.name}: precision inside {100 * m_in['precision']:.1f} %, "
              f"outside {100 * m_out['precision']:.1f} %")
        if _untimed(m_in) != _untimed(m_out):
            bad.append(f"metrics differ: {f.name}")
    print("\n".join(bad) or "container-test: all expected outputs present, inside = outside")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
