"""DICOM UIDs as radcloud uses them: keys in the database, values in archive queries, and never
anything else in a URL or a file path.

A UID (PS3.5 9.1) is at most 64 characters of digits and dots; its components are separated by
single dots, and a component has no leading zero unless it is ``0`` itself. Two tests:

- :func:`is_valid_uid`: conformant to PS3.5 9.1.
- :func:`is_safe_uid`: digits and dots, no empty component, at most 64 characters. This is
  what radcloud requires of every Study, Series and SOP Instance UID it stores, queries by or
  names a resource by: such a value cannot be ``.`` or ``..``, carry a ``/``, a wildcard, a
  query separator or a control character, whatever it is joined into. A component with a
  leading zero (``1.2.03``, a known bug of some modality software) is not conformant but is
  safe, and the gateway stores it with a warning (lenient on what arrives).

:class:`InvalidUidError` (a :class:`core.exceptions.RadcloudError`) names the attribute, the
offending value (shortened, ``repr``-escaped: it came from the wire) and what was expected;
the protocol edges map it (HTTP 400, DIMSE 0xA900).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from core.exceptions import InvalidUidError

__all__ = [
    "SAFE_UID_PATTERN",
    "UID_MAX_LENGTH",
    "InvalidUidError",
    "check_uid",
    "check_uid_list",
    "is_safe_uid",
    "is_valid_uid",
]

UID_MAX_LENGTH = 64
SAFE_UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
"""A regular expression of :func:`is_safe_uid` without its length limit (route parameters)."""

_SAFE = re.compile(SAFE_UID_PATTERN)
_VALID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: str) -> bool:
    """True if ``value`` is a UID as PS3.5 9.1 defines it."""
    return len(value) <= UID_MAX_LENGTH and _VALID.fullmatch(value) is not None


def is_safe_uid(value: str) -> bool:
    """True if ``value`` may be used as a key, a query value or a path component: digits and
    dots, no empty component, at most 64 characters (leading zeros allowed)."""
    return len(value) <= UID_MAX_LENGTH and _SAFE.fullmatch(value) is not None


def check_uid(value: str, keyword: str) -> str:
    """Return ``value`` if it is a safe UID (:func:`is_safe_uid`).

    Parameters
    ----------
    value
        The UID as received.
    keyword
        The attribute it came in, e.g. ``StudyInstanceUID``, for the message.

    Raises
    ------
    InvalidUidError
        ``value`` is empty, longer than 64 characters, or not digits separated by single dots.
    """
    if is_safe_uid(value):
        return value
    if not value:
        reason = "it is empty"
    elif len(value) > UID_MAX_LENGTH:
        reason = f"it has {len(value)} characters, at most {UID_MAX_LENGTH} are allowed"
    else:
        reason = "expected digits separated by single dots"
    raise InvalidUidError(keyword, value, f"{reason} (PS3.5 9.1)")


def check_uid_list(values: Iterable[str], keyword: str) -> list[str]:
    """Each of ``values`` checked by :func:`check_uid` (a UID list of a query, PS3.4 C.2.2.2.2)."""
    return [check_uid(value, keyword) for value in values]
