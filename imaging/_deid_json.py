"""DICOM JSON (PS3.18 F.2) around the Dataset walk: bulk data references taken out before
the JSON becomes a Dataset, and put back (rewritten) where their attribute is kept."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.tag import Tag

from imaging._deid_rules import rewrite_uri
from imaging._deid_table import action_of

__all__ = ["BulkReference", "put_back_bulk_data", "take_out_bulk_data"]

Path = tuple[tuple[str, int], ...]
"""Where an attribute lies: the (sequence tag, item index) steps from the top level."""


@dataclass(frozen=True)
class BulkReference:
    """An attribute whose value is a BulkDataURI in the original JSON."""

    path: Path
    tag: str
    vr: str
    uri: str


def take_out_bulk_data(
    dataset: Mapping[str, Any],
) -> tuple[dict[str, Any], list[BulkReference]]:
    """A copy of ``dataset`` without its BulkDataURI attributes, and those attributes."""
    found: list[BulkReference] = []
    copied = copy.deepcopy(dict(dataset))
    _take_out(copied, (), found)
    return copied, found


def _take_out(dataset: dict[str, Any], path: Path, found: list[BulkReference]) -> None:
    for tag in list(dataset):
        attribute = dataset[tag]
        if not isinstance(attribute, dict):
            continue
        if "BulkDataURI" in attribute:
            found.append(
                BulkReference(path, tag, str(attribute.get("vr", "UN")), attribute["BulkDataURI"])
            )
            del dataset[tag]
        elif attribute.get("vr") == "SQ":
            for n, item in enumerate(attribute.get("Value") or []):
                if isinstance(item, dict):
                    _take_out(item, (*path, (tag, n)), found)


def put_back_bulk_data(
    result: dict[str, Any],
    references: list[BulkReference],
    uri_base: str | None,
    remap_uid: Callable[[str], str],
) -> None:
    """Put each bulk data reference back into ``result`` where the profile keeps its
    attribute and its enclosing items survived, with its URI rewritten onto ``uri_base``
    (dropped without one: see :func:`imaging._deid_rules.rewrite_uri`)."""
    for ref in references:
        tag = Tag(ref.tag)
        if tag.is_private or ref.vr == "UN" or action_of(tag) is not None:
            continue  # removed, emptied or replaced by the profile: the original bulk goes
        parent: dict[str, Any] | None = result
        for sequence_tag, index in ref.path:
            items = (parent or {}).get(sequence_tag, {}).get("Value") or []
            parent = items[index] if index < len(items) else None
        uri = rewrite_uri(ref.uri, uri_base, remap_uid)
        if parent is not None and uri is not None:
            parent[ref.tag] = {"vr": ref.vr, "BulkDataURI": uri}
