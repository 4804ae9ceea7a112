"""Guard the decoding of incoming DIMSE messages (PS3.7 6.3, PS3.8 Annex E).

pynetdicom decodes a message's command set on the association's reactor thread, and reads
(0000,0100) Command Field and (0000,0800) Command Data Set Type without checking that they are
there or known: a command set without them (or with a Command Field no DIMSE service has) raises
there (and a request without (0000,0110) Message ID fails later, building its response), the
reactor thread dies, the peer waits for an answer that never comes and the
association is never closed (its slot of ``gateway_max_associations`` stays taken until the
process ends; found by ``tests/dicom_gateway/test_fuzz_dicom.py``).

:func:`guard_message_decoding` catches that on the reactor thread and does what pynetdicom does
with a message it cannot turn into a primitive: event 19, unrecognised or invalid PDU, so the
state machine sends A-ABORT and the association ends (PS3.8 9.2, action AA-8). No response can
be sent instead: which response a request gets is what the missing Command Field would say.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.tag import Tag

__all__ = ["guard_message_decoding", "invalid_message_reason"]

logger = logging.getLogger(__name__)

_INVALID_PDU = "Evt19"  # PS3.8 Table 9-10: unrecognised or invalid PDU received
_COMMAND_ELEMENTS = {
    "CommandField": Tag(0x0000, 0x0100),
    "CommandDataSetType": Tag(0x0000, 0x0800),
    "MessageID": Tag(0x0000, 0x0110),
}


def _check_request(dimse: Any) -> None:
    """Refuse a decoded request without (0000,0110) Message ID: pynetdicom queues it, and its
    service then fails building the response (Message ID Being Responded To), on a thread that
    dies silently: the peer waits for an answer that never comes (the fuzz test's C-STORE-RQ
    without Message ID waited its whole DIMSE timeout)."""
    pending = dimse.msg_queue
    with pending.mutex:
        if not pending.queue:
            return
        _, message = pending.queue[-1]
        is_request = getattr(message, "MessageIDBeingRespondedTo", None) is None
        if is_request and getattr(message, "MessageID", None) is None:
            pending.queue.pop()
            raise AttributeError("the request has no MessageID")


def invalid_message_reason(exc: BaseException) -> str:
    """Why a DIMSE message could not be decoded, in words (for the log and the audit trail)."""
    if isinstance(exc, AttributeError):
        for keyword, tag in _COMMAND_ELEMENTS.items():
            if keyword in str(exc):
                return f"invalid DIMSE message: the command set has no {tag} {keyword}"
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], int):
        return f"invalid DIMSE message: unknown (0000,0100) CommandField 0x{exc.args[0]:04X}"
    return f"invalid DIMSE message: cannot decode the command set ({exc!r})"[:200]


def guard_message_decoding(assoc: Any, on_invalid: Callable[[str], None]) -> None:
    """Make ``assoc`` abort, instead of crashing, on a DIMSE message it cannot decode.

    Parameters
    ----------
    assoc
        A pynetdicom association, before it is established (its DIMSE provider exists).
    on_invalid
        Called with the reason (on the reactor thread) before the association is aborted.
    """
    dimse = assoc.dimse
    receive = dimse.receive_primitive

    def receive_primitive(primitive: Any) -> None:
        try:
            receive(primitive)
            _check_request(dimse)
        except Exception as exc:  # noqa: BLE001 - a peer's bytes must never end the reactor thread
            dimse.message = None  # the half-decoded message is dropped
            reason = invalid_message_reason(exc)
            logger.warning("aborting association with %s: %s", assoc.requestor.ae_title, reason)
            try:
                on_invalid(reason)
            finally:
                assoc.dul.event_queue.put(_INVALID_PDU)

    dimse.receive_primitive = receive_primitive
