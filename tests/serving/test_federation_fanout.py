"""Unit tests of the fan-out, the merge and the FHIR Bundle (nodes are stand-ins here; the
real nodes, tenants and a remote Orthanc, are tested in test_federation_e2e.py)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from core.archive import ArchiveRejectedError, ArchiveTimeoutError, ArchiveUnavailableError
from core.exceptions import AuthError
from serving.federation import (
    FederatedStudy,
    NodeKind,
    NodeState,
    StudyQuery,
    endpoint_id,
    fan_out,
    imaging_study_bundle,
    merge_studies,
)


@dataclass
class Node:
    hospital: str
    studies: list[FederatedStudy] = field(default_factory=list)
    delay_s: float = 0.0
    error: BaseException | None = None
    timeout_s: float = 2.0
    kind: NodeKind = NodeKind.REMOTE
    asked: list[StudyQuery] = field(default_factory=list)

    def search_for_studies(self, query: StudyQuery) -> list[FederatedStudy]:
        self.asked.append(query)
        time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.studies


def study(uid: str, hospital: str, **attributes: object) -> FederatedStudy:
    return FederatedStudy(uid, (hospital,), **attributes)  # type: ignore[arg-type]


def test_studies_held_by_two_hospitals_are_one_row_naming_both() -> None:
    merged = merge_studies(
        [
            [study("1.1", "A", study_date="20250101"), study("1.2", "A")],
            [study("1.1", "B", study_description="Head CT"), study("1.3", "B")],
        ]
    )
    assert [s.study_instance_uid for s in merged] == ["1.1", "1.2", "1.3"]
    first = merged[0]
    assert first.held_by == ("A", "B")
    assert (first.study_date, first.study_description) == ("20250101", "Head CT")


def test_a_slow_node_is_reported_timeout_and_does_not_delay_the_answer() -> None:
    fast = Node("A", [study("1.1", "A")])
    slow = Node("B", [study("1.2", "B")], delay_s=3.0, timeout_s=0.3)
    started = time.monotonic()
    answer = fan_out([(fast, StudyQuery()), (slow, StudyQuery())])
    elapsed = time.monotonic() - started
    assert elapsed < 2.5, "the answer waited for the slow node beyond its timeout"
    assert [s.study_instance_uid for s in answer.studies] == ["1.1"]
    states = {n.hospital: n.state for n in answer.nodes}
    assert states == {"A": NodeState.OK, "B": NodeState.TIMEOUT}
    assert answer.partial


def test_nodes_are_asked_concurrently() -> None:
    barrier = threading.Barrier(3, timeout=2)

    class Meeting(Node):
        def search_for_studies(self, query: StudyQuery) -> list[FederatedStudy]:
            barrier.wait()  # breaks (an error) unless all three are asked at once
            return [study(f"1.{self.hospital}", self.hospital)]

    nodes = [Meeting(h) for h in "ABC"]
    answer = fan_out([(node, StudyQuery()) for node in nodes])
    assert {n.state for n in answer.nodes} == {NodeState.OK}
    assert len(answer.studies) == 3


@pytest.mark.parametrize(
    ("error", "state"),
    [
        (ArchiveUnavailableError("http://b", "connection refused"), NodeState.ERROR),
        (ArchiveUnavailableError("http://b", "HTTP 401", status_code=401), NodeState.REFUSED),
        (ArchiveTimeoutError("http://b", "ReadTimeout: timed out"), NodeState.TIMEOUT),
        (ArchiveRejectedError("bad query", 400), NodeState.ERROR),
        (AuthError("not shared with you"), NodeState.REFUSED),
        (ValueError("unreadable answer"), NodeState.ERROR),
    ],
)
def test_each_failure_is_a_named_node_state(error: BaseException, state: NodeState) -> None:
    answer = fan_out(
        [(Node("A", [study("1.1", "A")]), StudyQuery()), (Node("B", error=error), StudyQuery())]
    )
    [b] = [n for n in answer.nodes if n.hospital == "B"]
    assert b.state is state and b.reason
    assert [s.study_instance_uid for s in answer.studies] == ["1.1"]


def test_fhir_bundle_is_a_searchset_with_endpoints_and_an_outcome_when_partial() -> None:
    answer = fan_out(
        [
            (
                Node(
                    "A",
                    [
                        study(
                            "1.1",
                            "A",
                            study_date="20250101",
                            modalities_in_study=("CT",),
                            patient_key="rcp-1",
                        )
                    ],
                ),
                StudyQuery(),
            ),
            (Node("B", [study("1.1", "B")]), StudyQuery()),
            (
                Node("C", error=ArchiveUnavailableError("http://c", "connection refused")),
                StudyQuery(),
            ),
        ]
    )
    bundle = imaging_study_bundle(
        answer,
        self_url="https://rc.example/api/fhir/ImagingStudy?patient=rcp-1",
        wado_base=lambda h: f"https://rc.example/api/federated/hospitals/{h}/dicom-web",
    )
    assert bundle.type == "searchset" and bundle.total == 1
    modes = [entry.search.mode for entry in bundle.entry]
    assert modes == ["match", "include", "include", "outcome"]
    imaging = bundle.entry[0].resource
    assert imaging.identifier[0].value == "urn:oid:1.1"
    assert imaging.subject.reference == "Patient/rcp-1"
    assert imaging.started == "2025-01-01" or str(imaging.started) == "2025-01-01"
    assert [r.reference for r in imaging.endpoint] == [
        f"Endpoint/{endpoint_id('A')}",
        f"Endpoint/{endpoint_id('B')}",
    ]
    endpoint = bundle.entry[1].resource
    assert endpoint.connectionType.code == "dicom-wado-rs"
    assert endpoint.address == "https://rc.example/api/federated/hospitals/A/dicom-web"
    outcome = bundle.entry[-1].resource
    assert outcome.issue[0].code == "exception" and "C" in outcome.issue[0].diagnostics


def test_a_complete_answer_has_no_outcome_entry() -> None:
    answer = fan_out([(Node("A", [study("1.1", "A")]), StudyQuery())])
    bundle = imaging_study_bundle(answer, self_url="https://x/ImagingStudy", wado_base=str)
    assert [e.search.mode for e in bundle.entry] == ["match", "include"]
    assert not answer.partial
