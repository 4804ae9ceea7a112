"""STOW-RS mechanics behind :mod:`serving.api.routes.stow` (PS3.18 10.5): each part of a request
is handed to the gateway process, the spool's only writer, over its internal STOW endpoint
(:class:`GatewayIngest`; the contract, with the Failure Reason values, is :mod:`core.ingest`),
or with the Orthanc edge in batches (:class:`PartBatch`, :func:`store_batch`),
and the per-instance answers (:class:`~core.ingest.StoreAnswer`) become the Store Instances
Response Module (PS3.18 Annex I) and the HTTP status (PS3.18 Table 10.5.3-1).

Two failures are found here, in the part itself, before anything is sent: a part longer than
the instance limit (0xA700 out of resources) and a part not ``application/dicom`` (0xC000
cannot understand). The reason in words is in Error Comment (0000,0902) of each failed item
(LO: 64 characters). The gateway unreachable raises :class:`httpx.TransportError` out of
:meth:`GatewayIngest.store`; the route answers 503, or reports the rest as not stored.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from core.config import GatewayEdge, Settings, url_host
from core.ingest import (
    BATCH_MAX_BYTES,
    BATCH_MAX_PARTS,
    BATCH_PATH,
    STOW_PATH,
    FailureReason,
    StoreAnswer,
    encode_batch,
)
from core.secrets import Secrets
from serving.api._multipart import BodyPart, MultipartError

__all__ = ["GatewayIngest", "PartBatch", "store_batch", "store_part", "store_response"]

logger = logging.getLogger(__name__)

_ERROR_COMMENT_MAX = 64
_DICOM = "application/dicom"
_MIB = 1024 * 1024
_CONNECT_TIMEOUT_S = 5.0


class GatewayIngest:
    """The gateway's internal STOW endpoint, as the API process calls it (thread-safe).

    Parameters
    ----------
    url
        The endpoint (``http://bind_host:gateway_metrics_port/internal/stow/instances``).
    ingest_key
        ``Secrets.gateway_ingest_key``, sent as bearer credential.
    max_instance_bytes
        The gateway's instance limit; larger parts are refused here, unsent.
    timeout_s
        Read and write timeout of one instance (validation and fsync included), or of a batch.
    batch_url
        The batch endpoint, with the Orthanc edge (``RADCLOUD_GATEWAY_EDGE=orthanc``): parts
        are then handed over in batches (:func:`store_batch`); ``None``: one by one.
    """

    def __init__(
        self,
        url: str,
        ingest_key: str,
        max_instance_bytes: int,
        timeout_s: float,
        batch_url: str | None = None,
    ) -> None:
        self.url = url
        self.batch_url = batch_url
        self.max_instance_bytes = max_instance_bytes
        self._client = httpx.Client(
            headers={"Authorization": f"Bearer {ingest_key}"},
            timeout=httpx.Timeout(timeout_s, connect=_CONNECT_TIMEOUT_S),
        )

    @classmethod
    def from_settings(cls, settings: Settings, secrets: Secrets) -> GatewayIngest:
        """The endpoint of this instance's gateway, on its metrics port."""
        root = f"http://{url_host(settings.bind_host)}:{settings.gateway_metrics_port}"
        batched = settings.gateway_edge is GatewayEdge.ORTHANC
        return cls(
            f"{root}{STOW_PATH}",
            secrets.gateway_ingest_key,
            settings.gateway_max_instance_mib * _MIB,
            settings.gateway_network_timeout_s,
            f"{root}{BATCH_PATH}" if batched else None,
        )

    def store(self, data: bytes, study: str | None, hospital: str) -> StoreAnswer:
        """Hand one instance to the gateway, owned by ``hospital``; returns once it is spooled,
        or why it is not.

        Raises
        ------
        httpx.TransportError
            The gateway cannot be reached, or broke off: nothing is known to be stored.
        """
        params = {"hospital": hospital} | ({"study": study} if study is not None else {})
        answer = self._client.post(
            self.url, content=data, params=params, headers={"Content-Type": _DICOM}
        )
        if answer.status_code != 200:
            logger.error(
                "the gateway refused a STOW-RS instance: HTTP %d %s",
                answer.status_code,
                answer.text[:200],
            )
            reason = f"the gateway refused the instance (HTTP {answer.status_code})"
            return StoreAnswer.failed(data, FailureReason.PROCESSING_FAILURE, reason, retry=True)
        return StoreAnswer.from_json(answer.json())

    def store_batch(
        self, parts: list[bytes], study: str | None, hospital: str
    ) -> list[StoreAnswer]:
        """Hand a batch of instances to the gateway (Orthanc edge), owned by ``hospital``;
        returns once Orthanc has stored the accepted ones, an answer per part, in order.

        Raises
        ------
        httpx.TransportError
            The gateway cannot be reached, or broke off: nothing is known to be stored.
        """
        if self.batch_url is None:
            raise RuntimeError("the gateway takes no batches: its edge is not orthanc")
        params = {"hospital": hospital} | ({"study": study} if study is not None else {})
        answer = self._client.post(
            self.batch_url,
            content=encode_batch(parts),
            params=params,
            headers={"Content-Type": "application/octet-stream"},
        )
        answers: list[StoreAnswer] = []
        if answer.status_code == 200:
            answers = [StoreAnswer.from_json(item) for item in answer.json()["answers"]]
        if len(answers) != len(parts):
            logger.error(
                "the gateway refused a STOW-RS batch of %d: HTTP %d %s",
                len(parts),
                answer.status_code,
                answer.text[:200],
            )
            reason = f"the gateway refused the instance (HTTP {answer.status_code})"
            failure = FailureReason.PROCESSING_FAILURE
            return [StoreAnswer.failed(data, failure, reason, retry=True) for data in parts]
        return answers

    def close(self) -> None:
        """Release the connections."""
        self._client.close()


def _precheck(part: BodyPart, number: int, limit: int) -> StoreAnswer | None:
    """A failure found in the part itself before the gateway sees it, or ``None``."""
    if part.truncated:
        reason = (
            f"instance of {part.size} bytes exceeds the limit of {limit} bytes "
            "(RADCLOUD_GATEWAY_MAX_INSTANCE_MIB)"
        )
        return StoreAnswer.failed(part.data, FailureReason.OUT_OF_RESOURCES, reason)
    try:
        content_type = part.content_type
    except MultipartError as exc:
        return StoreAnswer.failed(
            part.data, FailureReason.CANNOT_UNDERSTAND, f"part {number}: {exc}"
        )
    if content_type not in (None, "application/dicom"):
        reason = f'part {number} is "{content_type}", expected "application/dicom"'
        return StoreAnswer.failed(part.data, FailureReason.CANNOT_UNDERSTAND, reason)
    return None


def store_part(
    ingest: GatewayIngest, part: BodyPart, number: int, study: str | None, hospital: str
) -> StoreAnswer:
    """Hand one part to the gateway (blocking: the spool fsyncs), or say why not.

    Parameters
    ----------
    ingest
        The gateway's internal STOW endpoint: validation, quarantine of refusals, durable spool.
    part
        One part of the request body.
    number
        Its position in the request, from 1 (named in reasons).
    study
        The Study Instance UID of the request's URL (``POST /studies/{study}``), if any; the
        gateway refuses an instance of another study without spooling or quarantining it.
    hospital
        The owner of the study stored: the sending principal's hospital.

    Returns
    -------
    StoreAnswer
        Stored (with the instance's UIDs and patient ID), or failed with a reason.

    Raises
    ------
    httpx.TransportError
        The gateway cannot be reached.
    """
    early = _precheck(part, number, ingest.max_instance_bytes)
    if early is not None:
        return early
    return ingest.store(part.data, study, hospital)


class PartBatch:
    """Parts read but not yet handed over (the Orthanc edge hands them over in batches of at
    most ``BATCH_MAX_PARTS`` parts and ``BATCH_MAX_BYTES`` bytes, :mod:`core.ingest`)."""

    def __init__(self) -> None:
        self.parts: list[tuple[BodyPart, int]] = []
        self._bytes = 0

    def fits(self, part: BodyPart) -> bool:
        """Whether ``part`` may join this batch (an empty batch takes any part)."""
        return not self.parts or (
            len(self.parts) < BATCH_MAX_PARTS and self._bytes + len(part.data) <= BATCH_MAX_BYTES
        )

    def add(self, part: BodyPart, number: int) -> None:
        """Add ``part``, the ``number``-th of its request."""
        self.parts.append((part, number))
        self._bytes += len(part.data)

    def take(self) -> list[tuple[BodyPart, int]]:
        """The parts, leaving the batch empty."""
        parts, self.parts, self._bytes = self.parts, [], 0
        return parts


def store_batch(
    ingest: GatewayIngest, parts: list[tuple[BodyPart, int]], study: str | None, hospital: str
) -> list[StoreAnswer]:
    """:func:`store_part` for a batch of ``(part, number)`` (Orthanc edge): one hand-over for
    the parts that pass :func:`_precheck`; an answer per part, in order (blocking until Orthanc
    has stored them).

    Raises
    ------
    httpx.TransportError
        The gateway cannot be reached.
    """
    limit = ingest.max_instance_bytes
    answers = [_precheck(part, number, limit) for part, number in parts]
    sent = [part.data for (part, _), early in zip(parts, answers, strict=True) if early is None]
    stored = iter(ingest.store_batch(sent, study, hospital) if sent else [])
    return [early if early is not None else next(stored) for early in answers]


def _element(vr: str, *values: Any) -> dict[str, Any]:
    """A DICOM JSON attribute (PS3.18 F.2); no ``Value`` when there is none."""
    present = [value for value in values if value is not None]
    return {"vr": vr, "Value": present} if present else {"vr": vr}


def _error_comment(reason: str) -> str:
    text = " ".join(reason.split())
    return text if len(text) <= _ERROR_COMMENT_MAX else text[: _ERROR_COMMENT_MAX - 3] + "..."


def _failed_item(outcome: StoreAnswer) -> dict[str, Any]:
    return {
        "00081150": _element("UI", outcome.sop_class_uid),
        "00081155": _element("UI", outcome.sop_instance_uid),
        "00081197": _element("US", outcome.status),
        "00000902": _element("LO", _error_comment(outcome.reason or "")),
    }


def _stored_item(outcome: StoreAnswer, retrieve_base: str) -> dict[str, Any]:
    url = (
        f"{retrieve_base}/studies/{outcome.study_instance_uid}"
        f"/series/{outcome.series_instance_uid}/instances/{outcome.sop_instance_uid}"
    )
    return {
        "00081150": _element("UI", outcome.sop_class_uid),
        "00081155": _element("UI", outcome.sop_instance_uid),
        "00081190": _element("UR", url),
    }


def store_response(
    outcomes: list[StoreAnswer], retrieve_base: str, study: str | None
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the Store Instances Response Module as DICOM JSON.

    Parameters
    ----------
    outcomes
        One per part, in request order (at least one).
    retrieve_base
        Public base URL of WADO-RS, for Retrieve URL (0008,1190).
    study
        The Study Instance UID of the request's URL, if any.

    Returns
    -------
    tuple[int, dict[str, Any]]
        200 all stored; 202 some stored; 503 none stored, all for want of resources here
        (retry later); 409 none stored otherwise (PS3.18 Table 10.5.3-1).
    """
    stored = [o for o in outcomes if o.stored]
    failed = [o for o in outcomes if not o.stored]
    studies = {o.study_instance_uid for o in stored}
    retrieve_study = study or (next(iter(studies)) if len(studies) == 1 else None)
    study_url = f"{retrieve_base}/studies/{retrieve_study}" if retrieve_study and stored else None
    body: dict[str, Any] = {"00081190": _element("UR", study_url)}
    if failed:
        body["00081198"] = _element("SQ", *(_failed_item(o) for o in failed))
    if stored:
        body["00081199"] = _element("SQ", *(_stored_item(o, retrieve_base) for o in stored))
    if not failed:
        return 200, body
    if stored:
        return 202, body
    return (503 if all(o.retry for o in failed) else 409), body
