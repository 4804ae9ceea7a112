"""Ad hoc inference: ``POST /api/infer/{model}`` with a DICOM series or a NIfTI volume.

For ML engineers and radiologists trying a model on a file outside the triage flow. The upload
is ``multipart/form-data`` with one or more ``file`` parts: the instances of one DICOM series, or
one NIfTI file (``.nii``/``.nii.gz``). The production version of ``model`` scores it through
the same Serve deployment as triage (``?version`` is not offered: only production versions are
deployed). The answer holds the score, the critical flag at the card's threshold and, for
segmenters, the lesion volume and the mask as a base64 gzip NIfTI on the input's grid. Nothing
is stored; the call is audited (the uploaded data is not).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import logging
import tempfile
from pathlib import Path
from typing import Annotated, Any

import pydicom
from fastapi import APIRouter, Depends, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from core.audit import AuditAction, AuditEventCode
from core.db.models import Role
from core.security import Principal
from imaging.exceptions import ImagingError
from imaging.nifti import load_nifti, save_nifti
from imaging.volume import Volume, load_series
from models.registry import ModelRegistry
from serving.api.security import audit_request, context, require_roles
from serving.inference import interpret, prepare

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/infer", tags=["inference"])
Caller = Annotated[
    Principal, Depends(require_roles(Role.RADIOLOGIST, Role.ML_ENGINEER, Role.ADMIN))
]
_MAX_UPLOAD = 512 * 1024 * 1024


class InferenceOut(BaseModel):
    """One model's answer on an uploaded image."""

    model: str
    version: str
    score: float
    critical: bool
    threshold: float
    lesion_volume_ml: float | None = None
    mask_nifti_gz_base64: str | None = None
    note: str = "AI result: not verified by a radiologist"


def _problem(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status)


def _read_volume(uploads: list[tuple[str, bytes]]) -> Volume:
    names = [name.lower() for name, _ in uploads]
    if len(uploads) == 1 and names[0].endswith((".nii", ".nii.gz")):
        suffix = ".nii.gz" if names[0].endswith(".gz") else ".nii"
        with tempfile.NamedTemporaryFile(suffix=suffix) as handle:
            handle.write(uploads[0][1])
            handle.flush()
            return load_nifti(handle.name)
    datasets = []
    for name, data in uploads:
        try:
            datasets.append(pydicom.dcmread(io.BytesIO(data)))
        except Exception as exc:
            raise ImagingError(f"{name} is neither DICOM nor NIfTI: {exc}") from exc
    return load_series(datasets)


def _mask_nifti(volume: Volume, mask: Any) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = save_nifti(volume.with_array(mask), Path(tmp) / "mask.nii")
        return base64.b64encode(gzip.compress(path.read_bytes())).decode()


@router.post("/{model}", response_model=InferenceOut)
async def infer(request: Request, caller: Caller, model: str, file: list[UploadFile]) -> Any:
    """Score an uploaded DICOM series or NIfTI volume with ``model``."""
    links = getattr(request.app.state, "links", None)
    handles = links.model_handles if links is not None else {}
    if model not in handles:
        served = ", ".join(sorted(handles)) or "none"
        return _problem(404, "unknown_model", f'no deployment for "{model}"; served: {served}')
    uploads = []
    total = 0
    for part in file:
        data = await part.read()
        total += len(data)
        if total > _MAX_UPLOAD:
            return _problem(413, "too_large", f"uploads above {_MAX_UPLOAD >> 20} MiB are refused")
        uploads.append((part.filename or "upload", data))
    settings = context(request).settings
    registry = ModelRegistry(settings.paths.models_dir)
    card = registry.get(model, "production").card
    try:
        volume = await asyncio.to_thread(_read_volume, uploads)
        prepared = await asyncio.to_thread(prepare, card, volume)
    except (ImagingError, ValueError) as exc:
        return _problem(422, "unreadable_image", str(exc))
    logits, served_version = await handles[model].predict.remote(prepared.array)
    if served_version != str(card.version):  # promoted since the deployment started
        card = registry.get(model, served_version).card
    output = await asyncio.to_thread(interpret, card, prepared, logits)
    audit_request(
        request,
        AuditEventCode.APPLICATION_ACTIVITY,
        principal=caller,
        action=AuditAction.EXECUTE,
        resource_type="model",
        resource_id=f"{model}:{served_version}",
        detail={"what": "ad hoc inference", "files": len(uploads), "bytes": total},
    )
    return InferenceOut(
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
