"""Copying database rows into the plain records the domain hands out."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["copy_row"]

_T = TypeVar("_T")


def _fields(cls: type[Any]) -> dict[str, bool]:
    """The fields of ``cls`` to fill, each with whether it is required (has no default)."""
    if dataclasses.is_dataclass(cls):
        missing = dataclasses.MISSING
        return {
            f.name: f.default is missing and f.default_factory is missing
            for f in dataclasses.fields(cls)
            if f.init
        }
    if issubclass(cls, BaseModel):
        return {name: info.is_required() for name, info in cls.model_fields.items()}
    defaults = getattr(cls, "_field_defaults", {})
    return {name: name not in defaults for name in cls._fields}


def copy_row(cls: type[_T], *sources: object, **values: Any) -> _T:
    """A ``cls`` (a dataclass, a pydantic model or a named tuple) filled from ORM rows.

    Each field takes its value from ``values`` when named there, else from the first of
    ``sources`` that has an attribute of the field's name, else its default.

    Raises
    ------
    AttributeError
        A required field is neither in ``values`` nor an attribute of any source.
    """
    for name, required in _fields(cls).items():
        if name in values:
            continue
        source = next((s for s in sources if hasattr(s, name)), None)
        if source is not None:
            values[name] = getattr(source, name)
        elif required:
            raise AttributeError(
                f"{cls.__name__}.{name}: no value given and no source has the attribute"
            )
    return cls(**values)
