"""The components radcloud runs, in start order: Orthanc, then the HTTP API.

A new component (the DICOM gateway, Ray Serve) is one more entry in :func:`components`.
"""

from __future__ import annotations

import functools
import sys

from radcloud.config import ENV_PREFIX, Settings
from radcloud.secrets import Secrets
from radcloud.services.orthanc import orthanc_component
from radcloud.services.supervisor import Component, http_ok

__all__ = ["api_component", "components", "settings_env"]


def settings_env(settings: Settings) -> dict[str, str]:
    """``RADCLOUD_*`` variables that reproduce ``settings`` in a child process.

    Values given as keyword overrides or in a TOML file the child cannot see would otherwise
    differ between the supervisor and the process it starts (the port it health-checks above
    all). Secret fields (those hidden from ``repr``) and unset fields are left out; the child
    reads those from the environment or the TOML file as the parent did.
    """
    env: dict[str, str] = {}
    for name, info in type(settings).model_fields.items():
        value = getattr(settings, name)
        if value is None or not info.repr:
            continue
        env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
    env[f"{ENV_PREFIX}HOME"] = str(settings.home.absolute())
    return env


def api_component(settings: Settings) -> Component:
    """radcloud's HTTP API (``python -m serving.api``, uvicorn on ``bind_host:api_port``).

    Parameters
    ----------
    settings
        The instance's settings, passed to the process as ``RADCLOUD_*`` variables.

    Returns
    -------
    Component
        Named ``api``, healthy when ``GET /healthz`` answers 200.
    """
    return Component.create(
        settings,
        name="api",
        argv=[sys.executable, "-m", "serving.api"],
        env=settings_env(settings),
        ports=[(settings.api_port, f"{ENV_PREFIX}API_PORT")],
        health=functools.partial(http_ok, f"{settings.api_url}/healthz"),
        url=settings.api_url,
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
        Orthanc, then the HTTP API.
    """
    return [
        orthanc_component(settings, secrets),
        api_component(settings),
    ]
