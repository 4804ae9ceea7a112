"""Ad hoc inference: a model scores an uploaded DICOM series or NIfTI volume, outside triage.

For ML engineers and radiologists trying a model on a file. The production version of the model
scores it through the same Serve deployment as triage (only production versions are deployed).
The answer holds the score, the critical flag at the card's threshold and, for segmenters, the
lesion volume and the mask as a base64 gzip NIfTI on the input's grid. Nothing is stored; the
call is audited (110100 Application Activity, execute, naming the patient of a DICOM upload by
the keyed hash of its Patient ID; the uploaded data is not recorded).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom

from core.audit import AuditAction, AuditEventCode, AuditTrail
from core.inflation import CorruptCompressedDataError, InflationLimitError, check_part10_inflation
from core.security import Actor
from imaging.exceptions import ImagingError, VolumeTooLargeError
from imaging.nifti import load_nifti_bytes, save_nifti
from imaging.volume import Volume, load_series
from models.registry import ModelRegistry
from serving.exceptions import (
    TooManyVoxelsError,
    UnknownModelError,
    UnreadableImageError,
    UploadTooLargeError,
)
from serving.inference import interpret, prepare

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

__all__ = ["MAX_UPLOAD_BYTES", "AdHocInference", "AdHocResult"]

logger = logging.getLogger(__name__)

#: Default upload budget (``RADCLOUD_API_MAX_INFER_MIB``); deflated DICOM counts inflated.
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
#: Default voxel budget (``RADCLOUD_API_MAX_INFER_VOXELS``), checked before decoding.
MAX_VOXELS = 2**28


@dataclass(frozen=True)
class AdHocResult:
    """One model's answer on an uploaded image."""

    model: str
    version: str
    score: float
    critical: bool
    threshold: float
    lesion_volume_ml: float | None = None
    mask_nifti_gz_base64: str | None = None
    note: str = "AI result: not verified by a radiologist"


class AdHocInference:
    """Scores uploads with the served production models.

    Parameters
    ----------
    registry
        The model registry (the cards of the served versions).
    handles
        The model deployments by model name.
    audit
        The audit trail.
    max_upload_bytes
        The most bytes the uploads may hold together (a deflated DICOM data set inflated).
    max_voxels
        The most voxels of the uploaded volume, read from the NIfTI header or the DICOM image
        attributes before any pixel is decoded.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        handles: Mapping[str, DeploymentHandle[Any]],
        audit: AuditTrail,
        *,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        max_voxels: int = MAX_VOXELS,
    ) -> None:
        self._registry = registry
        self._handles = handles
        self._audit = audit
        self.max_upload_bytes = max_upload_bytes
        self.max_voxels = max_voxels

    def check_served(self, model: str) -> None:
        """Raise :class:`~serving.exceptions.UnknownModelError` unless ``model`` is deployed."""
        if model not in self._handles:
            raise UnknownModelError(model, self._handles)

    def check_size(self, total_bytes: int) -> None:
        """Raise :class:`~serving.exceptions.UploadTooLargeError` above the upload limit."""
        if total_bytes > self.max_upload_bytes:
            raise UploadTooLargeError(self.max_upload_bytes)

    async def run(
        self, model: str, uploads: Sequence[tuple[str, bytes]], *, caller: Actor
    ) -> AdHocResult:
        """Score ``uploads`` (file name, content) with ``model``'s production version.

        Raises
        ------
        UnknownModelError
            No deployment runs ``model``.
        UploadTooLargeError
            The uploads exceed ``max_upload_bytes`` (a deflated DICOM data set, inflated).
        TooManyVoxelsError
            The volume has more than ``max_voxels`` voxels, or a gzip NIfTI inflates beyond
            what its header declares.
        ModelNotFoundError
            ``model`` has no production version in the registry.
        UnreadableImageError
            The uploads are not one DICOM series or one NIfTI volume the model can take.
        """
        self.check_served(model)
        total = sum(len(data) for _, data in uploads)
        self.check_size(total)
        card = self._registry.get(model, "production").card
        try:
            volume, patient_id = await asyncio.to_thread(
                _read_volume, uploads, self.max_upload_bytes, self.max_voxels
            )
            prepared = await asyncio.to_thread(prepare, card, volume)
        except VolumeTooLargeError as exc:
            raise TooManyVoxelsError(exc.reason, self.max_voxels) from exc
        except InflationLimitError as exc:
            raise UploadTooLargeError(self.max_upload_bytes, str(exc)) from exc
        except (ImagingError, ValueError, CorruptCompressedDataError) as exc:
            raise UnreadableImageError(str(exc)) from exc
        handle = self._handles[model].options(multiplexed_model_id=str(card.version))
        logits, served_version = await handle.predict.remote(prepared.array)
        if served_version != str(card.version):  # promoted since the deployment started
            card = self._registry.get(model, served_version).card
        output = await asyncio.to_thread(interpret, card, prepared, logits)
        self._audit.record(
            AuditEventCode.APPLICATION_ACTIVITY,
            actor=caller,
            action=AuditAction.EXECUTE,
            resource_type="model",
            resource_id=f"{model}:{served_version}",
            patient_id=patient_id,
            detail={"what": "ad hoc inference", "files": len(uploads), "bytes": total},
        )
        return AdHocResult(
            model=model,
            version=served_version,
            score=output.score,
            critical=output.critical,
            threshold=output.threshold,
            lesion_volume_ml=output.lesion_volume_ml,
            mask_nifti_gz_base64=(
                await asyncio.to_thread(_mask_nifti, volume, output.mask)
                if output.mask is not None
                else None
            ),
        )


def _read_volume(
    uploads: Sequence[tuple[str, bytes]], max_bytes: int, max_voxels: int
) -> tuple[Volume, str | None]:
    """The uploaded volume and its patient's ID (0010,0020) for the audit record (``None``
    for NIfTI, which names no patient)."""
    names = [name.lower() for name, _ in uploads]
    if len(uploads) == 1 and names[0].endswith((".nii", ".nii.gz")):
        return load_nifti_bytes(uploads[0][1], max_voxels=max_voxels), None
    datasets = []
    voxels = inflated = 0
    for name, data in uploads:
        # Before pydicom inflates it whole; deflated files count inflated, all of them together.
        inflated += check_part10_inflation(data, max_bytes - inflated)
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except Exception as exc:
            raise ImagingError(f"{name} is neither DICOM nor NIfTI: {exc}") from exc
        voxels += _voxels(ds)
        if voxels > max_voxels:
            raise VolumeTooLargeError(
                f"the uploaded instances hold more than {max_voxels} voxels "
                "(RADCLOUD_API_MAX_INFER_VOXELS)",
                voxels=voxels,
                limit=max_voxels,
            )
        datasets.append(ds)
    patient_ids = [str(ds.get("PatientID", "") or "") for ds in datasets]
    return load_series(datasets), next((pid for pid in patient_ids if pid), None)


def _voxels(ds: pydicom.Dataset) -> int:
    """Rows x Columns x frames x samples of an instance, from its attributes (0 without)."""
    try:
        return (
            int(ds.get("Rows", 0) or 0)
            * int(ds.get("Columns", 0) or 0)
            * max(1, int(ds.get("NumberOfFrames", 1) or 1))
            * max(1, int(ds.get("SamplesPerPixel", 1) or 1))
        )
    except (TypeError, ValueError) as exc:
        raise ImagingError(f"image attributes are not numbers: {exc}") from exc


def _mask_nifti(volume: Volume, mask: np.ndarray) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = save_nifti(volume.with_array(mask), Path(tmp) / "mask.nii")
        return base64.b64encode(gzip.compress(path.read_bytes())).decode()
