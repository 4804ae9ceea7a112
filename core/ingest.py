"""The STOW-RS hand-over contract between the API process (``serving``) and the gateway process
(``dicom_gateway``), the spool's only writer. The two never import each other, so the
contract lives here, in the core, like the outbox contract of :mod:`core.events`.

The API authenticates and authorises the user, splits the ``multipart/related`` body as it
arrives, and hands each instance to the gateway's internal endpoint on its health/metrics
listener (``bind_host:gateway_metrics_port``); the gateway validates, quarantines or fsyncs it
to the spool through the same intake as a DIMSE C-STORE and answers once it is durable. The
``hospital`` is the owner of what is stored: the hospital of the API key (or user) that sent
it, as a DIMSE sender's hospital owns what it sends (:mod:`core.tenancy`)::

    POST /internal/stow/instances?hospital=<owner>[&study=<Study Instance UID of the request's URL>]
    Authorization: Bearer <secrets.json gateway_ingest_key>
    Content-Type: application/dicom
    Content-Length: <bytes, at most RADCLOUD_GATEWAY_MAX_INSTANCE_MIB>

    200 application/json  a StoreAnswer: {"status": 0 or a Failure Reason, "reason", "retry",
                          "sop_class_uid", "sop_instance_uid", "study_instance_uid",
                          "series_instance_uid", "patient_id"}
    400 no Content-Length, no hospital, or a malformed study; 401 no or another key; 413 over
    the limit;
    500 the gateway failed unexpectedly (nothing stored)

With ``RADCLOUD_GATEWAY_EDGE=orthanc`` the gateway keeps no spool for STOW-RS: the API hands
the parts over in batches, and the gateway checks each one, admits it to its study, and stores
the accepted ones in Orthanc with one STOW-RS request, answering once Orthanc has stored them
(:mod:`dicom_gateway.stow`)::

    POST /internal/stow/batch?hospital=<owner>[&study=<Study Instance UID of the request's URL>]
    Authorization: Bearer <secrets.json gateway_ingest_key>
    Content-Type: application/octet-stream
    Content-Length: <bytes, at most batch_limit_bytes(max instance bytes)>

    body: the parts, each as its length (8 bytes, big-endian) then its bytes (encode_batch)
    200 application/json  {"answers": [a StoreAnswer per part, in order]}
    400, 401, 413, 500 as above; 404 when the gateway's edge is not ``orthanc``

Failure Reason (0008,1197) values (PS3.18 Table I.2-2; the first three are also the C-STORE
statuses of the same failures, PS3.4 B.2.3)::

    0xC000  cannot understand         not DICOM, unparseable, or a part not application/dicom
    0xA900  does not match SOP class  parses, but lacks a UID, transfer syntax or whole
                                      pixel data
    0xA700  out of resources          larger than the instance limit, or the spool is full
    0xC409  study mismatch            of another study than the request's URL names (neither
                                      spooled nor quarantined), or of a study of another
                                      hospital or patient (quarantined, the gateway's
                                      ``ownership``); implementation specific, dcm4chee-arc
                                      uses the same code
    0x0110  processing failure        the spool could not be written, the gateway failed, or
                                      (orthanc edge) Orthanc could not be reached or failed

``retry`` marks failures for want of resources at the receiving end (spool full, I/O error,
gateway gone), worth sending again unchanged.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from enum import IntEnum
from typing import Any

import pydicom

from core.inflation import check_part10_inflation

#: The most a deflated data set may inflate to be read for labels (:func:`peek_uids`).
PEEK_INFLATED_BYTES = 64 * 1024 * 1024

__all__ = [
    "BATCH_MAX_BYTES",
    "BATCH_MAX_PARTS",
    "BATCH_PATH",
    "PEEK_INFLATED_BYTES",
    "STOW_PATH",
    "FailureReason",
    "StoreAnswer",
    "batch_limit_bytes",
    "decode_batch",
    "encode_batch",
    "peek_uids",
]

STOW_PATH = "/internal/stow/instances"
BATCH_PATH = "/internal/stow/batch"
#: The API starts a new batch before one would hold more parts or bytes than these (a single
#: part larger than ``BATCH_MAX_BYTES``, within the instance limit, travels alone).
BATCH_MAX_PARTS = 16
BATCH_MAX_BYTES = 8 * 1024 * 1024
_LENGTH_BYTES = 8

_VALID_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_PEEKED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) values of radcloud's STOW-RS (see the module docstring)."""

    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    STUDY_MISMATCH = 0xC409


def peek_uids(
    data: bytes, max_inflated_bytes: int = PEEK_INFLATED_BYTES
) -> tuple[str | None, str | None, str | None]:
    """SOP Class, SOP Instance and Study Instance UIDs of possibly broken data, each where
    readable and a valid UID (PS3.5 9.1; only valid UIDs are written back in a response), else
    ``None``: labels for a refusal, never a check. A deflated data set that inflates beyond
    ``max_inflated_bytes`` is not read (:mod:`core.inflation`).
    """
    try:
        check_part10_inflation(data, max_inflated_bytes)
        ds = pydicom.dcmread(
            io.BytesIO(data), force=True, stop_before_pixels=True, specific_tags=list(_PEEKED)
        )
        values = [ds.get(keyword) for keyword in _PEEKED]
    except Exception:  # noqa: BLE001 - best-effort labels for data that may be anything
        return None, None, None
    uids = [str(value).strip() if value else "" for value in values]
    valid = [uid if len(uid) <= 64 and _VALID_UID.match(uid) else None for uid in uids]
    return valid[0], valid[1], valid[2]


@dataclass(frozen=True)
class StoreAnswer:
    """What became of one instance: stored when ``status`` is 0, else a Failure Reason."""

    status: int
    reason: str | None = None
    retry: bool = False
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    patient_id: str | None = None

    @property
    def stored(self) -> bool:
        """Whether the instance is durably spooled."""
        return self.status == 0

    @classmethod
    def failed(
        cls, data: bytes, failure: FailureReason, reason: str, *, retry: bool = False
    ) -> StoreAnswer:
        """A failure, labelled with the UIDs :func:`peek_uids` finds in ``data``."""
        sop_class, sop_instance, study = peek_uids(data)
        return cls(int(failure), reason, retry, sop_class, sop_instance, study)

    def to_json(self) -> dict[str, Any]:
        """The answer's JSON object."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoreAnswer:
        """Inverse of :meth:`to_json` (unknown keys are ignored).

        Raises
        ------
        KeyError, TypeError, ValueError
            ``data`` is not an answer.
        """
        known = {field.name for field in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        return cls(
            **{**values, "status": int(values["status"]), "retry": bool(values.get("retry"))}
        )


def encode_batch(parts: Sequence[bytes]) -> bytes:
    """The body of a batch hand-over: each part as its length (8 bytes, big-endian), then its
    bytes."""
    framed = bytearray()
    for data in parts:
        framed += len(data).to_bytes(_LENGTH_BYTES, "big")
        framed += data
    return bytes(framed)


def decode_batch(body: bytes, max_parts: int = BATCH_MAX_PARTS) -> list[bytes]:
    """The parts of a batch hand-over (inverse of :func:`encode_batch`).

    Raises
    ------
    ValueError
        A length runs past the body, or there are more than ``max_parts`` parts.
    """
    view = memoryview(body)
    parts: list[bytes] = []
    offset = 0
    while offset < len(view):
        if len(parts) == max_parts:
            raise ValueError(f"more than {max_parts} parts in one batch")
        if offset + _LENGTH_BYTES > len(view):
            raise ValueError(f"batch ends inside the length of part {len(parts) + 1}")
        length = int.from_bytes(view[offset : offset + _LENGTH_BYTES], "big")
        offset += _LENGTH_BYTES
        if offset + length > len(view):
            raise ValueError(
                f"part {len(parts) + 1} declares {length} bytes, "
                f"{len(view) - offset} are left in the batch"
            )
        parts.append(bytes(view[offset : offset + length]))
        offset += length
    return parts


def batch_limit_bytes(max_instance_bytes: int) -> int:
    """The most bytes a batch hand-over may have, with an instance limit of
    ``max_instance_bytes``: its parts never exceed :data:`BATCH_MAX_BYTES`, or the instance
    limit for a part that travels alone."""
    return max(BATCH_MAX_BYTES, max_instance_bytes) + _LENGTH_BYTES * BATCH_MAX_PARTS
