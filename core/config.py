"""radcloud's one typed settings object.

Settings come, highest priority first, from ``RADCLOUD_*`` environment variables, then a TOML
file (``$RADCLOUD_CONFIG_FILE``, else ``./radcloud.toml`` when present; keys are the field names
without the prefix), then the defaults below. They are validated once, at start: a bad value
raises :class:`~core.exceptions.ConfigError` naming the key, the value and what was expected.

Every network listener defaults to 127.0.0.1 and every port can be changed, so that two
instances with different ``RADCLOUD_HOME`` and ports run side by side.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from core.exceptions import ConfigError

__all__ = [
    "MANAGED_DATABASE",
    "ORTHANC_DATABASE",
    "DataPaths",
    "GatewayEdge",
    "Mode",
    "OrthancIndex",
    "Settings",
    "WindowPreset",
    "config_file",
    "is_loopback_host",
    "load_settings",
    "secret_setting_names",
    "settings_env",
    "url_host",
]

ENV_PREFIX = "RADCLOUD_"
CONFIG_FILE_ENV = "RADCLOUD_CONFIG_FILE"
MANAGED_DATABASE = "radcloud"
"""The managed PostgreSQL's role and database of the application (``postgresql_managed``)."""
ORTHANC_DATABASE = "orthanc"
"""The managed PostgreSQL's database of Orthanc's index (``orthanc_index=postgresql``)."""

Port = Annotated[int, Field(ge=1, le=65535)]

# PS3.5 6.2: an AE title is 1-16 characters of the default repertoire, no backslash or
# control characters, and not only spaces.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class Mode(StrEnum):
    """How strict radcloud is about secrets and defaults."""

    DEV = "dev"
    PROD = "prod"


class GatewayEdge(StrEnum):
    """Which DICOM server receives associations on ``gateway_port`` (README "Sending studies").

    ``pynetdicom``: the gateway process's own DIMSE service (spool, forwarder); ``orthanc``:
    Orthanc's DICOM server, with radcloud's policy in an orthanc-python plugin
    (:mod:`dicom_gateway.edge`).
    """

    PYNETDICOM = "pynetdicom"
    ORTHANC = "orthanc"


class OrthancIndex(StrEnum):
    """Which database holds Orthanc's index (the storage area is always files on disk)."""

    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class JwtAlgorithm(StrEnum):
    """Signature algorithms accepted on bearer tokens."""

    HS256 = "HS256"
    RS256 = "RS256"
    ES256 = "ES256"


class DataPaths:
    """Where radcloud keeps its state under ``RADCLOUD_HOME``."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.secrets_file = home / "secrets.json"
        self.database_file = home / "core.db"
        self.orthanc_dir = home / "orthanc"
        self.orthanc_storage = home / "orthanc" / "storage"
        self.orthanc_config = home / "orthanc" / "orthanc.json"
        self.run_dir = home / "run"
        self.log_dir = home / "logs"
        self.spool_dir = home / "spool"
        self.quarantine_dir = home / "quarantine"
        self.models_dir = home / "models"
        self.postgresql_dir = home / "postgresql"  # the managed server's (postgresql_data_dir)


def validate_ae_title(value: str) -> str:
    """Return ``value`` if it is a valid AE title (PS3.5 6.2), else raise ``ValueError``."""
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(
            f'AE title "{value}" is not valid: expected 1-16 printable ASCII characters, '
            "no backslash, not only spaces"
        )
    return value


class WindowPreset(BaseModel):
    """A window/level preset of the viewer (Hounsfield units for CT)."""

    name: str = Field(min_length=1, max_length=32)
    window: float = Field(gt=0)
    level: float


class Settings(BaseSettings):
    """All of radcloud's configuration. Field ``x`` is set by ``RADCLOUD_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        frozen=True,
    )

    home: Path = Field(Path("var"), description="Data directory (RADCLOUD_HOME)")
    mode: Mode = Mode.PROD
    log_level: str = "INFO"

    # Network listeners. Everything binds to loopback unless told otherwise.
    bind_host: str = "127.0.0.1"
    # The address clients use to reach the API (behind a TLS-terminating proxy, say); URLs in
    # answers (DICOMweb RetrieveURL, BulkDataURI) use it. Default: taken from each request.
    public_url: str | None = None
    api_port: Port = 8000
    # HTTPS for the API and the web app (Ray Serve's proxy, or uvicorn for `python -m
    # serving.api`): a PEM certificate (chain) and its private key, set together. In prod mode a
    # bind_host beyond loopback needs them (and the gateway's TLS files).
    api_tls_certificate: Path | None = None
    api_tls_private_key: Path | None = None
    gateway_port: Port = 11112
    gateway_ae_title: str = "RADCLOUD"
    # Who answers DICOM on gateway_port: Orthanc's DICOM server with radcloud's policy in a
    # plugin (the default: no Python on the byte path, 0.86-1.18 of Orthanc-direct; refuses
    # while Orthanc is down), or the gateway's own pynetdicom service (spools, so it accepts
    # while Orthanc is down; 0.29-0.48). README "The ingest edge" says what each promises.
    gateway_edge: GatewayEdge = GatewayEdge.ORTHANC
    orthanc_http_port: Port = 8042
    orthanc_dicom_port: Port = 4242
    orthanc_ae_title: str = "RADCLOUD_STORE"

    # DICOM gateway (dicom_gateway): limits, durability, completeness, TLS
    gateway_metrics_port: Port = 9101
    # The gateway's own STOW-RS door (dicom_gateway.stow_door): POST /dicom-web/studies on
    # bind_host:gateway_stow_port, HTTPS with the api_tls_* files, the API's credentials and
    # STOW-RS limits (api_max_stow_*); at most gateway_stow_max_connections served at once (as
    # many more are answered 503). gateway_stow_enabled=false: no door (the API's route stays).
    gateway_stow_enabled: bool = True
    gateway_stow_port: Port = 8043
    gateway_stow_max_connections: int = Field(16, ge=1, le=1024)
    gateway_max_associations: int = Field(16, ge=1, le=1024)
    gateway_max_instance_mib: int = Field(1024, ge=1)
    gateway_spool_limit_mib: int = Field(10240, ge=1)
    gateway_min_free_disk_mib: int = Field(256, ge=0)
    gateway_acse_timeout_s: float = Field(30.0, gt=0)
    gateway_dimse_timeout_s: float = Field(60.0, gt=0)
    gateway_network_timeout_s: float = Field(120.0, gt=0)
    gateway_forward_workers: int = Field(4, ge=1, le=64)
    gateway_stable_seconds: float = Field(10.0, gt=0)
    # Quarantine quota: beyond either, a refused instance is answered with its failure status
    # but not kept (the forwarder's quarantine of acknowledged instances is never refused).
    gateway_quarantine_limit_mib: int = Field(2048, ge=1)
    gateway_quarantine_max_files: int = Field(10000, ge=1)
    gateway_tls_certificate: Path | None = None
    gateway_tls_private_key: Path | None = None
    gateway_tls_ca_certificates: Path | None = None  # set: client certificates are required

    # Orthanc
    orthanc_executable: str = "Orthanc"
    orthanc_plugins_dir: Path = Path("/usr/share/orthanc/plugins")
    orthanc_index: OrthancIndex = OrthancIndex.SQLITE
    orthanc_postgresql_url: str | None = Field(None, repr=False)  # holds a password
    # Several archive nodes (README "Several archive nodes"): this many Orthanc processes
    # sharing the PostgreSQL index and the storage directory (needs orthanc_index=postgresql).
    # Node k (0, 1, ...) listens on orthanc_http_port + k * orthanc_node_port_step, likewise
    # orthanc_dicom_port and, as the DICOM edge, gateway_port. orthanc_node is set by radcloud
    # in node k's own environment (its plugin talks to its node only); elsewhere it is unset
    # and the archive seam spreads requests over every node.
    orthanc_nodes: int = Field(1, ge=1, le=16)
    orthanc_node_port_step: int = Field(10, ge=1, le=1000)
    orthanc_node: int | None = Field(None, ge=0)
    # Most resources one archive search returns (Orthanc's LimitFindResults and
    # LimitFindInstances, and the seam's paging): a broader search is refused, not truncated.
    archive_max_find_results: int = Field(10000, ge=1)
    # Remote DICOMweb nodes (core.nodes, `radcloud hospitals add`): per request, connecting and
    # waiting for each read; a node registered with --timeout overrides the read timeout.
    remote_connect_timeout_s: float = Field(3.0, gt=0, le=300)
    remote_read_timeout_s: float = Field(15.0, gt=0, le=3600)
    # Federated search (serving.federation): how long a tenant of this deployment may take to
    # answer (a database query); a remote node's is its connect plus read timeout.
    federation_tenant_timeout_s: float = Field(10.0, gt=0, le=300)
    startup_timeout_s: float = Field(60.0, gt=0)

    # serving (serving/): Ray Serve runs the API (ingress), one deployment per production
    # model and the triage workers. ray_address joins an existing cluster ("auto" or
    # "ray://host:10001"); unset, a local one is started with ray_num_cpus CPUs.
    ray_address: str | None = None
    ray_num_cpus: int | None = Field(None, ge=1)
    # Several serving nodes (README "Several serving nodes"): with ray_nodes > 1, `radcloud up`
    # starts a Ray cluster of this many nodes on this machine, every server on loopback (a head
    # with its GCS on ray_port, then ray_nodes - 1 workers; ray_num_cpus logical CPUs each),
    # and Ray Serve joins it.
    ray_nodes: int = Field(1, ge=1, le=16)
    ray_port: Port = 6380
    serving_backend: Literal["onnx", "torch"] = "onnx"
    serving_device: Literal["auto", "cpu", "cuda"] = "auto"
    serving_max_batch_size: int = Field(8, ge=1, le=256)
    serving_batch_wait_ms: float = Field(20.0, ge=0)
    # Per model: {"<model name>": {"max_batch_size": N, "batch_wait_ms": MS}} (JSON in the
    # environment); models not named use the two settings above.
    serving_model_batching: dict[str, dict[str, float]] = Field(default_factory=dict)
    serving_cpus_per_model_replica: float = Field(0.5, gt=0)
    serving_gpus_per_model_replica: float = Field(0.5, ge=0, le=8)  # used when a GPU is there
    serving_min_replicas: int = Field(1, ge=1)
    serving_max_replicas: int = Field(1, ge=1)
    serving_target_ongoing_requests: float = Field(4.0, gt=0)
    # Serve's autoscaler: how long the load must stay above (below) the target before it adds
    # (removes) model replicas.
    serving_upscale_delay_s: float = Field(30.0, ge=0)
    serving_downscale_delay_s: float = Field(600.0, ge=0)
    triage_workers: int = Field(1, ge=1, le=64)
    # Scheduling niceness of the triage workers' and model replicas' processes (Ray's default
    # for every worker, which radcloud's Ray no longer applies to the API and its proxy): their
    # background work yields the CPU to readers' requests and to ingest where cores are scarce
    # (benchmarks/README "Load that holds").
    triage_nice: int = Field(15, ge=0, le=19)
    triage_poll_interval_s: float = Field(0.5, gt=0)
    # Catch-up (serving/promotion.py): when a model gains its first production version, the
    # studies that arrived without one (at most this many, newest first, none older than this)
    # are queued for triage behind live studies.
    triage_catch_up_max_studies: int = Field(500, ge=0)
    triage_catch_up_max_age_hours: float = Field(72.0, gt=0)
    # How long a triage worker holds the study event it claimed: an event whose worker died (its
    # Ray node lost) is due again after this; longer than one study's triage.
    triage_lease_s: float = Field(300.0, ge=5, le=3600)
    # A shadow version (``radcloud models shadow``) is shed first under load: not run on a study
    # while more live study events than this wait in the outbox.
    triage_shadow_max_backlog: int = Field(20, ge=0)

    # HTTP API resource budget, enforced before routing and authentication
    # (serving/_body_limit.py, also in Ray Serve's proxy): request bodies of JSON routes, of
    # ad hoc inference (/api/infer) and of STOW-RS; STOW-RS parts per request; voxels of an uploaded
    # volume (NIfTI header or DICOM image attributes, checked before decoding).
    api_max_body_kib: int = Field(1024, ge=1)
    api_max_infer_mib: int = Field(512, ge=1)
    api_max_stow_mib: int = Field(4096, ge=1)
    api_max_stow_parts: int = Field(2000, ge=1)
    api_max_infer_voxels: int = Field(2**28, ge=1)

    # Application database: SQLite in RADCLOUD_HOME unless a URL is given, or PostgreSQL run by
    # `radcloud up` itself (postgresql_managed: a server of this machine on loopback, its data in
    # RADCLOUD_HOME/postgresql, its password among the secrets; radcloud/services/postgresql.py).
    database_url: str | None = Field(None, repr=False)  # may hold a password
    postgresql_managed: bool = False
    postgresql_port: Port = 5433  # beside a system cluster on 5432 (Debian's package may start one)
    # The managed server's data directory (default RADCLOUD_HOME/postgresql/data). Run as root,
    # the server runs as the `postgres` system user, who must be able to reach it.
    postgresql_data_dir: Path | None = None

    # Authentication. radcloud signs its own tokens with HS256; jwt_algorithm RS256/ES256 also
    # accepts tokens from the hospital's OIDC provider, verified against jwt_jwks_url.
    jwt_algorithm: JwtAlgorithm = JwtAlgorithm.HS256
    jwt_secret: str | None = Field(None, repr=False)
    jwt_jwks_url: str | None = None
    jwt_jwks_issuer: str | None = None
    jwt_issuer: str = "radcloud"
    jwt_audience: str = "radcloud"
    jwt_roles_claim: str = "roles"
    # The claim of an OIDC token naming the hospitals (a list, or one name) whose studies the
    # user may see; a dotted path is followed. OIDC users are never platform operators.
    jwt_hospitals_claim: str = "hospitals"
    # An unknown key ID makes radcloud fetch the provider's key set again at most this often
    # (the set is fetched anyway once it is 5 minutes old).
    jwt_jwks_refetch_interval_s: float = Field(60.0, ge=0, le=300)
    token_ttl_minutes: int = Field(60, ge=1, le=60 * 24 * 30)
    # Purpose of use (core.identity): the claims of an OIDC token stating its purpose
    # ("treatment" or "research"), the radcloud patient key a treatment token is bound to, and
    # a break-glass reason (dotted paths followed); radcloud's own context tokens
    # (POST /api/auth/context-token) use "purpose", "patient" and "reason" and live
    # context_token_ttl_minutes.
    jwt_purpose_claim: str = "purpose"
    jwt_patient_claim: str = "patient"
    jwt_reason_claim: str = "reason"
    context_token_ttl_minutes: int = Field(15, ge=1, le=24 * 60)
    # Research cohorts (serving.cohorts): a hospital's count below this is reported as
    # suppressed ("<10"), never exactly, and a cohort whose total is below it lists no study.
    # 10: the stricter of the usual small-cell rules (NHS England suppresses 1-7, CMS 1-10),
    # and fewer studies are too few to train or validate a model on anyway.
    cohort_min_cell_size: int = Field(10, ge=2, le=1000)

    # Sign-in abuse (POST /api/auth/token), counted per API process: signin_max_failures failed
    # sign-ins of one user name within signin_failure_window_s lock that name for
    # signin_lockout_s; one network address may try signin_attempts_per_minute times a minute.
    # Either answers 429 with Retry-After.
    signin_max_failures: int = Field(5, ge=1)
    signin_failure_window_s: int = Field(900, ge=1)
    signin_lockout_s: int = Field(900, ge=1)
    signin_attempts_per_minute: int = Field(30, ge=1)

    # worklist (serving/worklist/): a study is due at ready time + its class's maximum wait;
    # the worklist is read earliest-due first. Urgent: score ≥ fraction x the model's threshold
    # (worklist_default_threshold when the caller gives none). Critical ≤ urgent ≤ routine.
    worklist_max_wait_critical_min: int = Field(30, ge=1)
    worklist_max_wait_urgent_min: int = Field(120, ge=1)
    worklist_max_wait_routine_min: int = Field(480, ge=1)
    worklist_urgent_score_fraction: float = Field(0.6, gt=0, le=1)
    worklist_default_threshold: float = Field(0.5, gt=0, le=1)

    # reading web app (serving/web, docs/reading-app.md): the site's name on reports and its
    # window/level presets (JSON in the environment: [{"name": .., "window": .., "level": ..}]);
    # the worklist page refreshes every viewer_refresh_seconds.
    site_name: str = "radcloud"
    viewer_presets: list[WindowPreset] = Field(
        default_factory=lambda: [
            WindowPreset(name="CT brain", window=80, level=40),
            WindowPreset(name="Subdural", window=200, level=80),
            WindowPreset(name="Stroke", window=40, level=40),
            WindowPreset(name="Bone", window=2800, level=600),
            WindowPreset(name="Lung", window=1500, level=-600),
        ]
    )
    viewer_refresh_seconds: int = Field(10, ge=2, le=600)

    # notifications: critical findings POSTed to a webhook, signed, retried (serving.notify)
    notify_webhook_url: str | None = Field(None, pattern=r"^https?://\S+$")  # None: no webhook
    # HMAC key the receiver verifies with; default: the generated `notify_signing_key` secret
    notify_signing_key: str | None = Field(None, min_length=32, repr=False)
    notify_timeout_s: float = Field(10.0, gt=0, le=300)
    notify_max_attempts: int = Field(10, ge=1, le=1000)
    notify_backoff_base_s: float = Field(2.0, gt=0)
    notify_backoff_max_s: float = Field(600.0, gt=0)
    notify_interval_s: float = Field(1.0, gt=0)  # standalone loop: pause between rounds

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _config_file()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @field_validator("gateway_ae_title", "orthanc_ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        levels = ("DEBUG", "INFO", "WARNING", "ERROR")
        if value.upper() not in levels:
            raise ValueError(f"expected one of {', '.join(levels)}")
        return value.upper()

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("expected a sqlite:// or postgresql:// SQLAlchemy URL")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        self._check_ports_distinct()
        if self.postgresql_managed and self.database_url:
            raise ValueError(
                f"{ENV_PREFIX}POSTGRESQL_MANAGED runs radcloud's own PostgreSQL for the "
                f"application database: unset {ENV_PREFIX}DATABASE_URL, or turn it off to use "
                "the server that URL names"
            )
        if (
            self.orthanc_index is OrthancIndex.POSTGRESQL
            and not self.orthanc_postgresql_url
            and not self.postgresql_managed
        ):
            raise ValueError(
                f"{ENV_PREFIX}ORTHANC_INDEX=postgresql needs {ENV_PREFIX}ORTHANC_POSTGRESQL_URL "
                f"(postgresql://user:password@host:port/database) or {ENV_PREFIX}"
                "POSTGRESQL_MANAGED=true (its own database on radcloud's server)"
            )
        if self.orthanc_nodes > 1 and self.orthanc_index is not OrthancIndex.POSTGRESQL:
            raise ValueError(
                f"{ENV_PREFIX}ORTHANC_NODES={self.orthanc_nodes} needs {ENV_PREFIX}"
                f"ORTHANC_INDEX=postgresql (is {self.orthanc_index}): several Orthanc nodes "
                "share one index only on PostgreSQL; SQLite's file is one process's"
            )
        if self.ray_nodes > 1 and self.ray_address:
            raise ValueError(
                f"{ENV_PREFIX}RAY_NODES={self.ray_nodes} starts a Ray cluster of this machine, "
                f"{ENV_PREFIX}RAY_ADDRESS joins another one: expected one of them"
            )
        if self.orthanc_node is not None and self.orthanc_node >= self.orthanc_nodes:
            raise ValueError(
                f"{ENV_PREFIX}ORTHANC_NODE={self.orthanc_node}: expected a node below "
                f"{ENV_PREFIX}ORTHANC_NODES={self.orthanc_nodes}"
            )
        if (self.gateway_tls_certificate is None) != (self.gateway_tls_private_key is None):
            raise ValueError(
                f"{ENV_PREFIX}GATEWAY_TLS_CERTIFICATE and {ENV_PREFIX}GATEWAY_TLS_PRIVATE_KEY "
                "must be set together"
            )
        if (self.api_tls_certificate is None) != (self.api_tls_private_key is None):
            raise ValueError(
                f"{ENV_PREFIX}API_TLS_CERTIFICATE and {ENV_PREFIX}API_TLS_PRIVATE_KEY "
                "must be set together"
            )
        if self.mode is Mode.PROD and not is_loopback_host(self.bind_host):
            self._check_transport_encrypted()
        if self.gateway_tls_ca_certificates and not self.gateway_tls_certificate:
            raise ValueError(
                f"{ENV_PREFIX}GATEWAY_TLS_CA_CERTIFICATES needs {ENV_PREFIX}GATEWAY_TLS_CERTIFICATE"
            )
        if self.jwt_algorithm is not JwtAlgorithm.HS256 and not self.jwt_jwks_url:
            raise ValueError(
                f"{ENV_PREFIX}JWT_ALGORITHM={self.jwt_algorithm} needs {ENV_PREFIX}JWT_JWKS_URL "
                "(the identity provider's JSON Web Key Set)"
            )
        if self.jwt_algorithm is not JwtAlgorithm.HS256:
            self._check_identity_provider()
        if self.mode is Mode.PROD and self.jwt_secret is not None and len(self.jwt_secret) < 32:
            raise ValueError(
                f"{ENV_PREFIX}JWT_SECRET is too short for prod mode: expected at least 32 "
                "characters, or leave it unset to use a generated secret"
            )
        return self

    def _check_ports_distinct(self) -> None:
        ports = {
            "api_port": self.api_port,
            "gateway_port": self.gateway_port,
            "gateway_metrics_port": self.gateway_metrics_port,
            "orthanc_http_port": self.orthanc_http_port,
            "orthanc_dicom_port": self.orthanc_dicom_port,
        }
        if self.gateway_stow_enabled:
            ports["gateway_stow_port"] = self.gateway_stow_port
        if self.postgresql_managed:
            ports["postgresql_port"] = self.postgresql_port
        if self.ray_nodes > 1:  # the GCS, the Ray client server, each node's dashboard agent
            for offset in range(self.ray_nodes + 2):
                ports[f"ray_port + {offset}" if offset else "ray_port"] = self.ray_port + offset
        for node in range(1, self.orthanc_nodes):  # node k: the base ports + k * step
            step = f" + {node} * {ENV_PREFIX}ORTHANC_NODE_PORT_STEP".lower()
            offset = self.orthanc_node_offset(node)
            ports[f"orthanc_http_port{step}"] = self.orthanc_http_port + offset
            ports[f"orthanc_dicom_port{step}"] = self.orthanc_dicom_port + offset
            if self.gateway_edge is GatewayEdge.ORTHANC:
                ports[f"gateway_port{step}"] = self.gateway_port + offset
        seen: dict[int, str] = {}
        for key, port in ports.items():
            if port in seen:
                raise ValueError(
                    f"{ENV_PREFIX}{key.upper()} and {ENV_PREFIX}{seen[port].upper()} are both "
                    f"{port}: expected a different port for each listener"
                )
            seen[port] = key

    def _check_transport_encrypted(self) -> None:
        """Beyond loopback, prod mode speaks only TLS: HTTPS on the API and the web app,
        DICOM TLS (PS3.15 B.1) on the gateway."""
        missing = [
            f"{ENV_PREFIX}{name.upper()}"
            for name, value in (
                ("api_tls_certificate", self.api_tls_certificate),
                ("gateway_tls_certificate", self.gateway_tls_certificate),
            )
            if value is None
        ]
        if missing:
            raise ValueError(
                f'{ENV_PREFIX}BIND_HOST "{self.bind_host}" is beyond loopback, which prod mode '
                f"allows only with TLS on every listener: expected {' and '.join(missing)} "
                f"(with their private keys), or {ENV_PREFIX}BIND_HOST=127.0.0.1 behind a "
                f"TLS-terminating proxy ({ENV_PREFIX}MODE=dev allows plain text)"
            )

    def _check_identity_provider(self) -> None:
        """An external token's issuer is always checked; in prod, issuer and key set come over
        HTTPS (or the key set from a local file), so no one on the path can swap the keys."""
        if not self.jwt_jwks_issuer:
            raise ValueError(
                f"{ENV_PREFIX}JWT_ALGORITHM={self.jwt_algorithm} needs {ENV_PREFIX}JWT_JWKS_ISSUER "
                "(the identity provider's issuer, the tokens' iss claim)"
            )
        if self.mode is Mode.DEV:
            return
        if not self.jwt_jwks_issuer.startswith("https://"):
            raise ValueError(
                f'{ENV_PREFIX}JWT_JWKS_ISSUER "{self.jwt_jwks_issuer}" is not an https:// URL: '
                f"expected one in prod mode (OpenID Connect Core 1.0, 2; {ENV_PREFIX}MODE=dev "
                "allows others)"
            )
        if self.jwt_jwks_url and self.jwt_jwks_url.startswith("http://"):
            raise ValueError(
                f'{ENV_PREFIX}JWT_JWKS_URL "{self.jwt_jwks_url}" is plain HTTP: expected an '
                f"https:// URL or a local key-set file in prod mode ({ENV_PREFIX}MODE=dev "
                "allows http://)"
            )

    @cached_property
    def paths(self) -> DataPaths:
        """Files and directories under ``home``."""
        return DataPaths(self.home)

    @property
    def sqlalchemy_url(self) -> str:
        """The application database URL (SQLite under ``home`` by default; with
        ``postgresql_managed``, the managed server's ``radcloud`` database, without its
        password, which is a secret: :meth:`core.db.Database.from_settings` adds it)."""
        if self.database_url:
            return self.database_url
        if self.postgresql_managed:
            return f"postgresql+psycopg://{MANAGED_DATABASE}@127.0.0.1:{self.postgresql_port}/{MANAGED_DATABASE}"
        return f"sqlite:///{self.paths.database_file}"

    @property
    def gateway_tls_enabled(self) -> bool:
        """True when the gateway's DICOM port speaks TLS (PS3.15 B.1)."""
        return self.gateway_tls_certificate is not None

    @property
    def api_tls_enabled(self) -> bool:
        """True when the API and the web app are served over HTTPS."""
        return self.api_tls_certificate is not None

    @property
    def api_url(self) -> str:
        """Base URL of radcloud's HTTP API (``https://`` with ``api_tls_certificate``)."""
        scheme = "https" if self.api_tls_enabled else "http"
        return f"{scheme}://{url_host(self.bind_host)}:{self.api_port}"

    @property
    def gateway_stow_url(self) -> str | None:
        """Base URL of the gateway's STOW-RS door (``.../dicom-web``; ``https://`` with
        ``api_tls_certificate``), ``None`` when it is off."""
        if not self.gateway_stow_enabled:
            return None
        scheme = "https" if self.api_tls_enabled else "http"
        return f"{scheme}://{url_host(self.bind_host)}:{self.gateway_stow_port}/dicom-web"

    @property
    def gateway_health_url(self) -> str:
        """The gateway's health endpoint (JSON) on its metrics port, which listens on loopback
        only (:mod:`dicom_gateway._http`)."""
        return f"http://127.0.0.1:{self.gateway_metrics_port}/healthz"

    @property
    def orthanc_url(self) -> str:
        """Base URL of the internal Orthanc REST API: node 0's, or with ``orthanc_node`` set
        (inside a node) that node's."""
        return self.orthanc_node_url(self.orthanc_node or 0)

    @property
    def orthanc_node_urls(self) -> list[str]:
        """Every archive node's REST API root, node 0 first (``orthanc_nodes``)."""
        return [self.orthanc_node_url(node) for node in range(self.orthanc_nodes)]

    @property
    def ray_cluster_address(self) -> str | None:
        """The Ray cluster serving joins: ``ray_address``, or the head radcloud starts on
        loopback (``127.0.0.1:ray_port``) with ``ray_nodes`` > 1; ``None``: a local Ray of the
        serving process alone."""
        if self.ray_address:
            return self.ray_address
        return f"127.0.0.1:{self.ray_port}" if self.ray_nodes > 1 else None

    @property
    def ray_on_loopback(self) -> bool:
        """Whether every Ray server is radcloud's own, on this machine's loopback (a local Ray,
        or the ``ray_nodes`` cluster), rather than a cluster of ``ray_address``."""
        return not self.ray_address

    def orthanc_node_url(self, node: int) -> str:
        """Node ``node``'s REST API root, on loopback (:meth:`orthanc_node_offset`)."""
        return f"http://127.0.0.1:{self.orthanc_http_port + self.orthanc_node_offset(node)}"

    def orthanc_node_offset(self, node: int) -> int:
        """What node ``node`` adds to each base port: ``node * orthanc_node_port_step``."""
        return node * self.orthanc_node_port_step


def is_loopback_host(host: str) -> bool:
    """True when ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: it may resolve to anything
        return False


def url_host(host: str) -> str:
    """``host`` as it goes in a URL (a wildcard bind becomes loopback, IPv6 is bracketed)."""
    if host in ("0.0.0.0", "::"):  # noqa: S104 - reachable address for a wildcard bind
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def secret_setting_names() -> frozenset[str]:
    """Names of the settings that hold secrets (hidden from ``repr``): they never leave a
    process in an environment it builds (:func:`settings_env`, Ray's runtime environment)."""
    return frozenset(name for name, info in Settings.model_fields.items() if not info.repr)


def config_file() -> Path | None:
    """The TOML file settings are read from: ``$RADCLOUD_CONFIG_FILE``, else
    ``./radcloud.toml`` when present, else ``None``.

    Raises
    ------
    ConfigError
        ``RADCLOUD_CONFIG_FILE`` names no file.
    """
    return _config_file()


def _config_file() -> Path | None:
    explicit = os.environ.get(CONFIG_FILE_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(CONFIG_FILE_ENV, explicit, "an existing TOML file")
        return path
    local = Path("radcloud.toml")
    return local if local.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Build and validate the settings.

    Parameters
    ----------
    overrides
        Field values that take precedence over the environment and the TOML file.

    Returns
    -------
    Settings
        The validated settings.

    Raises
    ------
    ConfigError
        When a value is invalid; the message names the key, the value and what was expected.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(part) for part in error["loc"] if part != "__root__"]
        key = f"{ENV_PREFIX}{loc[0].upper()}" if loc else "settings"
        value = error.get("input")
        if isinstance(value, dict):  # model-level check: the message names the keys itself
            raise ConfigError(key, None, error["msg"].removeprefix("Value error, ")) from exc
        raise ConfigError(key, value, error["msg"].removeprefix("Value error, ")) from exc


def settings_env(settings: Settings) -> dict[str, str]:
    """``RADCLOUD_*`` variables that reproduce ``settings`` in a child process.

    Values given as keyword overrides or in a TOML file the child cannot see would otherwise
    differ between the supervisor and the process it starts (the port it health-checks above
    all). Secret fields (those hidden from ``repr``) and unset fields are left out; the child
    reads those from the environment or the TOML file as the parent did.
    """
    env: dict[str, str] = {}
    dumped = settings.model_dump(mode="json")  # nested models (viewer presets) as plain data
    for name, info in type(settings).model_fields.items():
        value = getattr(settings, name)
        if value is None or not info.repr:
            continue
        env[f"{ENV_PREFIX}{name.upper()}"] = (
            json.dumps(dumped[name]) if isinstance(value, dict | list) else str(value)
        )
    env[f"{ENV_PREFIX}HOME"] = str(settings.home.absolute())
    return env
