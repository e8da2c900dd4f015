#!/usr/bin/env python
"""Write the Boutiques descriptor ``boutiques/gentract.json`` from the command-line parser.

    python scripts/boutiques_descriptor.py [--check]      # or: make boutiques

Every argument of :func:`gentract_bids.cli.parser.build_parser` but ``--help`` and ``--version``
becomes an input: its id is the argument's ``dest``, its description the help text (defaults
filled in), its flag the long option. The other top-level fields (name, description, author,
container image, output files, ...) are kept from the committed file; ``tool-version`` is the
package's. With ``--check`` nothing is written and the exit status is 1 when the committed file
differs from what would be written (``tests/test_container.py`` checks the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the parser of this checkout, not that of an installed copy
    sys.path.insert(0, str(ROOT))

from gentract_bids import __version__  # noqa: E402
from gentract_bids.cli.parser import (ANALYSIS_LEVELS, RANGES, build_parser,  # noqa: E402
                                      long_flag)

DESCRIPTOR = ROOT / "boutiques" / "gentract.json"
SCHEMA_VERSION = "0.5"
SKIPPED = ("help", "version")  # dests of the arguments that are not inputs
# The positionals: readable names; the inputs that must exist (Boutiques File: bosh mounts them);
# choices checked after parsing (parser.parse_args) rather than by argparse.
POSITIONAL_NAMES = {"bids_dir": "BIDS dataset", "output_dir": "Output directory",
                    "analysis_level": "Analysis level"}
EXISTING_FILES = {"bids_dir"}
EXTRA_CHOICES = {"analysis_level": ANALYSIS_LEVELS}
# Defaults that depend on the machine the parser is built on: written as words, so that the
# descriptor is the same everywhere.
MACHINE_DEFAULTS = {"nprocs": "the CPU count"}
ACRONYMS = {"bids", "csd", "mb", "omp", "sh", "sift", "smc"}  # upper case in input names


def expand_help(action: argparse.Action, prog: str) -> str:
    """The help text of ``action`` as ``--help`` prints it: ``%(default)s`` etc. filled in."""
    params: dict[str, Any] = {**vars(action), "prog": prog}
    if action.dest in MACHINE_DEFAULTS:
        params["default"] = MACHINE_DEFAULTS[action.dest]
    if action.choices is not None:
        params["choices"] = ", ".join(map(str, action.choices))
    return (action.help or "") % params


def readable_name(action: argparse.Action) -> str:
    """A short name for the input: the positional's, or the flag in words (``SH order``)."""
    if not action.option_strings:
        return POSITIONAL_NAMES.get(action.dest, action.dest.replace("_", " ").capitalize())
    words = long_flag(action).lstrip("-").split("-")
    words = [w.upper() if w in ACRONYMS else w for w in words]
    return " ".join([words[0][:1].upper() + words[0][1:], *words[1:]])


def value_fields(action: argparse.Action) -> dict[str, Any]:
    """The Boutiques type of the input and what goes with it (integer, list, value choices)."""
    if action.nargs == 0:  # store_true/store_false/store_const/count: the flag alone
        return {"type": "Flag"}
    if action.dest in EXISTING_FILES:
        fields: dict[str, Any] = {"type": "File"}
    elif action.type in (int, float):
        fields = {"type": "Number", **({"integer": True} if action.type is int else {})}
    else:  # str, Path (may not exist yet) and parsing functions such as parse_mem
        fields = {"type": "String"}
    if action.nargs in ("+", "*"):
        fields["list"] = True
        if action.nargs == "+":
            fields["min-list-entries"] = 1
    lo, hi = RANGES.get(action.dest, (None, None))  # what parse_args checks
    if fields["type"] == "Number":
        fields.update({k: v for k, v in (("minimum", lo), ("maximum", hi)) if v is not None})
    choices = action.choices if action.choices is not None else EXTRA_CHOICES.get(action.dest)
    if choices is not None:
        fields["value-choices"] = list(choices)
    return fields


def value_key(action: argparse.Action) -> str:
    """The placeholder of the input in the command line: ``[DEST_UPPER]``."""
    return f"[{action.dest.upper()}]"


def action_input(action: argparse.Action, prog: str) -> dict[str, Any]:
    """The Boutiques input of one argparse action."""
    fields = value_fields(action)
    entry: dict[str, Any] = {
        "id": action.dest,
        "name": readable_name(action),
        "type": fields.pop("type"),
        "description": expand_help(action, prog),
        "value-key": value_key(action),
    }
    if action.option_strings:
        entry["command-line-flag"] = long_flag(action)
    entry["optional"] = not action.required
    return {**entry, **fields}


def input_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's arguments that are inputs, in the parser's order (positionals first)."""
    return [a for a in parser._actions if a.dest not in SKIPPED]


def build_descriptor(current: dict[str, Any]) -> dict[str, Any]:
    """The descriptor: the top-level fields of ``current`` (the committed descriptor, or ``{}``)
    with the inputs, command line and versions of the parser and the package."""
    parser = build_parser()
    actions = input_actions(parser)
    descriptor = dict(current) or {"name": parser.prog, "description": parser.description}
    descriptor.update({
        "tool-version": __version__,
        "schema-version": SCHEMA_VERSION,
        "command-line": " ".join([parser.prog, *map(value_key, actions)]),
        "inputs": [action_input(a, parser.prog) for a in actions],
    })
    return descriptor


def render(descriptor: dict[str, Any]) -> str:
    """The descriptor as written to disk: JSON, indent 2, trailing newline."""
    return json.dumps(descriptor, indent=2, ensure_ascii=False) + "\n"


def read_descriptor(path: Path) -> dict[str, Any]:
    """The descriptor at ``path``, or ``{}`` when there is none."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def expected_text(path: Path = DESCRIPTOR) -> str:
    """What ``make boutiques`` writes to ``path``, given the top-level fields already there."""
    return render(build_descriptor(read_descriptor(path)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if the descriptor is not what would be written")
    p.add_argument("--descriptor", type=Path, default=DESCRIPTOR,
                   help="the descriptor file (default: boutiques/gentract.json)")
    args = p.parse_args(argv)
    text = expected_text(args.descriptor)
    current = args.descriptor.read_text(encoding="utf-8") if args.descriptor.exists() else None
    if args.check:
        if current != text:
            print(f"{args.descriptor} is out of date with gentract_bids/cli/parser.py: "
                  "run `make boutiques`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        args.descriptor.write_text(text, encoding="utf-8")
    n_inputs = len(json.loads(text)["inputs"])
    print(f"{args.descriptor}: {n_inputs} inputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
