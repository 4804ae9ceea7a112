"""What a federated search asks and answers: the studies each hospital holds, and how each
hospital's node answered (:class:`NodeState`), so partial results are never a silent gap."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "FederatedAnswer",
    "FederatedStudy",
    "NodeAnswer",
    "NodeKind",
    "NodeState",
    "StudyQuery",
]


class NodeKind(StrEnum):
    """Where a hospital's studies are: in this deployment, or behind another DICOMweb node."""

    TENANT = "tenant"
    REMOTE = "remote"


class NodeState(StrEnum):
    """How one node answered a federated search."""

    OK = "ok"
    TIMEOUT = "timeout"  # no answer within the node's own timeout
    ERROR = "error"  # unreachable, 5xx, an answer that could not be read
    REFUSED = "refused"  # the node refused our credentials or the request (401, 403)


@dataclass(frozen=True)
class StudyQuery:
    """A study-level search, in DICOM terms (PS3.18 10.6.1.2 matching).

    Parameters
    ----------
    patient_ids
        The patient's identifiers at the node's hospital, as (patient ID, issuer or ``None``);
        empty for a search across patients (research).
    modality
        ModalitiesInStudy to match (``CT``), or ``None``.
    study_date
        A DICOM date or range (``20250101-20251231``), or ``None``.
    limit
        At most this many studies per node.
    """

    patient_ids: tuple[tuple[str, str | None], ...] = ()
    modality: str | None = None
    study_date: str | None = None
    limit: int = 200


@dataclass(frozen=True)
class FederatedStudy:
    """One study as a hospital's node describes it (the attributes of PS3.18 Table 6.7.1-2a).

    ``held_by`` names every hospital whose node answered with this Study Instance UID (a study
    sent to two hospitals is one row, held by both).
    """

    study_instance_uid: str
    held_by: tuple[str, ...]
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    study_description: str | None = None
    modalities_in_study: tuple[str, ...] = ()
    number_of_study_related_series: int | None = None
    number_of_study_related_instances: int | None = None
    patient_key: str | None = None


@dataclass(frozen=True)
class NodeAnswer:
    """How one hospital's node answered: its state, how many studies, how long it took."""

    hospital: str
    kind: NodeKind
    state: NodeState
    studies: int = 0
    elapsed_ms: float = 0.0
    reason: str | None = None


@dataclass(frozen=True)
class FederatedAnswer:
    """The merged studies (one per Study Instance UID) and every node's answer."""

    studies: list[FederatedStudy] = field(default_factory=list)
    nodes: list[NodeAnswer] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        """Whether some node did not answer: the studies may not be all there are."""
        return any(node.state is not NodeState.OK for node in self.nodes)
