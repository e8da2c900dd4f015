"""One to_dict/from_dict for the model's config dataclasses (JSON-able, unknown keys refused)."""

from __future__ import annotations

from dataclasses import asdict, fields


class ConfigDict:
    """Mixin for dataclasses: ``to_dict()`` (tuples as lists) and a strict ``from_dict()``."""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        return cls(**d)
