"""Deflate bombs against the real gateway process: over DIMSE and over STOW-RS (through the API).

The bomb is a DICOM Part 10 file in Deflated Explicit VR Little Endian (PS3.5 A.5) of about
1 MiB whose data set inflates past the gateway's instance limit (1 GiB by default): its pixel
data is zeros. It is built by compressing generated zeros in 1 MiB steps, so the test never
holds the inflated gigabyte itself. The gateway must refuse it (0xA700 over DIMSE, Failure
Reason 0xA700 in the Store Instances Response) without inflating it: its peak resident memory
(``VmHWM``, reset through ``/proc/<pid>/clear_refs`` before each attack) grows by far less than
the inflated size. The gateway keeps serving afterwards.

Over DIMSE once with each DICOM edge (README "The ingest edge"): the Orthanc edge accepts no
deflated transfer syntax, so the bomb is refused at negotiation (no presentation context is
accepted) and never reaches Orthanc's memory; Orthanc's peak memory is measured instead.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from core.config import GatewayEdge
from tests.conftest import EDGES, STOW_HOSPITAL, Stack, edge_id, stack_with_edge

pytestmark = pytest.mark.integration

SENDER = "BOMBER"
_MIB = 1024 * 1024
_INFLATED_MIB = 1100  # past the 1024 MiB default instance limit
_BOUNDED_GROWTH = 200 * _MIB  # far below the inflated size; pydicom would need all of it


def deflate_bomb(study_instance_uid: str, pixel_mib: int = _INFLATED_MIB) -> bytes:
    """A deflated Part 10 CT image whose pixel data is ``pixel_mib`` MiB of zeros."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.StudyInstanceUID = study_instance_uid
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.BitsAllocated = 1024, 512, 16
    ds.NumberOfFrames = pixel_mib
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)  # Explicit VR Little Endian, unchanged by deflation (PS3.5 A.5)
    length = pixel_mib * _MIB
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)
    deflater = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    pieces = [deflater.compress(head.getvalue() + pixel_header)]
    zeros = bytes(_MIB)
    pieces.extend(deflater.compress(zeros) for _ in range(pixel_mib))
    pieces.append(deflater.flush())
    meta = DicomBytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return bytes(128) + b"DICM" + meta.getvalue() + b"".join(pieces)


@pytest.fixture(scope="module")
def bomb_study() -> str:
    return generate_uid()


@pytest.fixture(scope="module")
def bomb_file(tmp_path_factory: pytest.TempPathFactory, bomb_study: str) -> Path:
    path = tmp_path_factory.mktemp("bombs") / "bomb.dcm"
    path.write_bytes(deflate_bomb(bomb_study))
    return path


@pytest.fixture(scope="module", params=EDGES, ids=edge_id)
def gateway(request: pytest.FixtureRequest) -> Stack:
    """The session's stack of each DICOM edge with the bomber registered."""
    stack = stack_with_edge(request, request.param)
    stack.add_sender(SENDER, "Bomb Hospital")
    return stack


class PeakMemory:
    """A process's peak resident memory, reset now (``clear_refs`` 5) and read later."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        self.start = self._hwm()

    def _hwm(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmHWM in /proc/{self.pid}/status")

    def growth(self) -> int:
        return self._hwm() - self.start


def _c_store(port: int, path: Path) -> pydicom.Dataset | None:
    """C-STORE of ``path`` offered in the deflated transfer syntax only; the response, or
    ``None`` when the peer accepted no presentation context for it."""
    ae = AE(ae_title=SENDER)
    ae.add_requested_context(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)
    ae.requested_contexts[0].transfer_syntax = [DeflatedExplicitVRLittleEndian]
    assoc = ae.associate("127.0.0.1", port, ae_title="RADCLOUD")
    if not assoc.is_established:  # Orthanc ends an association with no acceptable context
        return None
    try:
        if not assoc.accepted_contexts:
            return None
        return assoc.send_c_store(path)  # sent as it is in the file, never decoded
    finally:
        assoc.release()


def _still_serves(stack: Stack, *, dimse: bool = True) -> None:
    answer = httpx.get(stack.settings.gateway_health_url, timeout=10)
    assert answer.status_code == 200, answer.text
    if dimse:
        _echo(stack)
    if stack.supervisor is None:  # the whole radcloud: the API too
        assert stack.client("admin").get("/api/users").status_code == 200


def _echo(stack: Stack) -> None:
    ae = AE(ae_title=SENDER)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", stack.settings.gateway_port, ae_title="RADCLOUD")
    assert assoc.is_established, "the DICOM edge no longer serves"
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_deflate_bomb_over_dimse_is_refused_without_inflating(
    gateway: Stack, bomb_file: Path
) -> None:
    assert bomb_file.stat().st_size < 8 * _MIB
    door = "gateway" if gateway.edge is GatewayEdge.PYNETDICOM else "orthanc"
    peak = PeakMemory(gateway.pid(door))
    status = _c_store(gateway.settings.gateway_port, bomb_file)
    if gateway.edge is GatewayEdge.PYNETDICOM:
        assert status is not None and status.Status == 0xA700, status
        assert "inflates beyond" in str(status.get("ErrorComment", ""))
    else:  # no deflated transfer syntax on the Orthanc edge: refused at negotiation
        assert status is None, status
    assert peak.growth() < _BOUNDED_GROWTH, f"{door} peak memory grew {peak.growth() >> 20} MiB"
    _still_serves(gateway)


def _stow(stack: Stack, data: bytes) -> httpx.Response:
    boundary = "bomb-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with stack.client("pacs") as client:
        return client.post(
            "/dicom-web/studies",
            content=body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
            timeout=120,
        )


def test_deflate_bomb_over_stow_is_refused_without_inflating(
    stack: Stack, bomb_file: Path, bomb_study: str
) -> None:
    assert STOW_HOSPITAL  # the pacs token stores for this hospital
    gateway_peak = PeakMemory(stack.pid("gateway"))
    answer = _stow(stack, bomb_file.read_bytes())
    assert answer.status_code == 409, answer.text  # every instance failed (PS3.18 10.5.3)
    failed = answer.json()["00081198"]["Value"]
    assert [item["00081197"]["Value"][0] for item in failed] == [0xA700]
    assert gateway_peak.growth() < _BOUNDED_GROWTH
    with stack.archive() as archive:
        assert archive.search_for_studies({"StudyInstanceUID": bomb_study}) == []
    _still_serves(stack, dimse=False)
