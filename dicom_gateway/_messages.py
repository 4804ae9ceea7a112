"""Guard the decoding of incoming DIMSE messages (PS3.7 6.3, PS3.8 Annex E).

pynetdicom decodes a message's command set on the association's reactor thread, and reads
(0000,0100) Command Field and (0000,0800) Command Data Set Type without checking that they are
there or known: a command set without them (or with a Command Field no DIMSE service has) raises
there (and a request without (0000,0110) Message ID fails later, building its response), the
reactor thread dies (a request without another element its service needs is dropped instead),
the peer waits for an answer that never comes and the association is never closed (its slot
of ``gateway_max_associations`` stays taken until the process ends; found by
``tests/dicom_gateway/test_fuzz_dicom.py``).

:func:`guard_message_decoding` catches that on the reactor thread and does what pynetdicom does
with a message it cannot turn into a primitive: event 19, unrecognised or invalid PDU, so the
state machine sends A-ABORT and the association ends (PS3.8 9.2, action AA-8). No response can
be sent instead: which response a request gets is what the missing Command Field would say.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.tag import Tag

__all__ = ["guard_message_decoding", "invalid_message_reason"]

logger = logging.getLogger(__name__)

_INVALID_PDU = "Evt19"  # PS3.8 Table 9-10: unrecognised or invalid PDU received
_COMMAND_ELEMENTS = {
    "CommandField": Tag(0x0000, 0x0100),
    "CommandDataSetType": Tag(0x0000, 0x0800),
}  # what pynetdicom's decoding reads unchecked (its AttributeError names the keyword)


def _check_request(dimse: Any) -> None:
    """Refuse a decoded request that lacks what its service needs (PS3.7 9.3, 10.3: Message ID,
    Affected SOP Class UID, a C-STORE's Affected SOP Instance UID and data set, a C-MOVE's Move
    Destination, ...). pynetdicom would queue it and then either fail building the response
    (no Message ID: on a thread that dies silently) or log "Received unexpected ... message" and
    drop it: either way the peer waits its whole DIMSE timeout for an answer that never comes
    (found by the fuzz test: a C-STORE-RQ without Message ID, then one without Affected SOP
    Instance UID)."""
    pending = dimse.msg_queue
    with pending.mutex:
        if not pending.queue:
            return
        _, message = pending.queue[-1]
        if getattr(message, "MessageIDBeingRespondedTo", None) is not None:
            return  # a response: the association's own service checks it
        missing = [k for k in message.REQUEST_KEYWORDS if getattr(message, k, None) is None]
        if missing:
            pending.queue.pop()
            raise _IncompleteRequestError(message.msg_type, missing[0])


class _IncompleteRequestError(Exception):
    def __init__(self, message_type: str, keyword: str) -> None:
        tag = tag_for_keyword(keyword)
        if tag is None:  # DataSet, Identifier: a primitive's parameter, not an element
            what = f"no {'data set' if keyword == 'DataSet' else keyword.lower()}"
        else:
            what = f"no {Tag(tag)} {keyword}"
        super().__init__(f"invalid DIMSE message: the {message_type} has {what}")


def invalid_message_reason(exc: BaseException) -> str:
    """Why a DIMSE message could not be decoded, in words (for the log and the audit trail)."""
    if isinstance(exc, _IncompleteRequestError):
        return str(exc)
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
