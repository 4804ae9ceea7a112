"""Ask every node at once, each with its own timeout, and merge what they answer.

A node that does not answer in time, fails or refuses is named in the answer with its state
(:class:`~serving.federation.model.NodeState`); the others' studies are still returned. Studies
are merged by Study Instance UID: a study two hospitals hold is one row whose ``held_by`` names
both (IHE XCA-I's initiating gateway de-duplicates the same way).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import replace
from typing import Protocol

from core.archive import ArchiveError, NodeStatus, node_status
from core.exceptions import AuthError
from serving.federation.model import (
    FederatedAnswer,
    FederatedStudy,
    NodeAnswer,
    NodeKind,
    NodeState,
    StudyQuery,
)

__all__ = ["StudyNode", "classify_failure", "fan_out", "merge_studies"]

logger = logging.getLogger(__name__)


class StudyNode(Protocol):
    """A hospital's studies, as a federated search can ask for them."""

    @property
    def hospital(self) -> str:
        """The hospital whose studies the node holds."""
        ...

    @property
    def kind(self) -> NodeKind:
        """In this deployment, or remote."""
        ...

    @property
    def timeout_s(self) -> float:
        """How long the node may take to answer a search."""
        ...

    def search_for_studies(self, query: StudyQuery) -> list[FederatedStudy]:
        """The hospital's studies matching ``query`` (``held_by`` = this hospital)."""
        ...


def classify_failure(exc: BaseException) -> tuple[NodeState, str]:
    """The state and reason a node's failure is reported with.

    Refused: the node answered 401/403, or our own rule forbade asking it. Timeout: no answer in
    time (ours, or the node client's :class:`~core.archive.ArchiveTimeoutError`). Error:
    everything else (unreachable, 5xx, an unreadable answer).
    """
    if isinstance(exc, futures.TimeoutError | TimeoutError):
        return NodeState.TIMEOUT, "no answer within the node's timeout"
    if isinstance(exc, AuthError):
        return NodeState.REFUSED, str(exc)
    status = node_status(exc)
    if status is NodeStatus.TIMEOUT:
        return NodeState.TIMEOUT, str(exc)
    if status is NodeStatus.REFUSED:
        return NodeState.REFUSED, str(exc)
    if isinstance(exc, ArchiveError):
        return NodeState.ERROR, str(exc)
    return NodeState.ERROR, f"{type(exc).__name__}: {exc}"


def merge_studies(answers: Sequence[Sequence[FederatedStudy]]) -> list[FederatedStudy]:
    """One row per Study Instance UID, in the order first seen; ``held_by`` joined.

    The attributes are the first answer's, with what it lacks taken from later ones.
    """
    merged: dict[str, FederatedStudy] = {}
    for studies in answers:
        for study in studies:
            seen = merged.get(study.study_instance_uid)
            if seen is None:
                merged[study.study_instance_uid] = study
                continue
            held_by = seen.held_by + tuple(h for h in study.held_by if h not in seen.held_by)
            gaps = {
                name: getattr(study, name)
                for name in study.__dataclass_fields__
                if getattr(seen, name) in (None, ()) and getattr(study, name) not in (None, ())
            }
            merged[study.study_instance_uid] = replace(seen, **gaps, held_by=held_by)
    return list(merged.values())


def fan_out(requests: Sequence[tuple[StudyNode, StudyQuery]]) -> FederatedAnswer:
    """Ask every node concurrently, wait for each at most its own timeout, merge.

    A node still working after its timeout is reported ``timeout`` and left to finish in the
    background (its client's own timeout ends it); it never delays the answer further.
    """
    if not requests:
        return FederatedAnswer()
    started = time.monotonic()
    pool = futures.ThreadPoolExecutor(max_workers=len(requests), thread_name_prefix="federated")
    try:
        pending = [
            (node, pool.submit(_timed, node, query), started + node.timeout_s)
            for node, query in requests
        ]
        answers: list[list[FederatedStudy]] = []
        nodes: list[NodeAnswer] = []
        for node, future, deadline in pending:
            try:
                studies, elapsed = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except BaseException as exc:  # noqa: BLE001 - every failure is a node state
                state, reason = classify_failure(exc)
                elapsed = (time.monotonic() - started) * 1000
                logger.warning("federated search: %s %s: %s", node.hospital, state, reason)
                nodes.append(NodeAnswer(node.hospital, node.kind, state, 0, elapsed, reason))
                continue
            answers.append(studies)
            nodes.append(NodeAnswer(node.hospital, node.kind, NodeState.OK, len(studies), elapsed))
        return FederatedAnswer(merge_studies(answers), nodes)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _timed(node: StudyNode, query: StudyQuery) -> tuple[list[FederatedStudy], float]:
    started = time.monotonic()
    studies = node.search_for_studies(query)
    return studies, (time.monotonic() - started) * 1000
