"""STOW-RS mechanics behind the ``/dicom-web`` routes (PS3.18 10.5): each part of a request is
handed to the gateway process, the spool's only writer, over its internal STOW endpoint
(:class:`GatewayIngest`; the protocol is documented in ``dicom_gateway.stow``), and the
per-instance answers become the Store Instances Response Module (PS3.18 Annex I) and the HTTP
status (PS3.18 Table 10.5.3-1).

Failure Reason (0008,1197) values (PS3.18 Table I.2-2); the gateway decides all but the first
two rows' "part" cases, which this process finds before sending anything::

    0xC000  cannot understand         not DICOM, unparseable, or a part not application/dicom
    0xA900  does not match SOP class  parses, but lacks a UID, transfer syntax or whole pixel data
    0xA700  out of resources          larger than the instance limit, or the spool is full
    0xC409  study mismatch            posted to /studies/{study} but of another study
                                      (implementation specific; dcm4chee-arc uses the same code)
    0x0110  processing failure        the spool could not be written, or the gateway failed

The reason in words is in Error Comment (0000,0902) of each failed item (LO: 64 characters).
The gateway unreachable raises :class:`httpx.TransportError` out of :meth:`GatewayIngest.store`:
the route answers 503 (or, when earlier parts were stored, reports the rest as not stored).
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import httpx
import pydicom

from core.config import Settings, url_host
from core.secrets import Secrets
from serving.api._multipart import BodyPart, MultipartError

__all__ = ["FailureReason", "GatewayIngest", "StoreOutcome", "store_part", "store_response"]

logger = logging.getLogger(__name__)

_VALID_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_ERROR_COMMENT_MAX = 64
_DICOM = "application/dicom"
_PEEKED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")
_MIB = 1024 * 1024
_STOW_PATH = "/internal/stow/instances"  # dicom_gateway.stow.STOW_PATH
_CONNECT_TIMEOUT_S = 5.0


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) values used by radcloud (see the module docstring)."""

    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    STUDY_MISMATCH = 0xC409


@dataclass(frozen=True)
class StoreOutcome:
    """What became of one part of a STOW-RS request: stored when ``failure`` is ``None``.

    ``failure`` is a Failure Reason (0008,1197) value: one of :class:`FailureReason`, as
    answered by the gateway. ``server_side`` marks failures for want of resources here (spool
    full, disk error), worth retrying later unchanged.
    """

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None = None
    patient_id: str | None = None
    failure: int | None = None
    reason: str | None = None
    server_side: bool = False


def _peek_uids(data: bytes) -> tuple[str | None, str | None, str | None]:
    """SOP Class, SOP Instance and Study Instance UIDs of possibly broken data, where readable
    and syntactically valid (only valid UIDs are written back in a response).
    """
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), force=True, stop_before_pixels=True, specific_tags=list(_PEEKED)
        )
        values = [ds.get(keyword) for keyword in _PEEKED]
    except Exception:  # noqa: BLE001 - best-effort labels for data that may be anything
        return None, None, None
    uids = [str(value).strip() if value else "" for value in values]
    valid = [uid if len(uid) <= 64 and _VALID_UID.match(uid) else None for uid in uids]
    return valid[0], valid[1], valid[2]


def _failed(
    data: bytes, failure: FailureReason, reason: str, *, server_side: bool = False
) -> StoreOutcome:
    sop_class, sop_instance, study = _peek_uids(data)
    return StoreOutcome(sop_class, sop_instance, study, None, None, failure, reason, server_side)


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
        Read and write timeout of one instance (validation and fsync included).
    """

    def __init__(
        self, url: str, ingest_key: str, max_instance_bytes: int, timeout_s: float
    ) -> None:
        self.url = url
        self.max_instance_bytes = max_instance_bytes
        self._client = httpx.Client(
            headers={"Authorization": f"Bearer {ingest_key}"},
            timeout=httpx.Timeout(timeout_s, connect=_CONNECT_TIMEOUT_S),
        )

    @classmethod
    def from_settings(cls, settings: Settings, secrets: Secrets) -> GatewayIngest:
        """The endpoint of this instance's gateway, on its metrics port."""
        return cls(
            f"http://{url_host(settings.bind_host)}:{settings.gateway_metrics_port}{_STOW_PATH}",
            secrets.gateway_ingest_key,
            settings.gateway_max_instance_mib * _MIB,
            settings.gateway_network_timeout_s,
        )

    def store(self, data: bytes, study: str | None) -> StoreOutcome:
        """Hand one instance to the gateway; returns once it is spooled, or why it is not.

        Raises
        ------
        httpx.TransportError
            The gateway cannot be reached, or broke off: nothing is known to be stored.
        """
        params = {"study": study} if study is not None else None
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
            return _failed(data, FailureReason.PROCESSING_FAILURE, reason, server_side=True)
        body = answer.json()
        status = int(body["status"])
        return StoreOutcome(
            body.get("sop_class_uid"),
            body.get("sop_instance_uid"),
            body.get("study_instance_uid"),
            body.get("series_instance_uid"),
            body.get("patient_id"),
            failure=status or None,
            reason=body.get("reason"),
            server_side=bool(body.get("retry")),
        )

    def close(self) -> None:
        """Release the connections."""
        self._client.close()


def _precheck(part: BodyPart, number: int, limit: int) -> StoreOutcome | None:
    """A failure found in the part itself before the gateway sees it, or ``None``."""
    if part.truncated:
        reason = (
            f"instance of {part.size} bytes exceeds the limit of {limit} bytes "
            "(RADCLOUD_GATEWAY_MAX_INSTANCE_MIB)"
        )
        return _failed(part.data, FailureReason.OUT_OF_RESOURCES, reason)
    try:
        content_type = part.content_type
    except MultipartError as exc:
        return _failed(part.data, FailureReason.CANNOT_UNDERSTAND, f"part {number}: {exc}")
    if content_type not in (None, "application/dicom"):
        reason = f'part {number} is "{content_type}", expected "application/dicom"'
        return _failed(part.data, FailureReason.CANNOT_UNDERSTAND, reason)
    return None


def store_part(
    ingest: GatewayIngest, part: BodyPart, number: int, study: str | None
) -> StoreOutcome:
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

    Returns
    -------
    StoreOutcome
        Stored (with the instance's UIDs and patient ID), or failed with a reason.

    Raises
    ------
    httpx.TransportError
        The gateway cannot be reached.
    """
    early = _precheck(part, number, ingest.max_instance_bytes)
    if early is not None:
        return early
    return ingest.store(part.data, study)


def _element(vr: str, *values: Any) -> dict[str, Any]:
    """A DICOM JSON attribute (PS3.18 F.2); no ``Value`` when there is none."""
    present = [value for value in values if value is not None]
    return {"vr": vr, "Value": present} if present else {"vr": vr}


def _error_comment(reason: str) -> str:
    text = " ".join(reason.split())
    return text if len(text) <= _ERROR_COMMENT_MAX else text[: _ERROR_COMMENT_MAX - 3] + "..."


def _failed_item(outcome: StoreOutcome) -> dict[str, Any]:
    return {
        "00081150": _element("UI", outcome.sop_class_uid),
        "00081155": _element("UI", outcome.sop_instance_uid),
        "00081197": _element("US", int(outcome.failure or FailureReason.PROCESSING_FAILURE)),
        "00000902": _element("LO", _error_comment(outcome.reason or "")),
    }


def _stored_item(outcome: StoreOutcome, retrieve_base: str) -> dict[str, Any]:
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
    outcomes: list[StoreOutcome], retrieve_base: str, study: str | None
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
    stored = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
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
    return (503 if all(o.server_side for o in failed) else 409), body
