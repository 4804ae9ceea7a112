"""The components radcloud runs, in start order: its own PostgreSQL where it runs one, Orthanc,
the DICOM gateway, the nodes of its own Ray cluster where it runs one, then Ray Serve
(the HTTP API as its ingress, the model deployments and the triage workers).

A new component is one more entry in :func:`components`.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import httpx
from sqlalchemy.exc import SQLAlchemyError

from core.config import ENV_PREFIX, GatewayEdge, Settings, settings_env
from core.db import Database
from core.events import catch_up_backlog
from core.exceptions import RadcloudError
from core.secrets import Secrets
from radcloud.services.orthanc import orthanc_components
from radcloud.services.postgresql import postgresql_component
from radcloud.services.ray_cluster import ray_components
from radcloud.services.supervisor import Component, http_ok

__all__ = ["api_component", "components", "gateway_component"]


def api_component(settings: Settings) -> Component:
    """Ray Serve (``python -m serving``): the HTTP API as ingress on ``bind_host:api_port``,
    the model deployments and the triage workers.

    Parameters
    ----------
    settings
        The instance's settings, passed to the process as ``RADCLOUD_*`` variables.

    Returns
    -------
    Component
        Named ``api``, healthy when ``GET /healthz`` answers 200 through Serve's proxy.
    """
    return Component.create(
        settings,
        name="api",
        argv=[sys.executable, "-m", "serving"],
        ports=[(settings.api_port, f"{ENV_PREFIX}API_PORT")],
        # a liveness probe on loopback: the certificate names the public host, not 127.0.0.1
        health=functools.partial(
            http_ok, f"{settings.api_url}/healthz", verify=not settings.api_tls_enabled
        ),
        url=settings.api_url,
        env=settings_env(settings) | {"TCP_NODELAY": "1"},
        startup_factor=3.0,  # Ray starts, then every model replica loads and warms up
        details=functools.partial(_api_details, settings),
    )


def _api_details(settings: Settings) -> dict[str, Any] | None:
    """The triage catch-up backlog (serving/promotion.py), from the database."""
    try:
        db = Database.from_settings(settings)
        try:
            backlog = catch_up_backlog(db)
        finally:
            db.dispose()
    except (SQLAlchemyError, RadcloudError):
        return None
    oldest = "" if backlog.oldest_age_s is None else f", oldest {backlog.oldest_age_s:.0f} s"
    return {"catch-up backlog": f"{backlog.pending} studies{oldest}"}


def _gateway_details(health_url: str, stow_url: str | None) -> dict[str, Any] | None:
    try:
        answer = httpx.get(health_url, timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return None
    spool = answer.get("spool", {})
    return {
        "spool": f"{spool.get('files', '?')} instances, {spool.get('bytes', 0) / 1e6:.1f} MB",
        "quarantine": answer.get("quarantine"),
        "associations": answer.get("associations_open"),
        "edge": answer.get("edge"),
        "orthanc": "reachable" if answer.get("orthanc_available") else "UNREACHABLE",
        "stow-rs": f"{stow_url}/studies" if stow_url else "off (RADCLOUD_GATEWAY_STOW_ENABLED)",
    }


def gateway_component(settings: Settings) -> Component:
    """The DICOM gateway (``python -m dicom_gateway``): DIMSE on ``gateway_port`` (unless
    Orthanc is the DICOM edge, ``gateway_edge=orthanc``), health and metrics on
    ``gateway_metrics_port``, the STOW-RS door on ``gateway_stow_port`` (unless
    ``gateway_stow_enabled`` is false; its URL is among the details ``status`` shows).

    Parameters
    ----------
    settings
        The instance's settings, passed to the process as ``RADCLOUD_*`` variables.

    Returns
    -------
    Component
        Named ``gateway``, healthy when ``GET /healthz`` on the metrics port answers 200.
    """
    health_url = settings.gateway_health_url
    ports = [(settings.gateway_metrics_port, f"{ENV_PREFIX}GATEWAY_METRICS_PORT")]
    if settings.gateway_edge is GatewayEdge.PYNETDICOM:
        ports.insert(0, (settings.gateway_port, f"{ENV_PREFIX}GATEWAY_PORT"))
    if settings.gateway_stow_enabled:
        ports.append((settings.gateway_stow_port, f"{ENV_PREFIX}GATEWAY_STOW_PORT"))
    return Component.create(
        settings,
        name="gateway",
        argv=[sys.executable, "-m", "dicom_gateway"],
        env=settings_env(settings) | {"TCP_NODELAY": "1"},
        ports=ports,
        health=functools.partial(http_ok, health_url),
        url=f"dicom://{settings.gateway_ae_title}@{settings.bind_host}:{settings.gateway_port}",
        details=functools.partial(_gateway_details, health_url, settings.gateway_stow_url),
    )


def components(settings: Settings, secrets: Secrets) -> list[Component]:
    """Every component of this radcloud instance, in start order.

    Parameters
    ----------
    settings, secrets
        The instance's settings and credentials.

    Returns
    -------
    list[Component]
        The managed PostgreSQL (``postgresql_managed``), Orthanc (each archive node,
        ``orthanc_nodes``), the DICOM gateway, the Ray nodes (``ray_nodes`` > 1), then the HTTP
        API.
    """
    database = [postgresql_component(settings, secrets)] if settings.postgresql_managed else []
    return [
        *database,
        *orthanc_components(settings, secrets),
        gateway_component(settings),
        *ray_components(settings),
        api_component(settings),
    ]
