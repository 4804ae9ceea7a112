"""The radiologist's signed report as a DICOM Comprehensive SR (verified, final).

Layout: a Basic Diagnostic Imaging Report (PS3.16 TID 2000): the author as person observer
(TID 1002), the report text (Findings), per AI finding whether the radiologist agrees (private
code ``RC001`` "Agreement with AI finding", value SCT Yes or No, with a text naming the finding,
its model and score), and findings the AI missed (private code ``RC002``) with the image they
were marked on and, when given, the marked rectangle as a polyline (SCOORD, PS3.3 C.18.6).

The document is complete, final and verified by the author on behalf of the organisation
(PS3.3 C.17.2: Completion, Verification Flags), unlike the AI's TID 1500 report
(:mod:`imaging.sr`), which stays unverified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from imaging.seg import MANUFACTURER

__all__ = [
    "ADDED_FINDING",
    "AI_AGREEMENT",
    "SR_SERIES_NUMBER",
    "AddedFindingItem",
    "FindingDecisionItem",
    "person_name",
    "write_report_sr",
]

AI_AGREEMENT = Code("RC001", "99RADCLOUD", "Agreement with AI finding")
"""Private code of the signed SR's per-finding item: value SCT Yes (confirmed) or No."""
ADDED_FINDING = Code("RC002", "99RADCLOUD", "Finding not reported by AI")
SR_SERIES_NUMBER = 990


@dataclass(frozen=True)
class FindingDecisionItem:
    """The radiologist's decision on one AI finding, as the report states it."""

    label: str
    model_name: str
    model_version: str
    score: float | None
    critical: bool
    decision: Literal["confirmed", "rejected"]


@dataclass(frozen=True)
class AddedFindingItem:
    """A finding the AI missed: its label, the image it was marked on, and the rectangle
    (``x``, ``y``, ``width``, ``height`` in pixels) when one was drawn."""

    label: str
    image: Dataset
    region: Mapping[str, float] = field(default_factory=dict)


def person_name(user: str) -> str:
    """A user name as a DICOM person name (PN): a name without components gets the trailing
    caret that marks it a family name alone, e.g. ``dr-smith^``."""
    return user if "^" in user else f"{user}^"


def write_report_sr(
    evidence: Sequence[Dataset],
    *,
    author: str,
    organization: str,
    text: str,
    decisions: Sequence[FindingDecisionItem],
    added: Sequence[AddedFindingItem] = (),
    previous_versions: Sequence[Dataset] = (),
) -> hd.sr.ComprehensiveSR:
    """The signed report as a new Comprehensive SR series of the study.

    Parameters
    ----------
    evidence
        Instances of the study the report refers to (one per series read, and the images of
        added findings); the SR's patient and study attributes come from them.
    author
        The signing radiologist's user name (verifying observer and person observer).
    organization
        The organisation the author verifies for.
    text
        The report text.
    decisions
        One item per AI finding.
    added
        Findings the AI missed.
    previous_versions
        The SR documents this one amends (an amended report): referenced in its Predecessor
        Documents Sequence (PS3.3 C.17.2.3); they stay in the archive unchanged.

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        Complete, final, verified.
    """
    content = _report_content(author, organization, text=text, decisions=decisions, added=added)
    return hd.sr.ComprehensiveSR(
        evidence=list(evidence),
        content=content,
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=person_name(author),
        verifying_organization=organization,
        series_description="Radiologist report",
        previous_versions=list(previous_versions) or None,
    )


def _report_content(
    author: str,
    organization: str,
    *,
    text: str,
    decisions: Sequence[FindingDecisionItem],
    added: Sequence[AddedFindingItem],
) -> hd.sr.ContainerContentItem:
    """A Basic Diagnostic Imaging Report (TID 2000 layout): the author as person observer, the
    report text, per AI finding whether the radiologist agrees, and added findings with their
    image region."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id="2000")
    items: list[Any] = []
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=person_name(author), login_name=author, organization_name=organization
        ),
    )
    items.extend(observer)
    items.append(
        hd.sr.TextContentItem(name=codes.LN.Findings, value=text, relationship_type=contains)
    )
    items.extend(_agreement(decision) for decision in decisions)
    items.extend(_added(item) for item in added)
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root


def _agreement(decision: FindingDecisionItem) -> hd.sr.CodeContentItem:
    agreement = hd.sr.CodeContentItem(
        name=AI_AGREEMENT,
        value=codes.SCT.Yes if decision.decision == "confirmed" else codes.SCT.No,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    described = (
        f"{decision.label} by {decision.model_name} {decision.model_version}"
        + (f", score {decision.score:.3f}" if decision.score is not None else "")
        + (", critical" if decision.critical else "")
        + f": {decision.decision} by the radiologist"
    )
    agreement.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.DCM.Finding,
                value=described,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
            )
        ]
    )
    return agreement


def _added(item: AddedFindingItem) -> hd.sr.TextContentItem:
    source = item.image
    remark = hd.sr.TextContentItem(
        name=ADDED_FINDING,
        value=item.label,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    region = item.region
    scoord = None
    if {"x", "y", "width", "height"} <= set(region):
        x, y = float(region["x"]), float(region["y"])
        w, h = float(region["width"]), float(region["height"])
        outline = np.array(
            [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]], dtype=np.float32
        )
        scoord = hd.sr.ScoordContentItem(
            name=codes.DCM.ImageRegion,
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=outline,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
        )
    image = hd.sr.ImageContentItem(
        name=codes.DCM.SourceImageForSegmentation,
        referenced_sop_class_uid=str(source.SOPClassUID),
        referenced_sop_instance_uid=str(source.SOPInstanceUID),
        relationship_type=hd.sr.RelationshipTypeValues.SELECTED_FROM,
    )
    if scoord is not None:
        scoord.ContentSequence = hd.sr.ContentSequence([image])
        remark.ContentSequence = hd.sr.ContentSequence([scoord])
    else:
        image.RelationshipType = hd.sr.RelationshipTypeValues.HAS_PROPERTIES.value
        remark.ContentSequence = hd.sr.ContentSequence([image])
    return remark
