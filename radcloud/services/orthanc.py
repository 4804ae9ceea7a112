"""Orthanc, radcloud's DICOM store: its configuration, its component, and the REST client.

The configuration is locked down for an internal service: HTTP needs a password
(``AuthenticationEnabled``, the generated ``orthanc_password``) and only answers loopback
clients (``RemoteAccessAllowed: false``; Orthanc 1.10 has no bind-address option); DICOM
accepts associations only from the modalities configured here, checked by calling AE title and
host; with no modality configured (radcloud configures none: everything arrives through the
gateway, which stores over REST), Orthanc's DICOM server is off and its port closed. The file
holds the password, so it is written with mode 0600.

With ``RADCLOUD_GATEWAY_EDGE=orthanc``, Orthanc's DICOM server is the gateway instead
(:func:`edge_config`): it listens on the gateway's AE title and port, admits radcloud's senders
(its peer table, kept equal to the registry by the plugin, :mod:`dicom_gateway.edge`), and
runs radcloud's policy in the orthanc-python plugin.

With ``RADCLOUD_ORTHANC_NODES`` = N > 1 (``orthanc_index=postgresql`` only) radcloud runs N
Orthanc processes, the archive nodes, as components ``orthanc``, ``orthanc-1``, ...: node k has
its own configuration file (``orthanc.json``, ``orthanc-<k>.json``), listens on
``orthanc_http_port`` + k * ``orthanc_node_port_step`` (10) and, as the DICOM edge with
radcloud's plugin, on ``gateway_port`` + the same (else ``orthanc_dicom_port`` + it); all
share the storage directory and the PostgreSQL index (the plugin's ``Lock`` off,
``DatabaseServerIdentifier`` per node). README "Several archive
nodes" says what Orthanc 1.10 allows there.

Everything in radcloud reaches Orthanc through the archive seam (:mod:`core.archive`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from core.archive.orthanc import orthanc_healthy
from core.archive.orthanc_peers import DicomModality
from core.config import (
    ENV_PREFIX,
    MANAGED_DATABASE,
    ORTHANC_DATABASE,
    GatewayEdge,
    OrthancIndex,
    Settings,
    settings_env,
)
from core.exceptions import ConfigError, DependencyMissingError
from core.files import private_directory
from core.secrets import Secrets
from dicom_gateway.edge import PLUGIN_SCRIPT
from radcloud.services.supervisor import Component

if TYPE_CHECKING:
    pass

__all__ = [
    "DICOMWEB_PLUGIN",
    "POSTGRESQL_PLUGIN",
    "PYTHON_PLUGIN",
    "DicomModality",
    "check_orthanc_installed",
    "orthanc_component",
    "orthanc_components",
    "orthanc_config",
    "orthanc_config_path",
    "write_orthanc_config",
]

logger = logging.getLogger(__name__)

DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"
POSTGRESQL_PLUGIN = "libOrthancPostgreSQLIndex.so"
ORTHANC_INSTALL = "apt-get install -y orthanc orthanc-dicomweb"
POSTGRESQL_INSTALL = "apt-get install -y orthanc-postgresql"
PYTHON_PLUGIN = "libOrthancPython.so"
PYTHON_INSTALL = "apt-get install -y orthanc-python"
# Orthanc accepts PDUs of 4096-131072 bytes; the largest means the fewest PDUs, reads and
# writes per instance (a 512x512 CT slice is 4 PDUs instead of 32 at the default 16384).
_MAX_PDU_BYTES = 131072
_URL_SETTING = "RADCLOUD_ORTHANC_POSTGRESQL_URL"


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


def _is_edge(settings: Settings, as_edge: bool | None) -> bool:
    """Whether this Orthanc is radcloud's DICOM edge: as ``as_edge`` says, else as the
    settings' ``gateway_edge`` does."""
    return settings.gateway_edge is GatewayEdge.ORTHANC if as_edge is None else as_edge


def orthanc_config(
    settings: Settings,
    secrets: Secrets,
    modalities: Mapping[str, DicomModality] | None = None,
    *,
    as_edge: bool | None = None,
    node: int = 0,
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
    as_edge
        Whether Orthanc is radcloud's DICOM edge (its plugin, DICOM on ``gateway_port``):
        ``None`` as ``settings.gateway_edge`` says; ``False`` for an archive only (a site of a
        benchmark or a test that runs no gateway).
    node
        Which archive node (``orthanc_nodes``): its ports are the base ports +
        ``node * orthanc_node_port_step``; with
        several nodes, each has its own ``DatabaseServerIdentifier`` (Orthanc keeps its global
        properties, its saved jobs among them, per identifier) and the PostgreSQL index is
        not locked to one process (``Lock`` off).

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
    offset = settings.orthanc_node_offset(node)
    plugins = [str(settings.orthanc_plugins_dir / DICOMWEB_PLUGIN)]
    config: dict[str, Any] = {
        "Name": "radcloud",
        "StorageDirectory": storage,
        "IndexDirectory": storage,
        "Plugins": plugins,
        # HTTP: loopback clients only, always with a password
        "HttpServerEnabled": True,
        "HttpPort": settings.orthanc_http_port + offset,
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
        "DicomPort": settings.orthanc_dicom_port + offset,
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
    if _is_edge(settings, as_edge):
        plugins.append(str(settings.orthanc_plugins_dir / PYTHON_PLUGIN))
        config.update(edge_config(settings))
        config["DicomPort"] += offset
    if settings.orthanc_index is OrthancIndex.POSTGRESQL:
        plugins.append(str(settings.orthanc_plugins_dir / POSTGRESQL_PLUGIN))
        config["PostgreSQL"] = _postgresql_section(_index_url(settings, secrets))
    if settings.orthanc_nodes > 1:
        config["Name"] = f"radcloud-{node}"
        config["DatabaseServerIdentifier"] = f"radcloud-node-{node}"
        config["PostgreSQL"]["Lock"] = False  # several writers (Orthanc >= 1.9.2, plugin 4.0)
    return config


def orthanc_config_path(settings: Settings, node: int = 0) -> Path:
    """Node ``node``'s configuration file: ``orthanc.json``, ``orthanc-<k>.json`` beside it."""
    path = settings.paths.orthanc_config
    return path if node == 0 else path.with_name(f"{path.stem}-{node}{path.suffix}")


def _index_url(settings: Settings, secrets: Secrets) -> str:
    """Where Orthanc's index lives with ``orthanc_index=postgresql``: the URL given, else the
    managed server's ``orthanc`` database (radcloud's role, its secret password)."""
    if settings.orthanc_postgresql_url:
        return settings.orthanc_postgresql_url
    if not settings.postgresql_managed:  # the settings validator already demands one of them
        raise ConfigError(_URL_SETTING, None, "a URL when RADCLOUD_ORTHANC_INDEX=postgresql")
    return (
        f"postgresql://{MANAGED_DATABASE}:{quote(secrets.database_password, safe='')}"
        f"@127.0.0.1:{settings.postgresql_port}/{ORTHANC_DATABASE}"
    )


def edge_config(settings: Settings) -> dict[str, Any]:
    """Orthanc's DICOM settings when it is radcloud's DICOM edge (``gateway_edge=orthanc``).

    - It answers as the gateway: ``gateway_ae_title`` on ``gateway_port`` (Orthanc 1.10 binds
      every interface; the peer table admits registered senders from their addresses only).
    - Only registered peers, from their host, for the services their entry allows; no service
      is allowed to anyone else (``DicomAlwaysAllow*`` off). C-GET is allowed to no one (the
      plugin cannot scope it); C-FIND and C-MOVE are the plugin's.
    - No deflated transfer syntax: DCMTK would inflate a data set whole, so a deflate bomb
      could take the memory; it is refused at negotiation instead (no presentation context).
    - ``DicomThreadsCount`` = ``gateway_max_associations``: Orthanc serves each association on
      one of these threads and queues the rest, so this is how many associations are served at
      once (an idle thread costs nothing, and the plugin's interpreter serialises the Python
      work anyway). ``MaximumPduLength``: the largest Orthanc allows (fewest PDUs).
    - ``DicomScpTimeout``: an idle association is closed after ``gateway_network_timeout_s``.
    - ``DefaultEncoding`` UTF-8: Orthanc re-encodes the plugin's C-FIND answers in it (whatever
      the request's Specific Character Set); in its default, Latin-1, a name in Greek or
      Cyrillic would be answered with those characters dropped. The pynetdicom edge answers in
      UTF-8 too. (It is also how Orthanc reads an instance that declares no character set,
      whose text should then be ASCII.)
    - DICOM TLS from the ``gateway_tls_*`` files; with ``gateway_tls_ca_certificates`` client
      certificates signed by those CAs are required (Orthanc 1.10 needs a trusted certificate
      file in any case: without CAs, the server's own certificate, so that anonymous clients
      are served and any certificate other than it is refused).
    """
    config: dict[str, Any] = {
        "DicomServerEnabled": True,
        "DicomAet": settings.gateway_ae_title,
        "DicomPort": settings.gateway_port,
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DeflatedTransferSyntaxAccepted": False,
        "UnknownSopClassAccepted": False,
        "DicomThreadsCount": settings.gateway_max_associations,
        "MaximumPduLength": _MAX_PDU_BYTES,
        "DicomScpTimeout": max(1, round(settings.gateway_network_timeout_s)),
        "PythonScript": str(PLUGIN_SCRIPT),
        "PythonVerbose": False,
        "DefaultEncoding": "Utf8",
    }
    if settings.gateway_tls_certificate is not None:
        trusted = settings.gateway_tls_ca_certificates or settings.gateway_tls_certificate
        config |= {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(settings.gateway_tls_certificate),
            "DicomTlsPrivateKey": str(settings.gateway_tls_private_key),
            "DicomTlsTrustedCertificates": str(trusted),
            "DicomTlsRemoteCertificateRequired": settings.gateway_tls_ca_certificates is not None,
        }
    return config


def write_orthanc_config(
    settings: Settings,
    secrets: Secrets,
    modalities: Mapping[str, DicomModality] | None = None,
    *,
    as_edge: bool | None = None,
    node: int = 0,
) -> Path:
    """Write :func:`orthanc_config` to :func:`orthanc_config_path` with mode 0600.

    The file is replaced atomically; the parameters are :func:`orthanc_config`'s.

    Returns
    -------
    Path
        The configuration file.
    """
    path = orthanc_config_path(settings, node)
    private_directory(path.parent)
    config = orthanc_config(settings, secrets, modalities, as_edge=as_edge, node=node)
    text = json.dumps(config, indent=2, sort_keys=True)
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


def check_orthanc_installed(settings: Settings, *, as_edge: bool | None = None) -> str:
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
    python = settings.orthanc_plugins_dir / PYTHON_PLUGIN
    if _is_edge(settings, as_edge) and not python.is_file():
        raise DependencyMissingError(f"the Orthanc Python plugin ({python})", PYTHON_INSTALL)
    if settings.orthanc_index is OrthancIndex.POSTGRESQL:
        postgresql = settings.orthanc_plugins_dir / POSTGRESQL_PLUGIN
        if not postgresql.is_file():
            raise DependencyMissingError(
                f"the Orthanc PostgreSQL plugin ({postgresql})", POSTGRESQL_INSTALL
            )
    return executable


def edge_modalities(settings: Settings, secrets: Secrets) -> dict[str, DicomModality]:
    """The peers of the Orthanc edge at start: radcloud's registered senders and destinations
    (:func:`dicom_gateway.edge.peers.peers_of`); the plugin keeps them up to date after."""
    from core.audit import AuditTrail
    from core.db import Database
    from dicom_gateway.edge.peers import peers_of
    from dicom_gateway.senders import SenderRegistry

    db = Database.from_settings(settings)
    try:
        audit = AuditTrail(db, secrets.audit_hmac_key, secrets.audit_chain_key)  # reads only
        registry = SenderRegistry(db, audit, edge=settings.gateway_edge)
        modalities, problems = peers_of(registry.list_senders(), registry.list_destinations())
    finally:
        db.dispose()
    for problem in problems:
        logger.error("%s", problem)
    return modalities


def _prepare(
    settings: Settings,
    secrets: Secrets,
    modalities: Mapping[str, DicomModality] | None,
    as_edge: bool,
    node: int,
) -> None:
    check_orthanc_installed(settings, as_edge=as_edge)
    if as_edge:
        modalities = {**(modalities or {}), **edge_modalities(settings, secrets)}
    write_orthanc_config(settings, secrets, modalities, as_edge=as_edge, node=node)


def _plugin_environment(settings: Settings) -> dict[str, str]:
    """What the edge's plugin needs in Orthanc's environment: the settings (``RADCLOUD_*``),
    and the repository and this virtual environment on ``PYTHONPATH`` (the plugin embeds the
    system's Python 3.11, which knows neither)."""
    repository = Path(PLUGIN_SCRIPT).resolve().parents[2]
    site_packages = dict.fromkeys(
        [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    )
    return settings_env(settings) | {
        "PYTHONPATH": os.pathsep.join([str(repository), *site_packages]),
    }


def orthanc_component(
    settings: Settings,
    secrets: Secrets,
    modalities: Mapping[str, DicomModality] | None = None,
    *,
    as_edge: bool | None = None,
    node: int = 0,
) -> Component:
    """Orthanc (one archive node) as a supervised component.

    Before it is spawned, the installation is checked (:func:`check_orthanc_installed`) and the
    configuration written. It runs with ``TCP_NODELAY=1``, which DCMTK honours: without it
    Nagle's algorithm and delayed ACKs cost about 40 ms per DIMSE message. As the DICOM edge
    (``gateway_edge=orthanc``) it listens on ``gateway_port`` and its environment carries
    what the plugin needs (:func:`_plugin_environment`).

    Parameters
    ----------
    settings, secrets
        The instance's settings and credentials.
    modalities
        DICOM peers allowed to connect (see :func:`orthanc_config`).
    as_edge
        Whether it is radcloud's DICOM edge (see :func:`orthanc_config`): ``None`` as the
        settings say, ``False`` for an archive only.
    node
        Which archive node (``orthanc_nodes``; see :func:`orthanc_config`). Its plugin's
        environment names it (``RADCLOUD_ORTHANC_NODE``), so that the plugin talks to its own
        node, whose DICOM peers and jobs are its own.

    Returns
    -------
    Component
        Named ``orthanc`` (node 0) or ``orthanc-<k>``, healthy when :func:`orthanc_healthy`.
    """
    executable = shutil.which(settings.orthanc_executable) or settings.orthanc_executable
    env = {"TCP_NODELAY": "1"}
    offset = settings.orthanc_node_offset(node)
    suffix = "" if node == 0 else f" + {node} * {ENV_PREFIX}ORTHANC_NODE_PORT_STEP"
    dicom_port = (settings.orthanc_dicom_port + offset, f"{ENV_PREFIX}ORTHANC_DICOM_PORT{suffix}")
    edge = _is_edge(settings, as_edge)
    if edge:
        env |= _plugin_environment(settings) | {f"{ENV_PREFIX}ORTHANC_NODE": str(node)}
        dicom_port = (settings.gateway_port + offset, f"{ENV_PREFIX}GATEWAY_PORT{suffix}")
    http_port = (settings.orthanc_http_port + offset, f"{ENV_PREFIX}ORTHANC_HTTP_PORT{suffix}")
    return Component.create(
        settings,
        name="orthanc" if node == 0 else f"orthanc-{node}",
        argv=[executable, str(orthanc_config_path(settings, node))],
        env=env,
        ports=[http_port, dicom_port],
        health=functools.partial(orthanc_healthy, settings, secrets, node=node),
        url=settings.orthanc_node_url(node),
        prepare=functools.partial(_prepare, settings, secrets, modalities, edge, node),
    )


def orthanc_components(
    settings: Settings,
    secrets: Secrets,
    modalities: Mapping[str, DicomModality] | None = None,
    *,
    as_edge: bool | None = None,
) -> list[Component]:
    """Every archive node as a component (``orthanc_nodes`` of them), node 0 first; the
    parameters are :func:`orthanc_component`'s."""
    return [
        orthanc_component(settings, secrets, modalities, as_edge=as_edge, node=node)
        for node in range(settings.orthanc_nodes)
    ]
