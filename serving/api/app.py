"""The radcloud HTTP API (FastAPI).

``radcloud up`` runs it as the Ray Serve ingress (``serving.application``), where it also reaches
the model deployments (``/api/infer``); ``python -m serving.api`` runs it alone under uvicorn
(development: no models). Every route except ``/healthz`` requires a credential and declares the
roles it admits (``serving.api.security.require_roles``). Request bodies have a budget per
route class, enforced before routing and authentication (:mod:`serving._body_limit`).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from core import __version__
from core.config import Settings, load_settings
from core.security import Principal
from serving._body_limit import BodyLimitMiddleware, BodyLimits
from serving.api._headers import SecurityHeadersMiddleware
from serving.api.context import ApiContext
from serving.api.errors import install_error_handlers
from serving.api.routes import (
    admin,
    auth,
    cohorts,
    dicomweb,
    federated,
    federated_wado,
    health,
    identity,
    infer,
    metrics,
    models,
    reading,
    stow,
    studies,
    web,
    worklist,
)
from serving.api.security import require_roles

__all__ = ["create_app"]


async def _model_stats() -> dict[str, Any]:
    source = importlib.import_module("serving.api.context").SERVING_LINKS.model_stats
    return await source() if source is not None else {}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API application.

    Parameters
    ----------
    settings
        Settings to use; loaded from the environment when ``None``.
    """
    resolved = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ctx = ApiContext.from_settings(resolved)
        # Filled by the Serve ingress, maybe after this runs; looked up in this process's module
        # (Ray pickles closures by value: a captured reference would be a copy).
        app.state.links = importlib.import_module("serving.api.context").SERVING_LINKS
        app.state.model_stats = _model_stats
        try:
            yield
        finally:
            app.state.ctx.close()

    app = FastAPI(
        title="radcloud API",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind authentication
    )
    # Outermost but for Starlette's error middleware: before routing, authentication and
    # any body parsing (serving/_body_limit.py).
    app.add_middleware(BodyLimitMiddleware, limits=BodyLimits.from_settings(resolved))
    install_error_handlers(app)
    app.add_middleware(SecurityHeadersMiddleware)  # the last added is outermost
    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(identity.router)
    app.include_router(identity.patients_router)
    app.include_router(federated.router)
    app.include_router(federated_wado.router)
    app.include_router(cohorts.router)
    app.include_router(admin.router)
    app.include_router(dicomweb.router)
    app.include_router(stow.router)
    app.include_router(metrics.router)
    app.include_router(worklist.router)
    app.include_router(studies.router)
    app.include_router(reading.router)
    app.include_router(infer.router)
    app.include_router(models.router)
    app.include_router(web.router)

    @app.get("/api/openapi.json", tags=["health"])
    def openapi(_caller: Annotated[Principal, Depends(require_roles())]) -> dict[str, Any]:
        """The OpenAPI description of this API."""
        return app.openapi()

    return app
