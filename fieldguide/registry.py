"""A table of things by name (source and export formats, signals, heads, backbones, loss methods,
pseudo-labeling modes) that refuses a second thing under a name it holds.

A registry is a ``dict`` (lookups, ``in``, iteration in registration order work as on any dict);
:meth:`Registry.add` is how a thing gets in, and a duplicate name raises
:class:`~fieldguide.errors.DuplicateNameError` instead of silently replacing the first one.
"""

from __future__ import annotations

from typing import TypeVar

from fieldguide.errors import DuplicateNameError

T = TypeVar("T")


def _origin(item: object) -> str:
    """Where ``item`` (or the function it wraps) was defined: ``module.qualname``, else its repr."""
    for obj in (item, getattr(item, "fn", None), getattr(item, "read", None), getattr(item, "write", None)):
        name = getattr(obj, "__qualname__", None)
        if name and getattr(obj, "__module__", None):
            return f"{obj.__module__}.{name}"
    return repr(item)


class Registry(dict[str, T]):
    """Name -> thing; ``kind`` names what it holds in errors (``signal``, ``export format``, ...)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, name: str, item: T) -> T:
        if name in self:
            raise DuplicateNameError(
                f"{self.kind} {name!r} is registered twice ({_origin(self[name])} and {_origin(item)}); "
                "register the second one under another name"
            )
        self[name] = item
        return item
