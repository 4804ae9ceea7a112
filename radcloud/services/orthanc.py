"""Orthanc, radcloud's DICOM store: its configuration, its component, and the REST client.

The configuration is locked down for an internal service: HTTP needs a password
(``AuthenticationEnabled``, the generated ``orthanc_password``) and only answers loopback
clients (``RemoteAccessAllowed: false``; Orthanc 1.10 has no bind-address option); DICOM
accepts associations only from the modalities configured here, checked by calling AE title and
host; with no modality configured (radcloud configures none: everything arrives through the
gateway, which stores over REST), Orthanc's DICOM server is off and its port closed. The file
holds the password, so it is written with mode 0600.

Everything in radcloud reaches Orthanc through the archive seam (:mod:`core.archive`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from core.archive.orthanc import orthanc_healthy
from core.config import OrthancIndex, Settings, validate_ae_title
from core.exceptions import ConfigError, DependencyMissingError
from core.files import private_directory
from core.secrets import Secrets
from radcloud.services.supervisor import Component

if TYPE_CHECKING:
    pass

__all__ = [
    "DICOMWEB_PLUGIN",
    "POSTGRESQL_PLUGIN",
    "DicomModality",
    "check_orthanc_installed",
    "orthanc_component",
    "orthanc_config",
    "write_orthanc_config",
]

logger = logging.getLogger(__name__)

DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"
POSTGRESQL_PLUGIN = "libOrthancPostgreSQLIndex.so"
ORTHANC_INSTALL = "apt-get install -y orthanc orthanc-dicomweb"
POSTGRESQL_INSTALL = "apt-get install -y orthanc-postgresql"
_URL_SETTING = "RADCLOUD_ORTHANC_POSTGRESQL_URL"


@dataclass(frozen=True)
class DicomModality:
    """A DICOM peer Orthanc accepts associations from (Orthanc's ``DicomModalities`` entry).

    Parameters
    ----------
    ae_title
        The peer's AE title (PS3.5 6.2); with ``DicomCheckCalledAet`` and
        ``DicomCheckModalityHost`` on, the calling AE title and host must both match.
    host, port
        Where the peer's own SCP listens.
    allow_echo, allow_find, allow_get, allow_move, allow_store
        Which DIMSE services (PS3.4) the peer may request.
    """

    ae_title: str
    host: str
    port: int
    allow_echo: bool = True
    allow_find: bool = True
    allow_get: bool = True
    allow_move: bool = True
    allow_store: bool = True

    def __post_init__(self) -> None:
        validate_ae_title(self.ae_title)
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} of modality {self.ae_title!r}: expected 1-65535")

    def to_orthanc(self) -> dict[str, Any]:
        """The entry's value in Orthanc's configuration."""
        return {
            "AET": self.ae_title,
            "Host": self.host,
            "Port": self.port,
            "AllowEcho": self.allow_echo,
            "AllowFind": self.allow_find,
            "AllowGet": self.allow_get,
            "AllowMove": self.allow_move,
            "AllowStore": self.allow_store,
        }


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _postgresql_section(url: str) -> dict[str, Any]:
    """Orthanc PostgreSQL plugin settings from ``postgresql://user:password@host:port/db``."""
    expected = "a URL postgresql://user:password@host:port/database"
    parts = urlsplit(url)
    if parts.scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise ConfigError(_URL_SETTING, _redact(url), expected)
    try:
        port = parts.port or 5432
    except ValueError as exc:
        raise ConfigError(_URL_SETTING, _redact(url), expected) from exc
    database = unquote(parts.path.lstrip("/"))
    if not database or not parts.username:
        raise ConfigError(_URL_SETTING, _redact(url), f"{expected} (user and database needed)")
    return {
        "EnableIndex": True,
        "EnableStorage": False,
        "Host": parts.hostname or "localhost",
        "Port": port,
        "Database": database,
        "Username": unquote(parts.username),
        "Password": unquote(parts.password or ""),
    }


def orthanc_config(
    settings: Settings,
    secrets: Secrets,
    modalities: Mapping[str, DicomModality] | None = None,
) -> dict[str, Any]:
    """Orthanc's configuration for this radcloud instance (a pure function).

    Parameters
    ----------
    settings
        Ports, AE title, plugin directory and index database.
    secrets
        The Orthanc user and password that the REST API will demand.
    modalities
        DICOM peers allowed to connect, by symbolic name (empty by default).

    Returns
    -------
    dict[str, Any]
        The JSON document Orthanc reads (Orthanc 1.10 option names).

    Raises
    ------
    ConfigError
        When ``orthanc_index`` is PostgreSQL and the URL cannot be parsed.
    """
    storage = str(settings.paths.orthanc_storage)
    plugins = [str(settings.orthanc_plugins_dir / DICOMWEB_PLUGIN)]
    config: dict[str, Any] = {
        "Name": "radcloud",
        "StorageDirectory": storage,
        "IndexDirectory": storage,
        "Plugins": plugins,
        # HTTP: loopback clients only, always with a password
        "HttpServerEnabled": True,
        "HttpPort": settings.orthanc_http_port,
        "RemoteAccessAllowed": False,
        # Bounded finds for every client (REST, DICOMweb QIDO, C-FIND): at most this many
        # candidates are examined; radcloud's own searches ask for one more and refuse a
        # broader one (core/archive, serving/api/_qido.py).
        "LimitFindResults": settings.archive_max_find_results,
        "LimitFindInstances": settings.archive_max_find_results,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {secrets.orthanc_user: secrets.orthanc_password},
        "HttpDescribeErrors": True,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "ExecuteLuaEnabled": False,
        "MetricsEnabled": True,
        # DICOM: off unless modalities are configured; then only they, by AE title and host
        "DicomServerEnabled": bool(modalities),
        "DicomAet": settings.orthanc_ae_title,
        "DicomPort": settings.orthanc_dicom_port,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomModalities": {
            name: modality.to_orthanc() for name, modality in (modalities or {}).items()
        },
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
        # Storage and jobs
        "StableAge": 60,
        "OverwriteInstances": False,
        "SyncStorageArea": True,
        "DeidentifyLogs": True,
        "ConcurrentJobs": 2,
        "SaveJobs": True,
    }
    if settings.orthanc_index is OrthancIndex.POSTGRESQL:
        if not settings.orthanc_postgresql_url:  # the settings validator already demands it
            raise ConfigError(_URL_SETTING, None, "a URL when RADCLOUD_ORTHANC_INDEX=postgresql")
        plugins.append(str(settings.orthanc_plugins_dir / POSTGRESQL_PLUGIN))
        config["PostgreSQL"] = _postgresql_section(settings.orthanc_postgresql_url)
    return config


def write_orthanc_config(
    settings: Settings,
    secrets: Secrets,
    modalities: Mapping[str, DicomModality] | None = None,
) -> Path:
    """Write :func:`orthanc_config` to ``settings.paths.orthanc_config`` with mode 0600.

    The file is replaced atomically; the parameters are :func:`orthanc_config`'s.

    Returns
    -------
    Path
        The configuration file.
    """
    path = settings.paths.orthanc_config
    private_directory(path.parent)
    text = json.dumps(orthanc_config(settings, secrets, modalities), indent=2, sort_keys=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    tmp.chmod(0o600)  # O_CREAT's mode does not apply when a leftover file was reused
    tmp.replace(path)
    logger.debug("wrote Orthanc configuration %s", path)
    return path


def check_orthanc_installed(settings: Settings) -> str:
    """Check that Orthanc and the plugins the configuration loads are installed.

    Parameters
    ----------
    settings
        ``orthanc_executable``, ``orthanc_plugins_dir`` and ``orthanc_index`` are used.

    Returns
    -------
    str
        The path of the Orthanc executable.

    Raises
    ------
    DependencyMissingError
        Naming the missing program or plugin and the command that installs it.
    """
    executable = shutil.which(settings.orthanc_executable)
    if executable is None:
        raise DependencyMissingError("Orthanc", ORTHANC_INSTALL)
    dicomweb = settings.orthanc_plugins_dir / DICOMWEB_PLUGIN
    if not dicomweb.is_file():
        raise DependencyMissingError(
            f"the Orthanc DICOMweb plugin ({dicomweb})", "apt-get install -y orthanc-dicomweb"
        )
    if settings.orthanc_index is OrthancIndex.POSTGRESQL:
        postgresql = settings.orthanc_plugins_dir / POSTGRESQL_PLUGIN
        if not postgresql.is_file():
            raise DependencyMissingError(
                f"the Orthanc PostgreSQL plugin ({postgresql})", POSTGRESQL_INSTALL
            )
    return executable


def _prepare(
    settings: Settings, secrets: Secrets, modalities: Mapping[str, DicomModality] | None
) -> None:
    check_orthanc_installed(settings)
    write_orthanc_config(settings, secrets, modalities)


def orthanc_component(
    settings: Settings,
    secrets: Secrets,
    modalities: Mapping[str, DicomModality] | None = None,
) -> Component:
    """Orthanc as a supervised component.

    Before it is spawned, the installation is checked (:func:`check_orthanc_installed`) and the
    configuration written. It runs with ``TCP_NODELAY=1``, which DCMTK honours: without it
    Nagle's algorithm and delayed ACKs cost about 40 ms per DIMSE message.

    Parameters
    ----------
    settings, secrets
        The instance's settings and credentials.
    modalities
        DICOM peers allowed to connect (see :func:`orthanc_config`).

    Returns
    -------
    Component
        Named ``orthanc``, healthy when :func:`orthanc_healthy`.
    """
    executable = shutil.which(settings.orthanc_executable) or settings.orthanc_executable
    return Component.create(
        settings,
        name="orthanc",
        argv=[executable, str(settings.paths.orthanc_config)],
        env={"TCP_NODELAY": "1"},
        ports=[
            (settings.orthanc_http_port, "RADCLOUD_ORTHANC_HTTP_PORT"),
            (settings.orthanc_dicom_port, "RADCLOUD_ORTHANC_DICOM_PORT"),
        ],
        health=functools.partial(orthanc_healthy, settings, secrets),
        url=settings.orthanc_url,
        prepare=functools.partial(_prepare, settings, secrets, modalities),
    )
