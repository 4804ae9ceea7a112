"""The Orthanc edge's policy as plain Python, without Orthanc (the end-to-end proof is
``test_edge_orthanc.py``): the peer table mirrored from the registry, the instance read from
Orthanc's simplified JSON, and the C-STORE filter's statuses over a real database, quarantine
and ownership check.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest

from core.audit import AuditTrail
from core.db import Database, upgrade
from core.security import Actor
from dicom_gateway._retrieve import QueryRetrievePolicy
from dicom_gateway.edge.peers import PeerTable, peer_name, peers_of
from dicom_gateway.edge.policy import StoredStudies, StorePolicy, instance_info
from dicom_gateway.exceptions import NonConformantInstanceError
from dicom_gateway.ownership import StudyOwnership
from dicom_gateway.quarantine import Quarantine
from dicom_gateway.senders import DestinationInfo, SenderInfo, SenderRegistry
from tests.dicom_gateway.dicom_files import synthetic_ct

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def simplified(data: bytes) -> dict[str, Any]:
    """An instance's top-level values by keyword, as Orthanc's simplified JSON gives them."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return {
        element.keyword: str(element.value)
        for element in ds
        if element.keyword and element.VR != "SQ"
    }


@dataclass
class Received:
    """An instance as the filter reads it (what the plugin's adapter hands over)."""

    file: bytes
    calling_ae_title: str = "CT1"
    transfer_syntax_uid: str = EXPLICIT_LE
    has_pixel_data: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.file)

    def tags(self) -> dict[str, Any]:
        return simplified(self.file) | self.overrides

    def data(self) -> bytes:
        return self.file


def test_senders_and_destinations_become_one_peer_per_ae_title() -> None:
    senders = [
        SenderInfo("CT1", "A", "10.0.0.5"),
        SenderInfo("NET", "A", "10.0.0.0/24"),
        SenderInfo("NAMED", "A", "ct.example"),
        SenderInfo("WS", "A", "10.0.0.9"),
    ]
    destinations = [
        DestinationInfo("WS", "10.0.0.9", 11112, "A"),
        DestinationInfo("PACS", "pacs.example", 104, None),
        DestinationInfo("CT1", "10.0.0.6", 104, "A"),
    ]
    modalities, problems = peers_of(senders, destinations)
    assert set(modalities) == {peer_name("CT1"), peer_name("WS"), peer_name("PACS")}
    ct = modalities[peer_name("CT1")]
    assert (ct.host, ct.allow_store, ct.allow_get) == ("10.0.0.5", True, False)
    workstation = modalities[peer_name("WS")]
    assert (workstation.port, workstation.allow_move, workstation.allow_store) == (
        11112,
        True,
        True,
    )
    pacs = modalities[peer_name("PACS")]
    assert not any((pacs.allow_echo, pacs.allow_find, pacs.allow_move, pacs.allow_store))
    assert len(problems) == 3
    assert any("NET" in p for p in problems) and any("NAMED" in p for p in problems)
    assert any("destination CT1" in p for p in problems)


def test_instance_info_reads_orthancs_parse_with_the_shared_checks() -> None:
    data = synthetic_ct()
    info = instance_info(simplified(data), EXPLICIT_LE, len(data), has_pixel_data=True)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert info.sop_instance_uid == ds.SOPInstanceUID
    assert info.patient_id == ds.PatientID
    tags = simplified(data)
    with pytest.raises(NonConformantInstanceError, match="SeriesInstanceUID"):
        instance_info(
            {k: v for k, v in tags.items() if k != "SeriesInstanceUID"},
            EXPLICIT_LE,
            len(data),
            has_pixel_data=True,
        )
    with pytest.raises(NonConformantInstanceError, match="not a valid UID"):
        instance_info(
            tags | {"SOPInstanceUID": "../x"}, EXPLICIT_LE, len(data), has_pixel_data=True
        )
    with pytest.raises(NonConformantInstanceError, match="pixel data is shorter"):
        instance_info(tags, EXPLICIT_LE, 200, has_pixel_data=True)
    odd = instance_info(
        tags | {"SeriesInstanceUID": "1.2.03"}, EXPLICIT_LE, len(data), has_pixel_data=True
    )
    assert odd.warnings and "1.2.03" in odd.warnings[0]


@pytest.fixture
def policy(tmp_path: Path, database_url: str) -> Iterator[tuple[StorePolicy, Quarantine, Database]]:
    db = Database(database_url)
    upgrade(db)
    audit = AuditTrail(db, "test-audit-key-" + "k" * 32, "test-chain-key")
    registry = SenderRegistry(db, audit)
    registry.add_sender("CT1", "Hospital A", "127.0.0.1", actor=Actor.cli())
    registry.add_sender("MR1", "Hospital B", "127.0.0.1", actor=Actor.cli())
    peers = PeerTable(registry, None)
    peers.refresh()
    quarantine = Quarantine(tmp_path / "quarantine")
    stored = StoredStudies(QueryRetrievePolicy(registry, audit))
    store = StorePolicy(peers, StudyOwnership(db, audit), quarantine, 64 * 1024, stored)
    yield store, quarantine, db
    db.dispose()


def test_the_filter_answers_the_pynetdicom_edges_statuses(
    policy: tuple[StorePolicy, Quarantine, Database],
) -> None:
    store, quarantine, _ = policy
    first = synthetic_ct("1.2.3.4")
    assert store.check(Received(first)) == 0
    assert store.check(Received(synthetic_ct(), calling_ae_title="GONE")) == 0xC001
    assert store.check(Received(synthetic_ct(size=256))) == 0xA700  # over 64 KiB
    assert quarantine.list() == []
    bad = Received(synthetic_ct(), overrides={"StudyInstanceUID": "1.2.abc"})
    assert store.check(bad) == 0xA900
    collision = Received(synthetic_ct("1.2.3.4", instance=2), calling_ae_title="MR1")
    assert store.check(collision) == 0xC409
    entries = {entry.error: entry for entry in quarantine.list()}
    assert set(entries) == {"NonConformantInstanceError", "StudyCollisionError"}
    assert quarantine.data(entries["StudyCollisionError"].entry_id) == collision.file
    assert entries["StudyCollisionError"].hospital == "Hospital B"
