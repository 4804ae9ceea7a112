"""The federated study search a route calls: who may ask what, which nodes are asked, what the
answer may show, and the audit record of it (the requesting side of IHE XCA-I).

Purpose of use decides everything (:class:`Purpose`):

- ``treatment``: bound to one patient (the token's patient context). Every hospital holding an
  identifier linked to that patient key is asked for that identifier's studies; each answered
  study is kept only if its patient identifier resolves to the same key (a node that ignores a
  filter cannot leak another patient). Identified rows.
- ``research``: no patient; every tenant and every remote node is asked by modality and date.
  Rows are de-identified (:data:`Deidentify`) before they leave: pseudonymous patient, remapped
  Study Instance UID, shifted date, no name, birth date, accession or description.

A missing purpose is refused before anything is asked.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from core.audit import AuditAction, AuditEventCode, AuditTrail
from core.exceptions import PurposeRequiredError
from core.security import Actor, Purpose
from imaging.deid import local_patient_key
from serving.federation.fanout import StudyNode, fan_out
from serving.federation.model import (
    FederatedAnswer,
    FederatedStudy,
    NodeAnswer,
    NodeKind,
    NodeState,
    StudyQuery,
)

__all__ = ["Deidentify", "FederatedSearch", "Identifier", "SearchRequest", "research_key"]

Identifier = tuple[str, str, str | None]
"""A patient identifier: (hospital, Patient ID, Issuer of Patient ID or ``None``)."""

Deidentify = Callable[[FederatedStudy, str], FederatedStudy]
"""De-identifies one row for research, given its patient key (or a key made of its
identifier when the patient is not linked)."""


@dataclass(frozen=True)
class SearchRequest:
    """What a caller asks: its purpose (and for treatment, the patient), and the filters."""

    purpose: Purpose | None
    patient_key: str | None = None
    modality: str | None = None
    study_date: str | None = None
    limit: int = 200
    reason: str | None = None  # a break-glass reason the token carries, recorded


def research_key(hospital: str, study: FederatedStudy) -> str:
    """The key a research row of a patient not linked across hospitals is pseudonymised by:
    its local identifier (:func:`imaging.deid.local_patient_key`), or the study itself when
    the node gave no Patient ID."""
    patient_id = study.patient_id or f"no-patient-id:{study.study_instance_uid}"
    return local_patient_key(hospital, patient_id, study.issuer_of_patient_id or "")


class _OfPatient:
    """A node whose answers are kept only where the row's patient identifier, at the node's
    hospital, resolves to ``key``, or is one of the patient's enterprise or national
    identifiers (``shared``); checked before the merge, while the row is the node's own."""

    def __init__(
        self,
        node: StudyNode,
        key: str,
        key_of: Callable[[str, str, str | None], str | None],
        shared: set[tuple[str, str | None]],
    ) -> None:
        self._node, self._key, self._key_of, self._shared = node, key, key_of, shared
        self.hospital, self.kind, self.timeout_s = node.hospital, node.kind, node.timeout_s

    def _is_patients(self, study: FederatedStudy) -> bool:
        patient_id, issuer = study.patient_id or "", study.issuer_of_patient_id
        if (patient_id, issuer) in self._shared:
            return True
        return self._key_of(self.hospital, patient_id, issuer) == self._key

    def search_for_studies(self, query: StudyQuery) -> list[FederatedStudy]:
        return [
            replace(study, patient_key=self._key)
            for study in self._node.search_for_studies(query)
            if self._is_patients(study)
        ]


class FederatedSearch:
    """Answers federated study searches.

    Parameters
    ----------
    audit
        Where each search is recorded.
    identifiers_of
        The identifiers linked to a patient key (the cross-reference, :mod:`core.identity`).
    key_of
        The patient key of an identifier, ``None`` when not registered.
    authorities
        The issuers registered as enterprise-wide or national assigning authorities.
    nodes
        Every hospital's node, read per search: this deployment's tenants, then the
        registered remote nodes.
    deidentify
        De-identifies a row for research.
    remember
        Keeps (pseudonym, original Study Instance UID, hospital) of each research row, so a
        research retrieval can name the study by its pseudonym only.
    """

    def __init__(
        self,
        *,
        audit: AuditTrail,
        identifiers_of: Callable[[str], Iterable[Identifier]],
        key_of: Callable[[str, str, str | None], str | None],
        authorities: Callable[[], set[str]],
        nodes: Callable[[], Sequence[StudyNode]],
        deidentify: Deidentify,
        remember: Callable[[Iterable[tuple[str, str, str]]], None] = lambda rows: None,
    ) -> None:
        self._audit = audit
        self._identifiers_of = identifiers_of
        self._key_of = key_of
        self._authorities = authorities
        self._nodes = nodes
        self._deidentify = deidentify
        self._remember = remember

    def search(self, actor: Actor, request: SearchRequest) -> FederatedAnswer:
        """Ask the nodes the purpose allows, merge, and record the search.

        Raises
        ------
        PurposeRequiredError
            No purpose, or a treatment search without a patient (a token never says "all").
        """
        allowed = [str(p) for p in Purpose]
        if request.purpose is None:
            raise PurposeRequiredError(None, allowed)
        if request.purpose is Purpose.TREATMENT:
            if not request.patient_key:
                raise PurposeRequiredError("treatment without a patient", allowed)
            answer = self._treatment(request)
            returned = [(s.study_instance_uid, s.held_by) for s in answer.studies]
        else:
            answer, returned = self._research(request)
        self._record(actor, request, answer, returned)
        return answer

    # -- treatment ------------------------------------------------------------------------

    def _treatment(self, request: SearchRequest) -> FederatedAnswer:
        key = str(request.patient_key)
        identifiers = list(self._identifiers_of(key))
        authorities = self._authorities()
        # an enterprise or national identifier names the patient at any hospital: remote
        # nodes, whose patients radcloud never registered, are asked for it too
        shared: set[tuple[str, str | None]] = {
            (pid, issuer) for _, pid, issuer in identifiers if issuer in authorities
        }
        by_hospital: dict[str, set[tuple[str, str | None]]] = defaultdict(set)
        for hospital, patient_id, issuer in identifiers:
            by_hospital[hospital].add((patient_id, issuer))
        asked: list[tuple[StudyNode, StudyQuery]] = []
        not_asked: list[NodeAnswer] = []
        for node in self._nodes():
            ids = set(by_hospital.get(node.hospital, ()))
            if node.kind is NodeKind.REMOTE:
                ids |= shared
            if not ids:
                if node.kind is NodeKind.REMOTE:
                    reason = "no identifier of this patient is known at this hospital"
                    not_asked.append(
                        NodeAnswer(node.hospital, node.kind, NodeState.OK, reason=reason)
                    )
                continue
            query = StudyQuery(
                tuple(sorted(ids, key=str)), request.modality, request.study_date, request.limit
            )
            asked.append((_OfPatient(node, key, self._key_of, shared), query))
        answer = fan_out(asked)
        return FederatedAnswer(answer.studies, [*answer.nodes, *not_asked])

    # -- research -------------------------------------------------------------------------

    def _research(
        self, request: SearchRequest
    ) -> tuple[FederatedAnswer, list[tuple[str, tuple[str, ...]]]]:
        query = StudyQuery((), request.modality, request.study_date, request.limit)
        nodes = self._nodes()
        answer = fan_out([(node, query) for node in nodes])
        studies = []
        for study in answer.studies:
            hospital = study.held_by[0]
            key = self._key_of(
                hospital, study.patient_id or "", study.issuer_of_patient_id
            ) or research_key(hospital, study)
            studies.append(self._deidentify(study, key))
        self._remember(
            (shown.study_instance_uid, original.study_instance_uid, original.held_by[0])
            for shown, original in zip(studies, answer.studies, strict=True)
        )
        returned = [(s.study_instance_uid, s.held_by) for s in answer.studies]
        return FederatedAnswer(studies, answer.nodes), returned

    # -- audit ----------------------------------------------------------------------------

    def _record(
        self,
        actor: Actor,
        request: SearchRequest,
        answer: FederatedAnswer,
        returned: list[tuple[str, tuple[str, ...]]],
    ) -> None:
        """One 110112 record; ``returned`` names the original studies (a research answer's
        rows are de-identified, the trail is not)."""
        detail: dict[str, Any] = {
            "federated": True,
            "purpose": str(request.purpose),
            "patient_key": request.patient_key,
            "filters": {"modality": request.modality, "study_date": request.study_date},
            "nodes": [
                {"hospital": n.hospital, "kind": str(n.kind), "state": str(n.state)}
                for n in answer.nodes
            ],
            "returned": [
                {"study_instance_uid": uid, "held_by": list(held_by)} for uid, held_by in returned
            ],
        }
        if request.reason:
            detail["break_glass_reason"] = request.reason
        self._audit.record(
            AuditEventCode.QUERY,
            actor=actor,
            action=AuditAction.EXECUTE,
            resource_type="patient" if request.patient_key else None,
            resource_id=request.patient_key,
            detail=detail,
        )
