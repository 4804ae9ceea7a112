"""Ad hoc inference: ``POST /api/infer/{model}`` with a DICOM series or a NIfTI volume.

The upload is ``multipart/form-data`` with one or more ``file`` parts: the instances of one
DICOM series, or one NIfTI file (``.nii``/``.nii.gz``). Logic and auditing:
:mod:`serving.infer`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, UploadFile

from core.db.models import Role
from core.security import Principal
from models.registry import ModelRegistry
from serving.api.security import context, request_actor, require_roles
from serving.infer import AdHocInference, AdHocResult

__all__ = ["router"]

router = APIRouter(prefix="/api/infer", tags=["inference"])
Scorer = Annotated[
    Principal, Depends(require_roles(Role.RADIOLOGIST, Role.ML_ENGINEER, Role.ADMIN))
]


@router.post("/{model}", response_model=AdHocResult)
async def infer(request: Request, user: Scorer, model: str, file: list[UploadFile]) -> Any:
    """Score an uploaded DICOM series or NIfTI volume with ``model``."""
    links = getattr(request.app.state, "links", None)
    ctx = context(request)
    service = AdHocInference(
        ModelRegistry(ctx.settings.paths.models_dir),
        links.model_handles if links is not None else {},
        ctx.audit,
    )
    service.check_served(model)
    uploads = []
    total = 0
    for part in file:
        data = await part.read()
        total += len(data)
        service.check_size(total)  # stop reading at the limit
        uploads.append((part.filename or "upload", data))
    return await service.run(model, uploads, caller=request_actor(request, user))
