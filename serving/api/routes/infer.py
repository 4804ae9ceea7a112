"""Ad hoc inference: ``POST /api/infer/{model}`` with a DICOM series or a NIfTI volume.

The upload is ``multipart/form-data`` with one or more ``file`` parts: the instances of one
DICOM series, or one NIfTI file (``.nii``/``.nii.gz``). Logic and auditing:
:mod:`serving.infer`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.formparsers import MultiPartException

from core.db.models import Role
from core.security import Principal
from models.registry import ModelRegistry
from serving.api.security import context, request_actor, require_roles
from serving.exceptions import UnreadableImageError
from serving.infer import AdHocInference, AdHocResult

__all__ = ["router"]

router = APIRouter(prefix="/api/infer", tags=["inference"])
Scorer = Annotated[
    Principal, Depends(require_roles(Role.RADIOLOGIST, Role.ML_ENGINEER, Role.ADMIN))
]


_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        },
    }
}
_MAX_FILES = 4096  # instances of one series


@router.post("/{model}", response_model=AdHocResult, openapi_extra=_UPLOAD_SCHEMA)
async def infer(request: Request, user: Scorer, model: str) -> Any:
    """Score an uploaded DICOM series or NIfTI volume with ``model``."""
    # The form is parsed here, after authentication (a declared form parameter would be read
    # before it); the body's size was bounded before routing (serving/_body_limit.py).
    links = getattr(request.app.state, "links", None)
    ctx = context(request)
    service = AdHocInference(
        ModelRegistry(ctx.settings.paths.models_dir),
        links.model_handles if links is not None else {},
        ctx.audit,
        max_upload_bytes=ctx.settings.api_max_infer_mib << 20,
        max_voxels=ctx.settings.api_max_infer_voxels,
    )
    service.check_served(model)
    try:
        form = await request.form(max_files=_MAX_FILES, max_fields=16)
    except MultiPartException as exc:
        raise UnreadableImageError(f"malformed multipart/form-data upload: {exc}") from exc
    uploads = []
    total = 0
    try:
        for part in form.getlist("file"):
            if not isinstance(part, StarletteUpload):
                raise UnreadableImageError('the "file" field must be a file upload')
            data = await part.read()
            total += len(data)
            service.check_size(total)  # stop reading at the limit
            uploads.append((part.filename or "upload", data))
    finally:
        await form.close()
    if not uploads:
        raise UnreadableImageError('the upload holds no "file" part')
    return await service.run(model, uploads, caller=request_actor(request, user))
