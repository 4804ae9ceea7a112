"""AI findings as a TID 1500 Measurement Report in a Comprehensive 3D SR, and back.

Layout (PS3.16 TID 1500), per IHE AI Results (AIR):

* observation context: the algorithm as a device observer (TID 1004: DeviceObserverUID,
  DeviceObserverName = model name, manufacturer "radcloud", model name and version);
* one measurement group per finding: TID 1411 (volumetric ROI) referencing its SEG
  segment, TID 1410 (planar ROI) for a 2D image, or TID 1501 without a segment, with the
  segment's tracking ID/UID, the finding type, the algorithm (TID 4019), the lesion
  volume in mm3 (or area in mm2), the score, a critical flag as a qualitative evaluation
  and the finding's text;
* a study-level group (TID 1501, tracking ID "study") with the study-level score;
* report-level qualitative evaluations (row 12, (C0034375, UMLS, "Qualitative
  Evaluations")) holding the notice "AI-generated, not verified by a radiologist".

The document is UNVERIFIED and PRELIMINARY: no radiologist has signed it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from imaging.seg import AI_RESULT_NOTICE, MANUFACTURER, AlgorithmIdentity, check_conformance

__all__ = [
    "CRITICAL_FINDING",
    "Finding",
    "read_findings",
    "score_statement",
    "write_measurement_report",
]

logger = logging.getLogger(__name__)

QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
LEVEL_OF_SIGNIFICANCE = codes.DCM.LevelOfSignificance  # (121403, DCM)
CRITICAL_FINDING = codes.RADLEX.ACRCategory1ActionableFinding  # RID49480
"""Value of "Level of Significance" for a critical finding: ACR category 1 (act now)."""
SCORE = codes.SCT.Score  # (246262008, SCT, "Score (attribute)")
STUDY_TRACKING_ID = "study"
_PROCEDURES = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "DX": codes.LN.XRUnspecifiedBodyRegion,
    "CR": codes.LN.XRUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
    "NM": codes.LN.NMUnspecifiedBodyRegion,
}


@dataclass(frozen=True)
class Finding:
    """One AI finding to report.

    Parameters
    ----------
    label
        What was found, e.g. ``"Hemorrhage"`` (the tracking ID when there is no segment).
    segment_number
        The SEG segment outlining it, if any.
    score
        The model's score for it (unitless): the calibrated probability of the finding when
        the model calibrates its score, else its raw score (see :func:`score_statement`).
    critical
        Whether it needs communicating at once (ACR actionable finding category 1).
    volume_mm3
        Lesion volume in mm3 (3D images).
    area_mm2
        Lesion area in mm2 (2D images).
    text
        Free-text remark.
    finding_type
        Coded finding; by default the segment's SegmentedPropertyType.
    """

    label: str
    segment_number: int | None = None
    score: float | None = None
    critical: bool = False
    volume_mm3: float | None = None
    area_mm2: float | None = None
    text: str | None = None
    finding_type: Code | None = None


def score_statement(score: float, threshold: float | None, calibrated: bool) -> str:
    """An AI score in the words a reader sees everywhere (SR text, worklist, viewer).

    ``"AI probability 0.87 (threshold 0.42)"`` when the score is a calibrated probability of
    the finding, else ``"AI score 0.87 (threshold 0.42)"``; without a threshold, no bracket.
    """
    what = "AI probability" if calibrated else "AI score"
    limit = f" (threshold {threshold:.2f})" if threshold is not None else ""
    return f"{what} {score:.2f}{limit}"


def write_measurement_report(
    source_datasets: Sequence[Dataset],
    segmentation: hd.seg.Segmentation | None,
    findings: Sequence[Finding],
    algorithm: AlgorithmIdentity,
    *,
    study_level_score: float | None,
    series_number: int = 902,
    series_description: str | None = None,
    instance_number: int = 1,
) -> hd.sr.Comprehensive3DSR:
    """Write findings as a TID 1500 Measurement Report (Comprehensive 3D SR).

    Parameters
    ----------
    source_datasets
        The source series' instances (headers suffice); the first gives patient and study.
    segmentation
        The SEG written for these findings (see :func:`imaging.seg.write_segmentation`),
        or ``None`` when no finding has a segment.
    findings
        The findings, one measurement group each.
    algorithm
        The algorithm that produced them.
    study_level_score
        Score for the whole study (the calibrated probability of any finding when the model
        calibrates its score), or ``None``.
    series_number
        SeriesNumber of the new SR series.
    series_description
        SeriesDescription; by default the algorithm, version and "AI report".
    instance_number
        InstanceNumber of the SR.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        UNVERIFIED, PRELIMINARY, COMPLETE; write it with
        ``dcmwrite(path, sr, enforce_file_format=True)``.

    Raises
    ------
    ValueError
        A finding refers to a segment without a ``segmentation``, or to a segment the
        SEG does not have; no findings and no study-level score.
    ConformanceError
        If the result breaks the standard (a bug worth reporting).
    """
    if not findings and study_level_score is None:
        raise ValueError("nothing to report: expected findings or a study-level score")
    source = source_datasets[0]
    groups: list[Any] = [_finding_group(f, segmentation, algorithm, source) for f in findings]
    if study_level_score is not None:
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(), identifier=STUDY_TRACKING_ID
                ),
                algorithm_id=algorithm.sr_identification(),
                measurements=[_measurement(SCORE, study_level_score, "1")],
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=algorithm.device_observer_uid,
            name=algorithm.name,
            manufacturer_name=MANUFACTURER,
            model_name=f"{algorithm.name} {algorithm.version}",
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURES.get(str(source.get("Modality")), codes.SCT.ImagingProcedure),
        imaging_measurements=groups,
    )
    notice = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    notice.ContentSequence = hd.sr.ContentSequence([_text(AI_RESULT_NOTICE)])
    report[0].ContentSequence.append(notice)

    evidence = [*source_datasets, *([segmentation] if segmentation is not None else [])]
    description = series_description or f"{algorithm.name} {algorithm.version} AI report"
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=description[:64],
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
    )
    check_conformance(sr)
    logger.info("SR %s: %d findings", sr.SOPInstanceUID, len(findings))
    return sr


def _finding_group(
    finding: Finding,
    segmentation: hd.seg.Segmentation | None,
    algorithm: AlgorithmIdentity,
    source: Dataset,
) -> Any:
    """The measurement group (TID 1411, 1410 or 1501) of one finding.

    Segment references are built from the SEG's own attributes (highdicom's
    ``from_segmentation`` helpers expect SegmentIdentificationSequence per frame, which
    highdicom itself writes in the shared groups for a single segment).
    """
    measurements = []
    if finding.volume_mm3 is not None:
        measurements.append(_measurement(codes.SCT.Volume, finding.volume_mm3, "mm3"))
    if finding.area_mm2 is not None:
        measurements.append(_measurement(codes.SCT.Area, finding.area_mm2, "mm2"))
    if finding.score is not None:
        measurements.append(_measurement(SCORE, finding.score, "1"))
    evaluations = (
        [hd.sr.QualitativeEvaluation(LEVEL_OF_SIGNIFICANCE, CRITICAL_FINDING)]
        if finding.critical
        else None
    )
    common: dict[str, Any] = {
        "algorithm_id": algorithm.sr_identification(),
        "measurements": measurements or None,
        "qualitative_evaluations": evaluations,
    }
    if finding.segment_number is None:
        group: Any = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(), identifier=finding.label
            ),
            finding_type=finding.finding_type,
            **common,
        )
    else:
        segmentation, segment = _segment(segmentation, finding.segment_number)
        tracking = hd.sr.TrackingIdentifier(
            uid=str(segment.get("TrackingUID") or generate_uid()),
            identifier=str(segment.get("TrackingID") or finding.label),
        )
        common["finding_type"] = finding.finding_type or hd.sr.CodedConcept.from_dataset(
            segment.SegmentedPropertyTypeCodeSequence[0]
        )
        common["finding_category"] = hd.sr.CodedConcept.from_dataset(
            segment.SegmentedPropertyCategoryCodeSequence[0]
        )
        frames = _segment_frames(segmentation, finding.segment_number)
        if finding.area_mm2 is not None and finding.volume_mm3 is None and len(frames) == 1:
            group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_segment=hd.sr.ReferencedSegmentationFrame(
                    sop_class_uid=segmentation.SOPClassUID,
                    sop_instance_uid=segmentation.SOPInstanceUID,
                    frame_number=frames,
                    segment_number=finding.segment_number,
                    source_image=hd.sr.SourceImageForSegmentation(
                        referenced_sop_class_uid=source.SOPClassUID,
                        referenced_sop_instance_uid=source.SOPInstanceUID,
                    ),
                ),
                **common,
            )
        else:
            group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=segmentation.SOPClassUID,
                    sop_instance_uid=segmentation.SOPInstanceUID,
                    segment_number=finding.segment_number,
                    source_series=hd.sr.SourceSeriesForSegmentation(str(source.SeriesInstanceUID)),
                ),
                **common,
            )
        _drop_frame_number_beside_segment_number(group)
    if finding.text:
        group[0].ContentSequence.append(_text(finding.text))
    return group


def _drop_frame_number_beside_segment_number(group: Any) -> None:
    """Keep only the segment number in a "Referenced Segmentation Frame" reference.

    highdicom writes both ReferencedFrameNumber and ReferencedSegmentNumber there; the
    Image SOP Instance Reference Macro (PS3.3 C.17.3.3, Table 10-3) requires each only
    when the other is absent, and dcmtk warns on both. The segment has exactly one frame
    here, so the segment number identifies it and stays the link viewers follow.
    """
    for item in group[0].ContentSequence:
        name = item.ConceptNameCodeSequence[0]
        if item.ValueType == "IMAGE" and name.CodeValue == "121214":
            reference = item.ReferencedSOPSequence[0]
            if "ReferencedFrameNumber" in reference:
                del reference.ReferencedFrameNumber


def _segment(
    segmentation: hd.seg.Segmentation | None, number: int
) -> tuple[hd.seg.Segmentation, Dataset]:
    if segmentation is None:
        raise ValueError(f"finding refers to segment {number} but no segmentation was given")
    for item in segmentation.SegmentSequence:
        if int(item.SegmentNumber) == number:
            return segmentation, item
    available = [int(item.SegmentNumber) for item in segmentation.SegmentSequence]
    raise ValueError(f"segment {number} is not in the SEG: expected one of {available}")


def _segment_frames(segmentation: Dataset, number: int) -> list[int]:
    """1-based SEG frame numbers holding segment ``number`` (per-frame or shared groups)."""
    shared = (segmentation.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    frames = []
    for index, item in enumerate(segmentation.PerFrameFunctionalGroupsSequence, start=1):
        identification = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        if identification and int(identification[0].ReferencedSegmentNumber) == number:
            frames.append(index)
    return frames


def _measurement(name: Code, value: float, unit: str) -> hd.sr.Measurement:
    """A TID 300 measurement; the algorithm is identified once, on its group."""
    units = {
        "mm3": codes.UCUM.CubicMillimeter,
        "mm2": codes.UCUM.SquareMillimeter,
        "1": codes.UCUM.NoUnits,
    }
    return hd.sr.Measurement(name=name, value=float(value), unit=units[unit])


def _text(value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=codes.DCM.Comment,
        value=value,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


def read_findings(sr_dataset: Dataset) -> list[dict[str, Any]]:
    """The measurement groups of a TID 1500 report, as plain dictionaries.

    Parameters
    ----------
    sr_dataset
        A Measurement Report SR (as written by :func:`write_measurement_report`, or any
        TID 1500 document).

    Returns
    -------
    list of dict
        Per group, in document order: ``tracking_id``, ``tracking_uid``, ``finding``
        (code meaning), ``algorithm_name``, ``algorithm_version``, ``volume_mm3``,
        ``area_mm2``, ``score``, ``critical`` (bool), ``text`` (list of str),
        ``segment_number`` and ``segmentation_sop_instance_uid`` (or ``None``), and
        ``measurements``: every numeric measurement as ``{meaning: (value, unit)}``.
    """
    findings = []
    for container in _items(sr_dataset, "126010"):  # Imaging Measurements
        for group in _items(container, "125007"):  # Measurement Group
            findings.append(_read_group(group))
    return findings


def _items(parent: Dataset, code_value: str) -> list[Dataset]:
    return [
        item
        for item in parent.get("ContentSequence") or []
        if item.get("ConceptNameCodeSequence")
        and item.ConceptNameCodeSequence[0].CodeValue == code_value
    ]


_SEGMENT_REFERENCES = (
    ("121191", "DCM"),  # Referenced Segment (TID 1411)
    ("121214", "DCM"),  # Referenced Segmentation Frame (TID 1410)
)


def _read_group(group: Dataset) -> dict[str, Any]:
    found: dict[str, Any] = {
        "tracking_id": None,
        "tracking_uid": None,
        "finding": None,
        "algorithm_name": None,
        "algorithm_version": None,
        "volume_mm3": None,
        "area_mm2": None,
        "score": None,
        "critical": False,
        "text": [],
        "segment_number": None,
        "segmentation_sop_instance_uid": None,
        "measurements": {},
    }
    for item in group.get("ContentSequence") or []:
        name = item.ConceptNameCodeSequence[0] if item.get("ConceptNameCodeSequence") else None
        code = (str(name.CodeValue), str(name.CodingSchemeDesignator)) if name else ("", "")
        kind = item.ValueType
        if kind == "TEXT" and code == ("112039", "DCM"):
            found["tracking_id"] = str(item.TextValue)
        elif kind == "UIDREF" and code == ("112040", "DCM"):
            found["tracking_uid"] = str(item.UID)
        elif kind == "CODE" and code == ("121071", "DCM"):
            found["finding"] = str(item.ConceptCodeSequence[0].CodeMeaning)
        elif kind == "TEXT" and code == ("121106", "DCM"):
            found["text"].append(str(item.TextValue))
        elif kind == "CODE" and code == (LEVEL_OF_SIGNIFICANCE.value, "DCM"):
            value = item.ConceptCodeSequence[0]
            found["critical"] |= str(value.CodeValue) == CRITICAL_FINDING.value
        elif kind == "IMAGE" and code in _SEGMENT_REFERENCES:
            reference = item.ReferencedSOPSequence[0]
            found["segmentation_sop_instance_uid"] = str(reference.ReferencedSOPInstanceUID)
            number = reference.get("ReferencedSegmentNumber")
            found["segment_number"] = int(number if isinstance(number, int) else number[0])
        elif kind == "NUM" and name is not None:
            _read_measurement(item, name, found)
        _read_algorithm(item, code, found)
    return found


def _read_measurement(item: Dataset, name: Dataset, found: dict[str, Any]) -> None:
    value_item = item.MeasuredValueSequence[0]
    value = float(value_item.NumericValue)
    unit = str(value_item.MeasurementUnitsCodeSequence[0].CodeValue)
    found["measurements"][str(name.CodeMeaning)] = (value, unit)
    key = {
        (codes.SCT.Volume.value, "mm3"): "volume_mm3",
        (codes.SCT.Area.value, "mm2"): "area_mm2",
        (SCORE.value, "1"): "score",
    }.get((str(name.CodeValue), unit))
    if key:
        found[key] = value
    for child in item.get("ContentSequence") or []:
        child_name = child.ConceptNameCodeSequence[0]
        _read_algorithm(
            child, (str(child_name.CodeValue), str(child_name.CodingSchemeDesignator)), found
        )


def _read_algorithm(item: Dataset, code: tuple[str, str], found: dict[str, Any]) -> None:
    if item.ValueType == "TEXT" and code == ("111001", "DCM") and not found["algorithm_name"]:
        found["algorithm_name"] = str(item.TextValue)
    elif item.ValueType == "TEXT" and code == ("111003", "DCM"):
        found["algorithm_version"] = found["algorithm_version"] or str(item.TextValue)
