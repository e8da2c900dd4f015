"""Thin nipype interfaces over the package's plain functions."""

from nipype.interfaces.base import isdefined


def optional(value):
    """An optional trait's value, or None when it is undefined, None or an empty string."""
    return value if isdefined(value) and value not in (None, "") else None
