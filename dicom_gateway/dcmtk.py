"""Drive dcmtk's ``storescu`` as a PACS or modality would, and read what happened to each file.

Used by ``make demo`` (pushing studies to the gateway), the ingest benchmark and the tests, so
that an independent DICOM implementation, not our own code, is on the sending side. dcmtk is
run with ``TCP_NODELAY=1``: without it Nagle's algorithm and delayed ACKs cost ~40 ms per
DIMSE message on loopback.

storescu proposes uncompressed transfer syntaxes unless told otherwise, and one compressed
syntax per option (``-xs``, ``-xv``, ...). With ``as_encoded=True`` files are grouped by their
own transfer syntax and each group is sent in its own association with the matching option and
``-R`` (only the presentation contexts the files need), so compressed files travel as they are.
Syntaxes storescu has no option for (JPEG lossless process 14, say) are sent the default way,
which dcmtk 3.6.7 cannot do for compressed data: such files are reported as not sent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pydicom.errors
import pydicom.filereader

__all__ = [
    "PROPOSAL_OPTIONS",
    "StoreReport",
    "TlsFiles",
    "dcmtk_environment",
    "require_dcmtk",
    "storescu",
]

_SENDING = re.compile(r"Sending file: (.+)$")
_RESPONSE = re.compile(r"Received Store Response \((.+)\)")
_BAD_FILE = re.compile(r"Bad DICOM file: (.+?):")
_INSTALL = "apt-get install -y dcmtk"
_NOT_SENT = "not sent"

# storescu's option proposing each compressed transfer syntax (with the uncompressed ones)
PROPOSAL_OPTIONS: dict[str, str] = {
    "1.2.840.10008.1.2.1.99": "-xd",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.4.50": "-xy",  # JPEG baseline (process 1)
    "1.2.840.10008.1.2.4.51": "-xx",  # JPEG extended (process 2 & 4)
    "1.2.840.10008.1.2.4.70": "-xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "-xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "-xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "-xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "-xw",  # JPEG 2000
    "1.2.840.10008.1.2.5": "-xr",  # RLE lossless
}


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

    @property
    def refused(self) -> dict[Path, str]:
        """Files the peer answered with a failure status (sent, but not stored)."""
        return {
            path: status for path, status in self.failed.items() if not status.startswith(_NOT_SENT)
        }

    def merge(self, other: StoreReport) -> None:
        """Add another association's report to this one."""
        self.returncode = self.returncode or other.returncode
        self.output += other.output
        self.statuses.update(other.statuses)


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
            statuses[Path(match.group(1).strip())] = f"{_NOT_SENT}: unreadable by storescu"
        elif "Store Failed" in line and current is not None:
            reason = line.split("Store Failed", 1)[1].strip(" ,:")
            if statuses.get(current) == "not answered":
                statuses[current] = f"{_NOT_SENT}: {reason}"
        elif "No presentation context" in line and current is not None:
            statuses[current] = f"{_NOT_SENT}: no accepted presentation context"
    return statuses


def _transfer_syntax(path: Path) -> str | None:
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except (OSError, ValueError, pydicom.errors.InvalidDicomError):
        return None
    value = meta.get("TransferSyntaxUID")
    return str(value) if value else None


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
    as_encoded: bool = False,
) -> StoreReport:
    """Send ``files`` and report each file's outcome.

    One association, unless ``as_encoded``: then one per transfer syntax, each proposing the
    files' own syntax, so nothing is converted on the way (see the module docstring).

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

    as_encoded
        Send each file in its own transfer syntax.

    Returns
    -------
    StoreReport
        Exit status, full output and per-file statuses.
    """
    if as_encoded:
        groups: dict[str | None, list[Path]] = {}
        for path in files:
            option = PROPOSAL_OPTIONS.get(_transfer_syntax(path) or "")
            groups.setdefault(option, []).append(path)
        report = StoreReport(0, "")
        for option, group in groups.items():
            extra = [*extra_args, "-R", *([option] if option else [])]
            report.merge(
                storescu(
                    group,
                    host=host,
                    port=port,
                    calling_ae=calling_ae,
                    called_ae=called_ae,
                    tls=tls,
                    timeout_s=timeout_s,
                    extra_args=extra,
                )
            )
        return report
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
