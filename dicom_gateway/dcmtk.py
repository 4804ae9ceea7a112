"""Drive dcmtk's ``storescu`` as a PACS or modality would, and read what happened to each file.

Used by ``make demo`` (pushing studies to the gateway), the ingest benchmark and the tests, so
that an independent DICOM implementation, not our own code, is on the sending side. dcmtk is
run with ``TCP_NODELAY=1``: without it Nagle's algorithm and delayed ACKs cost ~40 ms per
DIMSE message on loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["StoreReport", "TlsFiles", "dcmtk_environment", "require_dcmtk", "storescu"]

_SENDING = re.compile(r"Sending file: (.+)$")
_RESPONSE = re.compile(r"Received Store Response \((.+)\)")
_BAD_FILE = re.compile(r"Bad DICOM file: (.+?):")
_INSTALL = "apt-get install -y dcmtk"


@dataclass(frozen=True)
class TlsFiles:
    """Client side of a TLS association (PS3.15 B.1)."""

    private_key: Path
    certificate: Path
    trusted_certificates: Path | None = None


@dataclass
class StoreReport:
    """What storescu reported: each file's C-STORE status text, and how it exited."""

    returncode: int
    output: str
    statuses: dict[Path, str] = field(default_factory=dict)

    @property
    def stored(self) -> list[Path]:
        """Files the peer acknowledged with Success (or a warning status, PS3.4 B.2.3)."""
        return [
            path
            for path, status in self.statuses.items()
            if status == "Success" or status.startswith("Warning")
        ]

    @property
    def failed(self) -> dict[Path, str]:
        """Files that were not stored, with the status or reason."""
        stored = set(self.stored)
        return {path: status for path, status in self.statuses.items() if path not in stored}


def require_dcmtk(program: str = "storescu") -> str:
    """The path of a dcmtk program, or ``FileNotFoundError`` naming the install command."""
    path = shutil.which(program)
    if path is None:
        raise FileNotFoundError(f"{program} (dcmtk) is not installed; install it with: {_INSTALL}")
    return path


def dcmtk_environment() -> dict[str, str]:
    """The environment dcmtk programs should run with."""
    return {**os.environ, "TCP_NODELAY": "1"}


def _parse(output: str) -> dict[Path, str]:
    statuses: dict[Path, str] = {}
    current: Path | None = None
    for line in output.splitlines():
        if match := _SENDING.search(line):
            current = Path(match.group(1).strip())
            statuses[current] = "not answered"
        elif (match := _RESPONSE.search(line)) and current is not None:
            statuses[current] = match.group(1)
        elif match := _BAD_FILE.search(line):
            statuses[Path(match.group(1).strip())] = "unreadable: not sent"
        elif "Store Failed" in line and current is not None:
            statuses[current] = f"failed: {line.split('Store Failed', 1)[1].strip(' ,:')}"
    return statuses


def storescu(
    files: Sequence[Path],
    *,
    host: str,
    port: int,
    calling_ae: str,
    called_ae: str,
    tls: TlsFiles | None = None,
    timeout_s: float = 600.0,
    extra_args: Sequence[str] = (),
) -> StoreReport:
    """Send ``files`` in one association and report each file's outcome.

    Parameters
    ----------
    files
        DICOM files (storescu proposes each file's own transfer syntax).
    host, port, calling_ae, called_ae
        The peer and the AE titles to use.
    tls
        Use a TLS association with these client files.
    timeout_s
        Kill storescu after this long.
    extra_args
        More storescu options.

    Returns
    -------
    StoreReport
        Exit status, full output and per-file statuses.
    """
    argv = [require_dcmtk("storescu"), "-v", "-nh", "-aet", calling_ae, "-aec", called_ae]
    if tls is not None:
        argv += ["+tls", str(tls.private_key), str(tls.certificate)]
        argv += ["+cf", str(tls.trusted_certificates)] if tls.trusted_certificates else ["-ic"]
    argv += [*extra_args, host, str(port), *(str(path) for path in files)]
    result = subprocess.run(
        argv,
        env=dcmtk_environment(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    output = result.stdout + result.stderr
    return StoreReport(result.returncode, output, _parse(output))
