"""A whole scratch radcloud for the end-to-end suites, on the embedded default or the scale
profile, and pushing SYNTHETIC studies into it with dcmtk's storescu.

``sqlite`` is the embedded default (SQLite application database, Orthanc's SQLite index);
``postgresql`` runs radcloud's managed PostgreSQL server (``RADCLOUD_POSTGRESQL_MANAGED``) in a
data directory of its own, for the application database and, with ``orthanc_index=True``,
Orthanc's index too (``RADCLOUD_ORTHANC_INDEX=postgresql``: the scale profile).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._env import free_ports, register_sender

__all__ = ["ENGINES", "Platform", "model_source", "scratch_platform", "write_study"]

ENGINES = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Platform:
    """A running scratch radcloud: its settings, its supervisor and its scratch directory."""

    settings: Any  # core.config.Settings
    supervisor: Any  # radcloud.services.Supervisor
    scratch: Path


def model_source(tmp: Path, models_from: Path | None, slim: bool) -> Path:
    """The registry directory to copy: slim models registered in ``tmp``, or a home's models.

    Raises
    ------
    FileNotFoundError
        ``models_from`` has no registered models.
    """
    from benchmarks._models import register_models

    if slim or models_from is None:
        register_models(tmp / "slim-models", slim=True)
        return tmp / "slim-models"
    source = models_from / "models"
    if not any(source.glob("*/*")):
        raise FileNotFoundError(f"no models in {source}: run `make demo` (or radcloud train) first")
    return source


@contextlib.contextmanager
def scratch_platform(
    database: str,
    *,
    models_from: Path | None = None,
    slim: bool = True,
    sender_ae: str,
    orthanc_index: bool = False,
    prefix: str = "radcloud-bench-",
    **overrides: Any,
) -> Iterator[Platform]:
    """Start a radcloud on free ports in a temporary home, with the models of ``models_from``
    (or slim random-weight ones) and ``sender_ae`` registered as a sender; stopped on exit.

    Parameters
    ----------
    database
        ``sqlite`` (the embedded default) or ``postgresql`` (radcloud's managed server).
    orthanc_index
        With ``postgresql``: Orthanc's index on the managed server as well.
    overrides
        More settings (``gateway_stable_seconds``, ``log_level``, ...).

    Raises
    ------
    ValueError
        An unknown ``database``.
    """
    from core.config import load_settings
    from radcloud.services import Supervisor

    if database not in ENGINES:
        raise ValueError(f"database must be one of {', '.join(ENGINES)}, not {database!r}")
    with (
        tempfile.TemporaryDirectory(prefix=prefix) as tmp,
        tempfile.TemporaryDirectory(prefix=f"{prefix}pg-") as pg_root,
    ):
        Path(pg_root).chmod(0o711)  # as root, the server runs as `postgres`, who must reach it
        source = model_source(Path(tmp), models_from, slim)
        ports = free_ports(7)
        managed: dict[str, Any] = (
            {
                "postgresql_managed": True,
                "postgresql_port": ports[6],
                "postgresql_data_dir": Path(pg_root) / "data",
            }
            | ({"orthanc_index": "postgresql"} if orthanc_index else {})
            if database == "postgresql"
            else {}
        )
        settings = load_settings(
            **{
                "home": Path(tmp) / "home",
                "api_port": ports[0],
                "gateway_port": ports[1],
                "gateway_metrics_port": ports[2],
                "orthanc_http_port": ports[3],
                "orthanc_dicom_port": ports[4],
                "gateway_stow_port": ports[5],
                "log_level": "WARNING",
            }
            | managed
            | overrides
        )
        shutil.copytree(source, settings.paths.models_dir)
        supervisor = Supervisor(settings)
        try:
            supervisor.up()
            register_sender(settings, sender_ae, "Benchmark (SYNTHETIC)")
            yield Platform(settings, supervisor, Path(tmp))
        finally:
            supervisor.down()


def write_study(datasets: list[Any], folder: Path) -> list[Path]:
    """Write a study's datasets as DICOM files (PS3.10) in ``folder``, in order."""
    folder.mkdir(parents=True)
    paths = []
    for number, dataset in enumerate(datasets):
        paths.append(folder / f"{number:04d}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths
