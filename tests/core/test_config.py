"""Settings: defaults, environment and TOML sources, and errors that name the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import Mode, load_settings
from core.exceptions import ConfigError, SecretsError
from core.secrets import load_secrets


def test_defaults_bind_loopback_on_documented_ports(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    assert settings.bind_host == "127.0.0.1"
    assert (settings.api_port, settings.gateway_port) == (8000, 11112)
    assert (settings.orthanc_http_port, settings.orthanc_dicom_port) == (8042, 4242)
    assert settings.gateway_ae_title == "RADCLOUD"
    assert settings.sqlalchemy_url == f"sqlite:///{tmp_path}/core.db"
    assert settings.mode is Mode.PROD


def test_environment_overrides_and_relative_home_is_made_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RADCLOUD_HOME", "data")
    monkeypatch.setenv("RADCLOUD_API_PORT", "9100")
    monkeypatch.setenv("RADCLOUD_GATEWAY_AE_TITLE", "EDGE1")
    settings = load_settings()
    assert settings.home == tmp_path / "data"
    assert settings.api_port == 9100
    assert settings.gateway_ae_title == "EDGE1"
    assert settings.api_url == "http://127.0.0.1:9100"


def test_toml_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "radcloud.toml"
    config.write_text('api_port = 9200\ngateway_port = 11999\nlog_level = "debug"\n')
    monkeypatch.setenv("RADCLOUD_CONFIG_FILE", str(config))
    monkeypatch.setenv("RADCLOUD_GATEWAY_PORT", "12000")
    settings = load_settings(home=tmp_path)
    assert (settings.api_port, settings.gateway_port, settings.log_level) == (9200, 12000, "DEBUG")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("RADCLOUD_API_PORT", "eighty", "valid integer"),
        ("RADCLOUD_ORTHANC_DICOM_PORT", "70000", "less than or equal to 65535"),
        ("RADCLOUD_GATEWAY_AE_TITLE", "A_TITLE_FAR_TOO_LONG", "1-16 printable ASCII"),
        ("RADCLOUD_MODE", "staging", "'dev' or 'prod'"),
        ("RADCLOUD_DATABASE_URL", "mysql://x", "sqlite:// or postgresql://"),
    ],
)
def test_invalid_value_names_key_value_and_expectation(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert variable in message
    assert value in message
    assert expected in message


def test_two_listeners_on_one_port_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADCLOUD_GATEWAY_PORT", "8000")
    with pytest.raises(ConfigError, match="RADCLOUD_GATEWAY_PORT and RADCLOUD_API_PORT"):
        load_settings()


def test_the_stow_door_has_its_own_port_and_the_apis_scheme(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    assert settings.gateway_stow_enabled
    assert settings.gateway_stow_url == "http://127.0.0.1:8043/dicom-web"
    with pytest.raises(ConfigError, match="RADCLOUD_GATEWAY_STOW_PORT and RADCLOUD_API_PORT"):
        load_settings(home=tmp_path, gateway_stow_port=8000)
    off = load_settings(home=tmp_path, gateway_stow_port=8000, gateway_stow_enabled=False)
    assert off.gateway_stow_url is None  # a door that is off holds no port
    pem = tmp_path / "api.pem"
    tls = load_settings(home=tmp_path, api_tls_certificate=pem, api_tls_private_key=pem)
    assert tls.gateway_stow_url == "https://127.0.0.1:8043/dicom-web"


def test_ray_nodes_are_a_cluster_of_this_machine_on_ports_of_their_own(tmp_path: Path) -> None:
    local = load_settings(home=tmp_path)
    assert local.ray_cluster_address is None and local.ray_on_loopback
    nodes = load_settings(home=tmp_path, ray_nodes=2, ray_port=7000)
    assert nodes.ray_cluster_address == "127.0.0.1:7000" and nodes.ray_on_loopback
    joined = load_settings(home=tmp_path, ray_address="10.0.0.5:6379")
    assert joined.ray_cluster_address == "10.0.0.5:6379" and not joined.ray_on_loopback
    with pytest.raises(ConfigError, match="RADCLOUD_RAY_ADDRESS joins another one"):
        load_settings(home=tmp_path, ray_nodes=2, ray_address="auto")
    # the GCS, the client server and one dashboard agent per node: ray_port + 0 ... + 3
    with pytest.raises(ConfigError, match=r"RADCLOUD_RAY_PORT \+ 3 and RADCLOUD_API_PORT"):
        load_settings(home=tmp_path, ray_nodes=2, ray_port=7997)
    assert load_settings(home=tmp_path, ray_port=8000).ray_port == 8000  # one node: no cluster


def test_postgresql_index_needs_its_url() -> None:
    with pytest.raises(ConfigError, match="RADCLOUD_ORTHANC_POSTGRESQL_URL"):
        load_settings(orthanc_index="postgresql")


def test_missing_config_file_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RADCLOUD_CONFIG_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="RADCLOUD_CONFIG_FILE"):
        load_settings()


def test_cli_exits_2_naming_the_bad_setting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADCLOUD_")}
    env |= {"RADCLOUD_HOME": str(tmp_path), "RADCLOUD_API_PORT": "-1"}
    result = subprocess.run(
        [sys.executable, "-m", "radcloud", "status"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "RADCLOUD_API_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_secrets_generated_once_private_and_stable(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    first = load_secrets(settings)
    path = settings.paths.secrets_file
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_secrets(settings).jwt_signing_key == first.jwt_signing_key
    assert len(first.jwt_signing_key) >= 32
    assert len({first.jwt_signing_key, first.audit_hmac_key, first.orthanc_password}) == 3
    assert first.orthanc_password not in repr(first)
    other = load_secrets(load_settings(home=tmp_path / "other"))
    assert other.jwt_signing_key != first.jwt_signing_key


def test_world_readable_secrets_refused_in_prod(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    load_secrets(settings)
    settings.paths.secrets_file.chmod(0o644)
    with pytest.raises(SecretsError, match="0644, expected 0600"):
        load_secrets(settings)


def test_incomplete_secrets_file_is_reported(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    settings.paths.secrets_file.write_text(json.dumps({"jwt_signing_key": "x"}))
    settings.paths.secrets_file.chmod(0o600)
    with pytest.raises(SecretsError, match="incomplete"):
        load_secrets(settings)


def test_secret_added_later_is_generated_once_into_an_older_file(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    path = settings.paths.secrets_file
    older = {"jwt_signing_key": "j" * 64, "audit_hmac_key": "a" * 64, "orthanc_password": "o" * 64}
    path.write_text(json.dumps(older))
    path.chmod(0o600)
    code = (
        "from core.config import load_settings; from core.secrets import load_secrets; "
        f"print(load_secrets(load_settings(home={str(tmp_path)!r})).deid_hmac_key)"
    )
    processes = [  # started together: they must agree on one generated key
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    keys = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert len(keys) == 1 and len(keys.pop()) >= 32
    saved = json.loads(path.read_text())
    assert {k: saved[k] for k in older} == older  # nothing else changed
    assert saved["deid_hmac_key"] == load_secrets(settings).deid_hmac_key
    assert path.stat().st_mode & 0o777 == 0o600


def test_short_jwt_secret_only_in_dev_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        load_settings(home=tmp_path, jwt_secret="dev-secret")
    dev = load_settings(home=tmp_path, jwt_secret="dev-secret", mode="dev")
    assert load_secrets(dev).jwt_signing_key == "dev-secret"


def test_external_algorithm_needs_a_key_set() -> None:
    with pytest.raises(ConfigError, match="RADCLOUD_JWT_JWKS_URL"):
        load_settings(jwt_algorithm="RS256")


def test_identity_provider_needs_an_issuer_and_https_outside_dev(tmp_path: Path) -> None:
    oidc = {"home": tmp_path, "jwt_algorithm": "RS256"}
    idp = "https://idp.hospital.example"
    with pytest.raises(ConfigError, match="RADCLOUD_JWT_JWKS_ISSUER"):
        load_settings(**oidc, jwt_jwks_url=f"{idp}/certs")
    with pytest.raises(ConfigError, match="is not an https:// URL"):
        load_settings(
            **oidc, jwt_jwks_url=f"{idp}/certs", jwt_jwks_issuer="http://idp.hospital.example"
        )
    with pytest.raises(ConfigError, match=r"JWT_JWKS_URL .* is plain HTTP"):
        load_settings(**oidc, jwt_jwks_url="http://idp.hospital.example/certs", jwt_jwks_issuer=idp)
    assert load_settings(**oidc, jwt_jwks_url=f"{idp}/certs", jwt_jwks_issuer=idp).jwt_jwks_url
    copied = load_settings(
        **oidc, jwt_jwks_url="file:///etc/radcloud/jwks.json", jwt_jwks_issuer=idp
    )
    assert copied.jwt_jwks_issuer == idp
    dev = load_settings(
        **oidc,
        mode="dev",
        jwt_jwks_url="http://127.0.0.1:8080/certs",
        jwt_jwks_issuer="http://127.0.0.1:8080",
    )
    assert dev.jwt_jwks_url == "http://127.0.0.1:8080/certs"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "pacs.example.org", "::"])  # noqa: S104
def test_prod_beyond_loopback_needs_tls_on_every_listener(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="RADCLOUD_API_TLS_CERTIFICATE and RADCLOUD_GATEWAY"):
        load_settings(home=tmp_path, bind_host=host)
    api_only = {"api_tls_certificate": "a.crt", "api_tls_private_key": "a.key"}
    with pytest.raises(ConfigError, match="expected RADCLOUD_GATEWAY_TLS_CERTIFICATE"):
        load_settings(home=tmp_path, bind_host=host, **api_only)
    both = api_only | {"gateway_tls_certificate": "g.crt", "gateway_tls_private_key": "g.key"}
    settings = load_settings(home=tmp_path, bind_host=host, **both)
    assert settings.api_url.startswith("https://")
    assert load_settings(home=tmp_path, bind_host=host, mode="dev").api_url.startswith("http://")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_prod_on_loopback_needs_no_tls(tmp_path: Path, host: str) -> None:
    assert load_settings(home=tmp_path, bind_host=host).mode is Mode.PROD


def test_api_tls_files_come_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be set together"):
        load_settings(home=tmp_path, api_tls_certificate="a.crt")


def test_secret_settings_are_hidden_and_named(tmp_path: Path) -> None:
    from core.config import secret_setting_names, settings_env

    assert secret_setting_names() >= {
        "jwt_secret",
        "notify_signing_key",
        "database_url",
        "orthanc_postgresql_url",
    }
    settings = load_settings(
        home=tmp_path,
        jwt_secret="s" * 40,
        database_url="postgresql+psycopg://radcloud:pw-in-url@db/radcloud",
    )
    env = settings_env(settings)
    assert not any("s" * 40 in value or "pw-in-url" in value for value in env.values())
    assert "pw-in-url" not in repr(settings)
