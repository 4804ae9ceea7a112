"""Liveness: the only route that needs no credentials."""

from __future__ import annotations

from fastapi import APIRouter

from core import __version__

router = APIRouter()


@router.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    """Liveness probe: the API process is up (no credentials needed, no data returned)."""
    return {"status": "ok", "version": __version__}
