"""The Orthanc DICOM edge (``RADCLOUD_GATEWAY_EDGE=orthanc``) end to end: a real Orthanc 1.10
with radcloud's plugin, started by radcloud's own component code, driven by dcmtk's storescu,
findscu, movescu and storescp (``TCP_NODELAY=1``) and by pynetdicom peers.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import select

from core.config import GatewayEdge, load_settings
from core.db.models import OutboxEvent
from core.security import Actor
from dicom_gateway.dcmtk import TlsFiles, dcmtk_environment, storescu
from dicom_gateway.senders import SenderRegistry
from tests.dicom_gateway.dicom_files import synthetic_ct
from tests.dicom_gateway.orthanc_edge import OrthancEdge, start_orthanc_edge
from tests.helpers import free_port, wait_until
from tests.pki import CertificateAuthority

pytestmark = pytest.mark.integration

SENDER, HOSPITAL = "EDGE_CT", "Edge General"
OTHER, OTHER_HOSPITAL = "EDGE_MR", "Edge Other"
_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")
_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancEdge]:
    running = start_orthanc_edge(
        tmp_path_factory.mktemp("orthanc-edge"), gateway=True, gateway_stable_seconds=1.0
    )
    try:
        running.add_sender(SENDER, HOSPITAL)
        running.add_sender(OTHER, OTHER_HOSPITAL)
        yield running
    finally:
        running.stop()


def dcmtk(*argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        env=dcmtk_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def store(
    edge: OrthancEdge, *files: Path, calling_ae: str = SENDER, called_ae: str | None = None
) -> tuple[list[int], str]:
    """storescu ``files`` in one association: each C-STORE response's status, and the output."""
    report = storescu(
        list(files),
        host="127.0.0.1",
        port=edge.port,
        calling_ae=calling_ae,
        called_ae=called_ae or edge.ae_title,
        extra_args=["-d"],
    )
    return [int(code, 16) for code in _STATUS.findall(report.output)], report.output


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def uid_of(path: Path, keyword: str = "SOPInstanceUID") -> str:
    return str(getattr(pydicom.dcmread(path, stop_before_pixels=True), keyword))


def with_values(data: bytes, **values: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        buffer = io.BytesIO()
        ds.save_as(buffer)
    return buffer.getvalue()


def study_events(edge: OrthancEdge, study: str) -> list[tuple[str, int]]:
    """The outbox's events of ``study``: topic and instances counted, oldest first."""
    with edge.db.session() as session:
        rows = session.scalars(
            select(OutboxEvent).where(OutboxEvent.key == study).order_by(OutboxEvent.id)
        ).all()
        return [(row.topic, row.payload["instance_count"]) for row in rows]


# -- admission -------------------------------------------------------------------------------


def test_a_registered_sender_stores_and_the_study_is_retrievable(
    edge: OrthancEdge, tmp_path: Path
) -> None:
    study = generate_uid()
    files = [write(tmp_path / f"{i}.dcm", synthetic_ct(study, instance=i)) for i in range(3)]
    statuses, output = store(edge, *files)
    assert statuses == [0, 0, 0], output
    held = set(edge.instances())
    assert {uid_of(path) for path in files} <= held
    with edge.client() as client:
        [found] = client.post(
            "/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study}}
        ).json()
        instance = client.get(f"/studies/{found}/instances").json()[0]["ID"]
        data = client.get(f"/instances/{instance}/file").content
    assert data[:128] == bytes(128)  # the preamble DCMTK writes
    assert wait_until(
        lambda: any(r["resource_id"] == study for r in edge.audit_records("110104")),
        timeout_s=20,
    )
    [record] = [r for r in edge.audit_records("110104") if r["resource_id"] == study]
    assert record["detail"]["instances"] == 3
    assert record["detail"]["hospital"] == HOSPITAL


def test_a_pynetdicom_peer_stores(edge: OrthancEdge) -> None:
    ds = pydicom.dcmread(io.BytesIO(synthetic_ct()))
    ae = AE(ae_title=SENDER)
    ae.add_requested_context(_CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", edge.port, ae_title=edge.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == 0x0000
    assert str(ds.SOPInstanceUID) in edge.instances()


def test_unknown_calling_ae_is_rejected_at_association(edge: OrthancEdge, tmp_path: Path) -> None:
    statuses, output = store(edge, write(tmp_path / "a.dcm", synthetic_ct()), calling_ae="NOBODY")
    assert statuses == []
    assert "Calling AE Title Not Recognized" in output


def test_sender_from_another_host_is_rejected_at_association(
    edge: OrthancEdge, tmp_path: Path
) -> None:
    edge.add_sender("EDGE_ELSEWHERE", HOSPITAL, "127.0.0.2")
    statuses, output = store(
        edge, write(tmp_path / "a.dcm", synthetic_ct()), calling_ae="EDGE_ELSEWHERE"
    )
    assert statuses == []
    assert "Association Rejected" in output


def test_wrong_called_ae_is_rejected_at_association(edge: OrthancEdge, tmp_path: Path) -> None:
    statuses, output = store(edge, write(tmp_path / "a.dcm", synthetic_ct()), called_ae="ELSE")
    assert statuses == []
    assert "Called AE Title Not Recognized" in output


def test_peers_may_not_ask_for_storage_commitment(edge: OrthancEdge) -> None:
    """Orthanc would answer N-ACTION storage commitment for any study: the mirrored peers
    may not ask (radcloud offers no storage commitment)."""
    peers = edge.get("/modalities?expand")
    mirrored = [p for p in peers.values() if p["AET"] in {SENDER, OTHER}]
    assert len(mirrored) == 2, peers
    assert all(p["AllowNAction"] is False and p["AllowEventReport"] is False for p in mirrored)


def test_a_removed_sender_is_rejected_again(edge: OrthancEdge, tmp_path: Path) -> None:
    edge.add_sender("EDGE_GONE", HOSPITAL)
    edge.senders.remove_sender("EDGE_GONE", actor=Actor.cli())
    assert wait_until(lambda: not edge.has_peer("EDGE_GONE"), timeout_s=15)
    statuses, output = store(
        edge, write(tmp_path / "a.dcm", synthetic_ct()), calling_ae="EDGE_GONE"
    )
    assert statuses == []
    assert "Calling AE Title Not Recognized" in output


def test_the_orthanc_edge_refuses_senders_it_cannot_hold_to_their_host(edge: OrthancEdge) -> None:
    registry = SenderRegistry(edge.db, edge.audit, edge=GatewayEdge.ORTHANC)
    for host in ("10.1.2.0/24", "modality.example", None):
        with pytest.raises(ValueError, match="Orthanc DICOM edge"):
            registry.add_sender("EDGE_CIDR", HOSPITAL, host, actor=Actor.cli())


# -- refusals --------------------------------------------------------------------------------


def test_non_conformant_instances_are_refused_and_quarantined_with_their_bytes(
    edge: OrthancEdge, tmp_path: Path
) -> None:
    before = {e.entry_id for e in edge.quarantine.list()}
    bad = [
        write(tmp_path / "a.dcm", with_values(synthetic_ct(), StudyInstanceUID="1.2.abc")),
        write(tmp_path / "b.dcm", with_values(synthetic_ct(), SeriesInstanceUID="1." + "9" * 70)),
    ]
    good = write(tmp_path / "good.dcm", synthetic_ct())
    statuses, output = store(edge, *bad, good)
    assert statuses == [0xA900, 0xA900, 0x0000], output
    entries = [e for e in edge.quarantine.list() if e.entry_id not in before]
    assert len(entries) == 2
    assert all(e.source == "dimse" and e.sender_ae_title == SENDER for e in entries)
    assert all(e.hospital == HOSPITAL for e in entries)
    sent = {path.name: pydicom.dcmread(path) for path in bad}
    kept = [pydicom.dcmread(io.BytesIO(edge.quarantine.data(e.entry_id))) for e in entries]
    assert {str(ds.SOPInstanceUID) for ds in kept} == {
        str(ds.SOPInstanceUID) for ds in sent.values()
    }
    for ds in kept:  # the data sets as received, pixels and all
        [original] = [o for o in sent.values() if o.SOPInstanceUID == ds.SOPInstanceUID]
        assert ds.PixelData == original.PixelData
        assert ds.get("SeriesInstanceUID") == original.get("SeriesInstanceUID")
    held = set(edge.instances())
    assert uid_of(good) in held
    assert not {uid_of(path) for path in bad} & held


def test_an_instance_without_a_series_uid_is_refused_by_orthanc_itself(
    edge: OrthancEdge, tmp_path: Path
) -> None:
    """Orthanc needs the Study, Series and SOP Instance UIDs to index an instance: without one
    it refuses it before the plugin sees it, with 0xA700, and nothing is quarantined (the
    pynetdicom edge answers 0xA900 and keeps it; README "The ingest edge")."""
    before = len(edge.quarantine.list())
    missing = write(tmp_path / "c.dcm", synthetic_ct(drop=("SeriesInstanceUID",)))
    statuses, output = store(edge, missing)
    assert statuses == [0xA700], output
    assert uid_of(missing) not in edge.instances()
    assert len(edge.quarantine.list()) == before


def test_another_hospitals_study_uid_is_refused_and_quarantined(
    edge: OrthancEdge, tmp_path: Path
) -> None:
    study = generate_uid()
    statuses, _ = store(edge, write(tmp_path / "mine.dcm", synthetic_ct(study)))
    assert statuses == [0]
    intruder = write(tmp_path / "theirs.dcm", synthetic_ct(study, instance=2))
    statuses, output = store(edge, intruder, calling_ae=OTHER)
    assert statuses == [0xC409], output
    assert uid_of(intruder) not in edge.instances()
    [entry] = [e for e in edge.quarantine.list() if e.study_instance_uid == study]
    assert entry.error == "StudyCollisionError" and entry.sender_ae_title == OTHER
    alerts = [r for r in edge.audit_records("110113") if r["resource_id"] == study]
    assert alerts and alerts[0]["detail"]["owner"] == HOSPITAL


def test_a_deflated_data_set_is_refused_at_negotiation(edge: OrthancEdge) -> None:
    ae = AE(ae_title=SENDER)
    ae.add_requested_context(_CT_IMAGE_STORAGE, DeflatedExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", edge.port, ae_title=edge.ae_title)
    try:  # Orthanc rejects an association none of whose contexts it accepts
        assert not assoc.is_established or assoc.accepted_contexts == []
    finally:
        if assoc.is_established:
            assoc.release()


def test_an_instance_over_the_size_limit_is_refused(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    small = start_orthanc_edge(tmp_path_factory.mktemp("edge-small"), gateway_max_instance_mib=1)
    try:
        small.add_sender(SENDER, HOSPITAL)
        big = write(tmp_path / "big.dcm", synthetic_ct(size=1024))  # 2 MiB of pixels
        statuses, output = store(small, big)
        assert statuses == [0xA700], output
        assert small.instances() == []
        assert small.quarantine.list() == []
    finally:
        small.stop()


# -- C-FIND, C-MOVE --------------------------------------------------------------------------


def findscu(edge: OrthancEdge, calling_ae: str, out: Path, *keys: str) -> list[pydicom.Dataset]:
    out.mkdir(exist_ok=True)
    argv = ["findscu", "-S", "-aet", calling_ae, "-aec", edge.ae_title, "-X", "-od", str(out)]
    for key in keys:
        argv += ["-k", key]
    result = dcmtk(*argv, "127.0.0.1", str(edge.port))
    assert result.returncode == 0, result.stdout
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def movescu(edge: OrthancEdge, calling_ae: str, destination: str, *keys: str) -> str:
    argv = ["movescu", "-v", "-S", "-aet", calling_ae, "-aec", edge.ae_title, "-aem", destination]
    for key in keys:
        argv += ["-k", key]
    return dcmtk(*argv, "127.0.0.1", str(edge.port)).stdout


@pytest.fixture
def two_studies(edge: OrthancEdge, tmp_path: Path) -> tuple[str, str]:
    """One study of each hospital, sent by its own sender."""
    ours, theirs = generate_uid(), generate_uid()
    statuses, _ = store(edge, write(tmp_path / "ours.dcm", synthetic_ct(ours)))
    assert statuses == [0]
    statuses, _ = store(
        edge, write(tmp_path / "theirs.dcm", synthetic_ct(theirs)), calling_ae=OTHER
    )
    assert statuses == [0]
    return ours, theirs


def test_find_answers_only_the_callers_hospitals_studies(
    edge: OrthancEdge, two_studies: tuple[str, str], tmp_path: Path
) -> None:
    ours, theirs = two_studies
    keys = ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID=SYNTH-001")
    found = {str(ds.StudyInstanceUID) for ds in findscu(edge, SENDER, tmp_path / "a", *keys)}
    assert ours in found and theirs not in found
    found = {str(ds.StudyInstanceUID) for ds in findscu(edge, OTHER, tmp_path / "b", *keys)}
    assert theirs in found and ours not in found
    by_uid = findscu(
        edge, SENDER, tmp_path / "c", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={theirs}"
    )
    assert by_uid == []
    queries = [r for r in edge.audit_records("110112") if r["user_name"] == SENDER]
    assert queries and queries[0]["detail"]["status"] == "0x0000"


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A dcmtk storescp: its port and where it writes."""
    port, received = free_port(), tmp_path / "received"
    received.mkdir()
    process = subprocess.Popen(
        ["storescp", "+xa", "-od", str(received), str(port)],
        env=dcmtk_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: dcmtk("echoscu", "127.0.0.1", str(port)).returncode == 0)
        yield port, received
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_move_sends_only_to_the_callers_hospitals_destinations(
    edge: OrthancEdge, two_studies: tuple[str, str], storescp: tuple[int, Path]
) -> None:
    ours, theirs = two_studies
    port, received = storescp
    edge.add_destination("EDGE_VIEW", "127.0.0.1", port, HOSPITAL)
    edge.add_destination("EDGE_THEIRS", "127.0.0.1", port, OTHER_HOSPITAL)
    output = movescu(
        edge, SENDER, "EDGE_VIEW", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={ours}"
    )
    assert "Final Move Response (Success)" in output, output
    assert {uid_of(path, "StudyInstanceUID") for path in received.iterdir()} == {ours}
    # another hospital's study: out of scope, so nothing to send (as on the pynetdicom edge)
    movescu(edge, SENDER, "EDGE_VIEW", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={theirs}")
    # another hospital's destination, an unknown one: refused (Orthanc 1.10 answers a warning)
    for destination in ("EDGE_THEIRS", "NOWHERE"):
        output = movescu(
            edge, SENDER, destination, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={ours}"
        )
        assert "Final Move Response (Success)" not in output, output
    assert {uid_of(path, "StudyInstanceUID") for path in received.iterdir()} == {ours}
    moved = [r for r in edge.audit_records("110104") if r["action"] == "R"]
    assert {r["resource_id"] for r in moved} == {ours}
    alerts = {r["detail"].get("destination") for r in edge.audit_records("110113")}
    assert {"EDGE_THEIRS", "NOWHERE"} <= alerts


# -- TLS -------------------------------------------------------------------------------------


def test_tls_with_a_client_certificate(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    authority = CertificateAuthority(tmp_path_factory.mktemp("edge-pki"))
    server = authority.server()
    client = authority.client("client", SENDER, HOSPITAL)
    rogue = authority.client("rogue", SENDER, HOSPITAL, signed=False)
    secure = start_orthanc_edge(
        tmp_path_factory.mktemp("edge-tls"),
        gateway_tls_certificate=server.certificate,
        gateway_tls_private_key=server.key,
        gateway_tls_ca_certificates=authority.certificate,
    )
    try:
        secure.add_sender(SENDER, HOSPITAL)
        files = [write(tmp_path / "a.dcm", synthetic_ct())]

        def send(tls: TlsFiles | None) -> int:
            report = storescu(
                files,
                host="127.0.0.1",
                port=secure.port,
                calling_ae=SENDER,
                called_ae=secure.ae_title,
                tls=tls,
            )
            return len(report.stored)

        assert send(TlsFiles(client.key, client.certificate, authority.certificate)) == 1
        assert send(TlsFiles(rogue.key, rogue.certificate, authority.certificate)) == 0
        assert send(None) == 0  # plain DICOM on the TLS port
        assert uid_of(files[0]) in secure.instances()
    finally:
        secure.stop()


# -- durability ------------------------------------------------------------------------------


def test_sigkill_of_orthanc_mid_push_loses_nothing_acknowledged(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    victim = start_orthanc_edge(tmp_path_factory.mktemp("edge-kill"))
    try:
        victim.add_sender(SENDER, HOSPITAL)
        study = generate_uid()
        files = [
            write(tmp_path / f"{i:04d}.dcm", synthetic_ct(study, instance=i, size=128))
            for i in range(400)
        ]
        argv = ["storescu", "-v", "-aet", SENDER, "-aec", victim.ae_title, "127.0.0.1"]
        push = subprocess.Popen(
            [*argv, str(victim.port), *map(str, files)],
            env=dcmtk_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        pid = int((victim.settings.paths.run_dir / "orthanc.pid").read_text().split()[0])
        # mid-push: once Orthanc holds some of the study, never all of it
        assert wait_until(lambda: victim.get("/statistics")["CountInstances"] >= 20, timeout_s=60)
        os.kill(pid, signal.SIGKILL)
        output, _ = push.communicate(timeout=60)
        acknowledged = _acknowledged(output)
        assert 0 < len(acknowledged) < len(files), output[-2000:]
        victim.supervisor.up()  # Orthanc again, on the same storage and index
        held = set(victim.instances())
        assert {uid_of(files[i]) for i in acknowledged} <= held
    finally:
        victim.stop()


def _acknowledged(output: str) -> list[int]:
    """Indexes of the files storescu -v reports stored with Success."""
    done: list[int] = []
    current: int | None = None
    for line in output.splitlines():
        sending = re.search(r"Sending file: .*/(\d{4})\.dcm", line)
        if sending:
            current = int(sending.group(1))
        elif current is not None and "Received Store Response (Success)" in line:
            done.append(current)
            current = None
    return done


def test_orthanc_mode_settings_validate() -> None:
    settings = load_settings(gateway_edge="orthanc")
    assert settings.gateway_edge is GatewayEdge.ORTHANC


# -- completeness ----------------------------------------------------------------------------


def test_a_study_through_the_edge_gives_one_ready_event_then_an_update(
    edge: OrthancEdge, tmp_path: Path
) -> None:
    """The gateway process, with no DIMSE port of its own, follows Orthanc's change log: a study
    the edge stored is announced once with every instance; instances later, once more."""
    study = generate_uid()
    first = [write(tmp_path / f"a{i}.dcm", synthetic_ct(study, instance=i)) for i in range(4)]
    statuses, output = store(edge, *first)
    assert statuses == [0] * 4, output
    assert wait_until(lambda: study_events(edge, study), timeout_s=30)
    assert study_events(edge, study) == [("study.ready", 4)]
    later = [write(tmp_path / f"b{i}.dcm", synthetic_ct(study, instance=10 + i)) for i in range(2)]
    statuses, output = store(edge, *later)
    assert statuses == [0, 0], output
    assert wait_until(lambda: len(study_events(edge, study)) == 2, timeout_s=30)
    assert study_events(edge, study) == [("study.ready", 4), ("study.updated", 6)]
    # quiet again: nothing more is announced (two of the tracker's stable times)
    assert not wait_until(lambda: len(study_events(edge, study)) > 2, timeout_s=2)
