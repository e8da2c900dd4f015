"""Bundle families for reading many bundles: split a name into base and side, group, sort.

The families and side suffixes are data (``data/bundle_groups.json``). Reports group and sort
per-bundle tables and figures when a tractogram has more than :data:`MANY_BUNDLES` bundles (the
72 TractSeg bundles of the human phantoms); with fewer they keep the atlas order.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

MANY_BUNDLES = 24


@lru_cache(maxsize=1)
def _spec() -> dict:
    return json.loads(resources.files("gentract_bids.data").joinpath("bundle_groups.json")
                      .read_text())


def split_side(name: str) -> tuple[str, str]:
    """``("AF", "left")`` for ``AF_left`` or ``AF_L``; ``(name, "")`` for a midline bundle."""
    for side, suffixes in _spec()["Sides"].items():
        for suf in suffixes:
            if name.endswith(suf) and len(name) > len(suf):
                return name[: -len(suf)], side
    return name, ""


def bundle_group(name: str) -> str:
    base, _ = split_side(name)
    for g in _spec()["Groups"]:
        if any(base == p or base.startswith(p + "_") for p in g["prefixes"]):
            return g["name"]
    return _spec()["Other"]


def group_order() -> list[str]:
    return [g["name"] for g in _spec()["Groups"]] + [_spec()["Other"]]


def sort_key(name: str) -> tuple:
    base, side = split_side(name)
    return group_order().index(bundle_group(name)), base, ("", "left", "right").index(side)


def grouped(names) -> list[tuple[str, list[str]]]:
    """``[(family, [names sorted by base, then left before right]), ...]`` in family order."""
    out: dict[str, list[str]] = {}
    for n in sorted(names, key=sort_key):
        out.setdefault(bundle_group(n), []).append(n)
    return list(out.items())
