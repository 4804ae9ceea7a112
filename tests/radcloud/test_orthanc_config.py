"""Orthanc's generated configuration, its installation check and the port check."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest

from core.config import Settings, load_settings
from core.exceptions import ConfigError, DependencyMissingError, PortInUseError
from core.secrets import Secrets, load_secrets
from radcloud.services import (
    DicomModality,
    Supervisor,
    check_orthanc_installed,
    check_ports_free,
    orthanc_component,
    orthanc_config,
    write_orthanc_config,
)
from tests.helpers import free_ports


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Orthanc as the archive behind the pynetdicom edge: its DICOM side closed unless a
    modality is configured (as the Orthanc edge, ``tests/dicom_gateway/test_edge_orthanc.py``
    checks its configuration)."""
    http, dicom, api, gateway = free_ports(4)
    return load_settings(
        home=tmp_path,
        gateway_edge="pynetdicom",
        orthanc_http_port=http,
        orthanc_dicom_port=dicom,
        api_port=api,
        gateway_port=gateway,
        orthanc_ae_title="TEST_STORE",
    )


@pytest.fixture
def secrets(settings: Settings) -> Secrets:
    return load_secrets(settings)


def test_http_demands_password_and_refuses_remote_clients(
    settings: Settings, secrets: Secrets
) -> None:
    config = orthanc_config(settings, secrets)
    assert config["RemoteAccessAllowed"] is False
    assert config["AuthenticationEnabled"] is True
    assert config["RegisteredUsers"] == {secrets.orthanc_user: secrets.orthanc_password}
    assert config["OrthancExplorerEnabled"] is False
    assert config["WebDavEnabled"] is False
    assert config["ExecuteLuaEnabled"] is False
    assert config["HttpPort"] == settings.orthanc_http_port


def test_dicom_accepts_only_configured_modalities(settings: Settings, secrets: Secrets) -> None:
    config = orthanc_config(settings, secrets)
    assert config["DicomServerEnabled"] is False  # no modality: the DICOM port stays closed
    assert config["DicomAet"] == "TEST_STORE"
    assert config["DicomPort"] == settings.orthanc_dicom_port
    assert config["DicomModalities"] == {}
    assert config["DicomAlwaysAllowEcho"] is False
    assert config["DicomAlwaysAllowStore"] is False
    assert config["DicomCheckModalityHost"] is True
    assert config["DicomCheckCalledAet"] is True

    gateway = DicomModality("RADCLOUD", "127.0.0.1", settings.gateway_port, allow_move=False)
    with_modality = orthanc_config(settings, secrets, {"gateway": gateway})
    assert with_modality["DicomServerEnabled"] is True
    entry = with_modality["DicomModalities"]["gateway"]
    assert entry["AET"] == "RADCLOUD"
    assert entry["Host"] == "127.0.0.1"
    assert entry["Port"] == settings.gateway_port
    assert entry["AllowStore"] is True
    assert entry["AllowMove"] is False


def test_modality_with_invalid_ae_title_is_refused() -> None:
    with pytest.raises(ValueError, match="AE title"):
        DicomModality("A\\B", "127.0.0.1", 104)


def test_dicomweb_plugin_and_storage_under_home(settings: Settings, secrets: Secrets) -> None:
    config = orthanc_config(settings, secrets)
    assert config["Plugins"] == [str(settings.orthanc_plugins_dir / "libOrthancDicomWeb.so")]
    assert config["DicomWeb"] == {
        "Enable": True,
        "Root": "/dicom-web/",
        "EnableWado": True,
        "Ssl": False,
    }
    assert config["StorageDirectory"] == str(settings.paths.orthanc_storage)
    assert Path(config["IndexDirectory"]).is_relative_to(settings.paths.orthanc_storage)
    assert "PostgreSQL" not in config
    json.dumps(config)  # Orthanc reads it as JSON


def test_postgresql_index_section_is_parsed_from_url(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path,
        orthanc_index="postgresql",
        orthanc_postgresql_url="postgresql://orthanc:p%40ss@db.internal:5433/pacs",
    )
    config = orthanc_config(settings, load_secrets(settings))
    assert config["PostgreSQL"] == {
        "EnableIndex": True,
        "EnableStorage": False,
        "Host": "db.internal",
        "Port": 5433,
        "Database": "pacs",
        "Username": "orthanc",
        "Password": "p@ss",
    }
    assert config["Plugins"][-1].endswith("libOrthancPostgreSQLIndex.so")


def test_postgresql_index_without_url_is_the_managed_servers_orthanc_database(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        home=tmp_path, orthanc_index="postgresql", postgresql_managed=True, postgresql_port=6543
    )
    secrets = load_secrets(settings)
    section = orthanc_config(settings, secrets)["PostgreSQL"]
    assert (section["Host"], section["Port"], section["Database"]) == ("127.0.0.1", 6543, "orthanc")
    assert (section["Username"], section["Password"]) == ("radcloud", secrets.database_password)


def test_postgresql_index_needs_a_url_or_the_managed_server(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RADCLOUD_POSTGRESQL_MANAGED"):
        load_settings(home=tmp_path, orthanc_index="postgresql")


def test_postgresql_url_without_database_names_the_setting(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path,
        orthanc_index="postgresql",
        orthanc_postgresql_url="postgresql://orthanc:secret@db.internal",
    )
    with pytest.raises(ConfigError, match="RADCLOUD_ORTHANC_POSTGRESQL_URL") as excinfo:
        orthanc_config(settings, load_secrets(settings))
    assert "secret" not in str(excinfo.value)


def test_missing_postgresql_plugin_names_the_package(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path,
        orthanc_executable="sh",  # any installed program: only the plugin is missing
        orthanc_plugins_dir=tmp_path,
        orthanc_index="postgresql",
        orthanc_postgresql_url="postgresql://orthanc:secret@localhost/pacs",
    )
    (tmp_path / "libOrthancDicomWeb.so").touch()
    (tmp_path / "libOrthancPython.so").touch()  # the default (Orthanc) edge's plugin
    with pytest.raises(DependencyMissingError, match="apt-get install -y orthanc-postgresql"):
        check_orthanc_installed(settings)


def test_config_file_is_private(settings: Settings, secrets: Secrets) -> None:
    path = write_orthanc_config(settings, secrets)
    assert path == settings.paths.orthanc_config
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == orthanc_config(settings, secrets)


def test_missing_orthanc_names_the_install_command(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, orthanc_executable="no-such-orthanc-binary")
    with pytest.raises(DependencyMissingError) as excinfo:
        check_orthanc_installed(settings)
    assert excinfo.value.program == "Orthanc"
    assert "apt-get install -y orthanc orthanc-dicomweb" in str(excinfo.value)


def test_component_runs_with_tcp_nodelay(settings: Settings, secrets: Secrets) -> None:
    component = orthanc_component(settings, secrets)
    assert component.env["TCP_NODELAY"] == "1"
    assert component.argv[-1] == str(settings.paths.orthanc_config)
    assert component.ports == (
        (settings.orthanc_http_port, "RADCLOUD_ORTHANC_HTTP_PORT"),
        (settings.orthanc_dicom_port, "RADCLOUD_ORTHANC_DICOM_PORT"),
    )
    assert component.health() is False  # nothing runs yet


def test_port_in_use_names_port_and_setting(settings: Settings) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", settings.orthanc_http_port))
        taken.listen()
        with pytest.raises(PortInUseError) as excinfo:
            check_ports_free([(settings.orthanc_http_port, "RADCLOUD_ORTHANC_HTTP_PORT")])
    assert excinfo.value.port == settings.orthanc_http_port
    message = str(excinfo.value)
    assert str(settings.orthanc_http_port) in message
    assert "RADCLOUD_ORTHANC_HTTP_PORT" in message


def test_up_checks_ports_before_starting_anything(settings: Settings, secrets: Secrets) -> None:
    supervisor = Supervisor(settings, [orthanc_component(settings, secrets)])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("0.0.0.0", settings.orthanc_dicom_port))  # noqa: S104
        taken.listen()
        with pytest.raises(PortInUseError, match="RADCLOUD_ORTHANC_DICOM_PORT"):
            supervisor.up()
    assert not settings.paths.orthanc_config.exists()  # nothing was prepared
    assert not (settings.paths.run_dir / "orthanc.pid").exists()


def test_finds_are_bounded_for_every_client(tmp_path: Path) -> None:
    http, dicom, api, gateway = free_ports(4)
    settings = load_settings(
        home=tmp_path,
        orthanc_http_port=http,
        orthanc_dicom_port=dicom,
        api_port=api,
        gateway_port=gateway,
        archive_max_find_results=250,
    )
    config = orthanc_config(settings, load_secrets(settings))
    assert config["LimitFindResults"] == 250
    assert config["LimitFindInstances"] == 250


def test_the_default_edge_is_orthanc_unless_an_archive_only_is_asked_for(tmp_path: Path) -> None:
    """With the default settings Orthanc is the DICOM edge (its plugin, DICOM on the gateway's
    port); ``as_edge=False`` makes a plain archive of it (a test's or benchmark's site)."""
    settings = load_settings(home=tmp_path)
    secrets = load_secrets(settings)
    edge = orthanc_config(settings, secrets)
    archive = orthanc_config(settings, secrets, as_edge=False)
    python = str(settings.orthanc_plugins_dir / "libOrthancPython.so")
    assert python in edge["Plugins"] and edge["DicomServerEnabled"] is True
    assert edge["DicomPort"] == settings.gateway_port
    assert python not in archive["Plugins"] and archive["DicomServerEnabled"] is False
    assert archive["DicomPort"] == settings.orthanc_dicom_port
