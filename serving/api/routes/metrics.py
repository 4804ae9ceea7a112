"""Prometheus metrics of serving (role ``admin``; a scraper uses an admin API key).

Scrapes are not written to the audit trail (one every 15 s would drown it; the figures hold no
patient data); refused scrapes are, like every refused request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from core.db.models import Role
from core.security import Principal
from serving.api.security import context, require_roles
from serving.metrics import render_metrics

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"])
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
ModelStats = Callable[[], Awaitable[Mapping[str, Mapping[str, Any]]]]


async def _model_stats(request: Request) -> Mapping[str, Mapping[str, Any]]:
    """The serving layer's per-model statistics, or none when it set no source."""
    source: ModelStats | None = getattr(request.app.state, "model_stats", None)
    if source is None:
        return {}
    try:
        return await source()
    except Exception:  # whatever the model servers raise, the database figures still count
        logger.exception("metrics: model statistics unavailable")
        return {}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request, _admin: Admin) -> Response:
    """Prometheus metrics: queue depth, results, failures, latencies, notifications, models."""
    stats = await _model_stats(request)
    body, content_type = await run_in_threadpool(render_metrics, context(request).db, stats)
    return Response(content=body, media_type=content_type)
