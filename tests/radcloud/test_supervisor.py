"""The supervisor against a real Orthanc, and against a component that dies at once."""

from __future__ import annotations

import io
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file

from core.config import Settings, load_settings
from core.exceptions import PortInUseError, StartupError
from core.secrets import Secrets, load_secrets
from radcloud.services import (
    Component,
    Supervisor,
    check_ports_free,
    components,
    orthanc_component,
)
from radcloud.services.ray_cluster import ray_temp_dir
from tests.helpers import free_ports, orthanc_client, wait_until

pytestmark = pytest.mark.integration


def _settings(home: Path, **overrides: object) -> Settings:
    http, dicom, api, gateway = free_ports(4)
    values: dict[str, object] = {
        "home": home,
        "orthanc_http_port": http,
        "orthanc_dicom_port": dicom,
        "api_port": api,
        "gateway_port": gateway,
        "startup_timeout_s": 30.0,
    }
    values.update(overrides)
    return load_settings(**values)


def _process_gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def _port_free(port: int) -> bool:
    try:
        check_ports_free([(port, "RADCLOUD_ORTHANC_HTTP_PORT")])
    except PortInUseError:
        return False
    return True


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[tuple[Supervisor, Settings, Secrets]]:
    """A supervisor of Orthanc alone; Orthanc missing is a failure, as for the ``stack``."""
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed: run `make install` (apt-get install orthanc)")
    settings = _settings(tmp_path / "home")
    secrets = load_secrets(settings)
    supervisor = Supervisor(settings, [orthanc_component(settings, secrets, as_edge=False)])
    try:
        yield supervisor, settings, secrets
    finally:
        supervisor.down()


def test_orthanc_lifecycle(orthanc: tuple[Supervisor, Settings, Secrets], tmp_path: Path) -> None:
    supervisor, settings, secrets = orthanc

    (status,) = supervisor.up()
    assert status.name == "orthanc"
    assert status.running and status.healthy
    assert status.pid is not None
    assert settings.paths.database_file.exists()  # migrations ran
    assert (settings.paths.log_dir / "orthanc.log").exists()

    # store one instance and read it back through the project's client
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    original = pydicom.dcmread(path)
    with orthanc_client(settings, secrets) as client:
        stored = client.post_instances(Path(path).read_bytes())
        assert stored["Status"] == "Success"
        data = client.get_instances_id_file(stored["ID"])
    copy = pydicom.dcmread(io.BytesIO(data))
    assert copy.SOPInstanceUID == original.SOPInstanceUID
    assert copy.PixelData == original.PixelData

    # no password, no access
    assert httpx.get(f"{settings.orthanc_url}/system", timeout=5).status_code == 401

    # up again is harmless
    (again,) = supervisor.up()
    assert again.pid == status.pid and again.healthy

    # a second instance on the same HTTP port is refused before anything starts
    other = _settings(tmp_path / "other", orthanc_http_port=settings.orthanc_http_port)
    other_secrets = load_secrets(other)
    with pytest.raises(PortInUseError) as excinfo:
        Supervisor(other, [orthanc_component(other, other_secrets, as_edge=False)]).up()
    assert excinfo.value.port == settings.orthanc_http_port
    assert excinfo.value.setting == "RADCLOUD_ORTHANC_HTTP_PORT"

    assert supervisor.down() == ["orthanc"]
    assert wait_until(lambda: _process_gone(status.pid), timeout_s=20)
    assert wait_until(lambda: _port_free(settings.orthanc_http_port), timeout_s=20)
    (after,) = supervisor.status()
    assert not after.running and not after.healthy and after.pid is None
    assert supervisor.down() == []  # harmless when nothing runs


def test_stale_pid_file_is_replaced(orthanc: tuple[Supervisor, Settings, Secrets]) -> None:
    supervisor, settings, _ = orthanc
    pid_file = settings.paths.run_dir / "orthanc.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text("999999999\n")  # no such process
    (status,) = supervisor.up()
    assert status.healthy
    assert status.pid != 999999999


def test_component_that_exits_reports_its_log_tail(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    boom = Component.create(
        settings,
        name="boom",
        argv=[sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
        health=lambda: False,
        url="-",
    )
    supervisor = Supervisor(settings, [boom])
    with pytest.raises(StartupError) as excinfo:
        supervisor.up()
    assert excinfo.value.component == "boom"
    assert excinfo.value.log_file == settings.paths.log_dir / "boom.log"
    assert "status 3" in excinfo.value.reason
    assert "boom" in excinfo.value.reason.splitlines()[-1]
    assert not (settings.paths.run_dir / "boom.pid").exists()
    (status,) = supervisor.status()
    assert not status.running


def test_earlier_components_stay_up_when_a_later_one_fails(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    sleeper = Component.create(
        settings,
        name="sleeper",
        argv=[sys.executable, "-c", "import time; time.sleep(600)"],
        health=lambda: True,
        url="-",
    )
    boom = Component.create(
        settings,
        name="boom",
        argv=[sys.executable, "-c", "raise SystemExit(1)"],
        health=lambda: False,
        url="-",
    )
    supervisor = Supervisor(settings, [sleeper, boom], stop_timeout_s=5)
    try:
        with pytest.raises(StartupError, match="boom"):
            supervisor.up()
        running = {status.name: status for status in supervisor.status()}
        assert running["sleeper"].running
        assert not running["boom"].running
        pid = running["sleeper"].pid
        assert pid is not None
    finally:
        assert supervisor.down() == ["sleeper"]
    assert wait_until(lambda: _process_gone(pid))


def test_ray_nodes_start_after_the_gateway_and_before_the_api(tmp_path: Path) -> None:
    """``RADCLOUD_RAY_NODES=3``: a head and two worker nodes on loopback, on their ports
    (the whole cluster runs in ``tests/radcloud/test_ray_cluster.py``)."""
    settings = load_settings(home=tmp_path, ray_nodes=3, ray_port=7000, ray_num_cpus=2)
    started = components(settings, load_secrets(settings))
    names = [component.name for component in started]
    assert names[-5:] == ["gateway", "ray-head", "ray-worker-1", "ray-worker-2", "api"]
    head, worker = started[-4], started[-2]
    assert {"--head", "--port=7000", "--num-cpus=2", "--include-dashboard=false"} <= set(head.argv)
    assert "--node-ip-address=127.0.0.1" in head.argv and "--address" not in " ".join(head.argv)
    assert "--address=127.0.0.1:7000" in worker.argv and "--head" not in worker.argv
    assert [port for port, _ in head.ports] == [7000, 7001, 7002]
    assert [port for port, _ in worker.ports] == [7004]  # its dashboard agent: + 2 + k
    # the instance's own Ray temporary directory (not /tmp/ray: see ray_temp_dir)
    assert f"--temp-dir={ray_temp_dir(settings)}" in worker.argv
    assert ray_temp_dir(settings) != ray_temp_dir(load_settings(home=tmp_path / "other"))
    one = load_settings(home=tmp_path)
    assert not [c for c in components(one, load_secrets(one)) if c.name.startswith("ray-")]
