"""Writing a model's result back to the image archive: a DICOM SEG (when the model flags the study
and outlines a lesion) and a TID 1500 SR, new series of the study, marked AI-generated and
unverified."""

from __future__ import annotations

from typing import Any

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO

from core.archive import ArchiveError, ImageArchive
from imaging.seg import HEMORRHAGE, AlgorithmIdentity, write_segmentation
from imaging.sr import Finding, score_statement, write_measurement_report
from models.card import ModelCard
from serving.exceptions import PlatformUnavailableError
from serving.inference import ModelOutput
from serving.triage.selection import SeriesData

__all__ = ["write_back"]


def write_back(
    archive: ImageArchive,
    series: SeriesData,
    output: ModelOutput,
    *,
    name: str,
    version: str,
    card: ModelCard,
) -> dict[str, Any]:
    """Store a SEG (when the study is flagged critical and a lesion outlined) and an SR in the
    archive; return the result's findings.

    Parameters
    ----------
    archive
        The image archive.
    series
        The series the model ran on (the SEG and SR reference its instances).
    output
        The interpreted model output.
    name, version, card
        The model that produced ``output``.

    Returns
    -------
    dict
        The result row's ``findings``: the series, threshold, the SEG's and SR's UIDs, and for a
        lesion its volume and slices.

    Raises
    ------
    PlatformUnavailableError
        The archive refused or did not answer.
    """
    algorithm = AlgorithmIdentity(
        name=name, version=version, parameters={"threshold": f"{output.threshold:.4f}"}
    )
    findings: dict[str, Any] = {
        "series_instance_uid": series.uid,
        "threshold": output.threshold,
        "calibrated": output.calibrated,
        "raw_score": output.raw_score,
    }
    statement = score_statement(output.score, output.threshold, output.calibrated)
    segmentation = None
    report: list[Finding] = []
    if output.mask is not None and output.lesion_voxels > 0 and output.critical:
        # the overlay shows what the AI flags: below the threshold the SR keeps the score and
        # no outline, so a head the model reads as normal shows no scattered voxels
        segmentation = write_segmentation(series.datasets, output.mask, [HEMORRHAGE], algorithm)
        findings["seg_sop_instance_uid"] = str(segmentation.SOPInstanceUID)
        findings["seg_series_instance_uid"] = str(segmentation.SeriesInstanceUID)
        findings["lesion_volume_ml"] = output.lesion_volume_ml
        slices = np.flatnonzero(output.mask.reshape(output.mask.shape[0], -1).any(axis=1))
        findings["lesion_slices"] = [int(s) for s in slices]
        report.append(
            Finding(
                label=HEMORRHAGE.label,
                segment_number=1,
                score=output.score,
                critical=output.critical,
                volume_mm3=(output.lesion_volume_ml or 0.0) * 1000.0,
                text=statement,
            )
        )
    elif output.critical:
        report.append(
            Finding(
                label=card.outputs.channel_def.get(0, "finding"),
                score=output.score,
                critical=True,
                text=statement,
            )
        )
    sr = write_measurement_report(
        series.datasets, segmentation, report, algorithm, study_level_score=output.score
    )
    findings["sr_sop_instance_uid"] = str(sr.SOPInstanceUID)
    for dataset in (segmentation, sr):
        if dataset is not None:
            _store_instance(archive, dataset)
    return findings


def _store_instance(archive: ImageArchive, dataset: Dataset) -> None:
    buffer = DicomBytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    try:
        archive.store_instance(buffer.getvalue())
    except ArchiveError as exc:
        raise PlatformUnavailableError(f"the image archive refused the AI result: {exc}") from exc
