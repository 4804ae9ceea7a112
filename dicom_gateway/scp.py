"""The gateway's DIMSE service: Verification, Storage and Query/Retrieve (Find, Move) SCP.

Who may call
    Every association request is checked against the sender registry (calling AE title, peer
    address and, over TLS with client certificates, the certificate's subject CN = AE title,
    O = hospital; :meth:`SenderRegistry.authorise`). In prod mode a sender bound to neither a
    host nor a certificate is refused: an AE title alone is no credential. Refusals get
    A-ASSOCIATE-RJ (rejected-permanent, service-user, calling AE title not recognised;
    PS3.8 9.3.4) and a Security Alert (110113) is audited. The called AE title must be the
    gateway's (otherwise: called AE title not recognised). With TLS configured (PS3.15 B.1),
    the handshake runs on the connection's own thread, so a silent client cannot stall the
    listener; with CA certificates, clients must present a certificate they signed.

C-STORE (PS3.4 B.2.3)
    The data set is taken as received (no decoding) and handed to :class:`Intake`, which
    validates it, quarantines refusals and fsyncs it to the spool; only then is 0x0000 sent.
    A data set over ``gateway_max_instance_mib`` is not even buffered: its fragments are
    dropped as they arrive. Errors map to statuses as :mod:`dicom_gateway._store_status` draws
    (0xA700 out of resources, 0xA900 non-conformant, 0xC000 unreadable, 0xC409 another
    hospital's or patient's study, 0xC001 anything else), with an Error Comment.

C-FIND, C-MOVE (PS3.4 C.4.1, C.4.2)
    Patient Root and Study Root, answered from Orthanc (:mod:`dicom_gateway._query`). An
    invalid identifier gives 0xA900; more matches than ``RADCLOUD_ARCHIVE_MAX_FIND_RESULTS``
    (before the hospital scope is applied) 0xA700 out of resources; Orthanc failing gives
    0xC001 (C-FIND) or 0xA701 (C-MOVE); C-CANCEL gives 0xFE00. C-MOVE sends only to
    registered destinations (:meth:`SenderRegistry.destination`), else 0xA801; pynetdicom
    counts the sub-operations and sends the final 0x0000, 0xB000 (some failed) or 0xA702
    (all failed).

Invalid messages
    A DIMSE message whose command set cannot be decoded (no Command Field, an unknown one) ends
    the association with A-ABORT and a Security Alert (110113) naming the reason
    (:mod:`dicom_gateway._messages`); the service keeps answering everyone else.

Audit
    Per association, one Instances Transferred (110104, C) record per study stored, written
    at release or abort; one Query (110112) record per C-FIND; one Instances Transferred
    (110104, R) record per study moved.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, _config, build_context, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.presentation import PresentationContext

from core.audit import AuditAction, AuditEventCode, AuditOutcome, AuditTrail
from core.config import Mode, Settings
from dicom_gateway import metrics
from dicom_gateway._archive import MoveOperation, QueryRetrieveArchive
from dicom_gateway._messages import guard_message_decoding
from dicom_gateway._query import (
    QUERY_RETRIEVE_SOP_CLASSES,
    VERIFICATION,
    Query,
    information_model,
)
from dicom_gateway._retrieve import QueryRetrievePolicy
from dicom_gateway._store_status import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, store_failure
from dicom_gateway._transport import AssociationServer, client_certificate, tls_context
from dicom_gateway.exceptions import (
    ArchiveError,
    GatewayError,
    InstanceTooLargeError,
    InvalidIdentifierError,
    QueryTooBroadError,
    UnknownSenderError,
)
from dicom_gateway.intake import Intake
from dicom_gateway.senders import DestinationInfo, SenderInfo, SenderRegistry

if TYPE_CHECKING:
    from core.archive import ImageArchive

__all__ = ["STORAGE_TRANSFER_SYNTAXES", "DicomService", "tls_context"]

logger = logging.getLogger(__name__)

STORAGE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
"""Transfer syntaxes accepted for every storage SOP class."""

_MIB = 1024 * 1024
_MAX_PDU_BYTES = 1024 * 1024  # what peers may send us per PDU (PS3.8 D.3.3.1)
_STOP_GRACE_S = 10.0
# pynetdicom's DUL reactor sleeps this long whenever it finds nothing to do (default 1 ms).
# A sender waits for each C-STORE response before the next request, so that sleep is latency
# paid on every instance: at 0.5 ms one association stores ~25% more instances per second end
# to end than at 1 ms (measured with benchmarks/ingest.py), for a few percent of a core per
# open association while idle; 0.2 ms gained nothing more.
_DUL_POLL_S = 0.0005
_ROLE = "pacs"
_SUCCESS, _PENDING, _CANCEL = 0x0000, 0xFF00, 0xFE00


def _status(code: int, comment: str) -> Dataset:
    """A failure status with (0000,0902) Error Comment (LO: 64 characters, no backslash)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = " ".join(comment.replace("\\", "/").split())[:64]
    return status


@dataclass
class _StudyTally:
    patient_id: str | None
    instances: int = 0


@dataclass
class _Peer:
    """What the service knows of one association."""

    sender: SenderInfo
    address: str
    studies: dict[str, _StudyTally] = field(default_factory=dict)
    established: bool = False
    closed: bool = False
    dataset_bytes: int = 0  # of the data set being received
    oversized: bool = False


class DicomService:
    """The gateway's DICOM upper-layer service on ``bind_host:gateway_port``.

    Parameters
    ----------
    settings
        AE title, port, limits, timeouts and TLS files.
    intake
        Where received instances go.
    senders
        Who may associate, and the C-MOVE destinations.
    audit
        The audit trail.
    orthanc
        radcloud's image archive, for C-FIND and C-MOVE.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        intake: Intake,
        senders: SenderRegistry,
        audit: AuditTrail,
        orthanc: ImageArchive,
    ) -> None:
        self._settings = settings
        self._intake = intake
        self._senders = senders
        self._audit = audit
        self._archive = QueryRetrieveArchive(orthanc, settings.gateway_ae_title)
        self._retrieve = QueryRetrievePolicy(senders, audit)
        self._max_instance_bytes = settings.gateway_max_instance_mib * _MIB
        self._lock = threading.Lock()
        self._peers: dict[Any, _Peer] = {}
        self._ae: Any = None
        self._server: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    def _application_entity(self) -> Any:
        settings = self._settings
        ae = AE(ae_title=settings.gateway_ae_title)
        ae.maximum_associations = settings.gateway_max_associations
        ae.acse_timeout = settings.gateway_acse_timeout_s
        ae.dimse_timeout = settings.gateway_dimse_timeout_s
        ae.network_timeout = settings.gateway_network_timeout_s
        ae.maximum_pdu_size = _MAX_PDU_BYTES
        ae.require_called_aet = True
        return ae

    @staticmethod
    def _contexts() -> list[PresentationContext]:
        contexts = [build_context(VERIFICATION)]
        syntaxes: list[str | UID] = list(STORAGE_TRANSFER_SYNTAXES)
        contexts += [
            build_context(str(cx.abstract_syntax), syntaxes)
            for cx in AllStoragePresentationContexts
        ]
        contexts += [build_context(uid) for uid in QUERY_RETRIEVE_SOP_CLASSES]
        return contexts

    def _handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_CONN_CLOSE, self._on_ended),
            (evt.EVT_PDU_RECV, self._on_pdu_received),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
        ]

    def start(self) -> None:
        """Listen on ``(bind_host, gateway_port)``, with TLS when configured; returns at once.

        Raises
        ------
        ConfigError
            The TLS files cannot be loaded.
        OSError
            The port cannot be bound.
        """
        if self._server is not None:
            return
        # Identifiers hold patient names: pynetdicom must not log them. Nor bind its standard
        # handlers, which format a debug dump of every PDU under an AE-wide lock.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        _config.LOG_HANDLER_LEVEL = "none"
        settings = self._settings
        ssl_context = tls_context(settings) if settings.gateway_tls_enabled else None
        ae = self._application_entity()
        server = ae.make_server(
            (settings.bind_host, settings.gateway_port),
            ae_title=settings.gateway_ae_title,
            contexts=self._contexts(),
            ssl_context=ssl_context,
            evt_handlers=self._handlers(),
            server_class=AssociationServer,
        )
        server.handshake_timeout_s = settings.gateway_acse_timeout_s
        server.on_tls_failure = self._on_tls_failure
        ae._servers.append(server)  # as ae.start_server does, so server.shutdown() works
        threading.Thread(
            target=server.serve_forever, name=f"dicom-scp:{settings.gateway_port}", daemon=True
        ).start()
        self._ae, self._server = ae, server
        logger.info(
            "DICOM service %s listening on %s:%d%s",
            settings.gateway_ae_title,
            settings.bind_host,
            settings.gateway_port,
            " (TLS)" if ssl_context else "",
        )

    def stop(self) -> None:
        """Stop accepting; give open associations a few seconds to finish, then abort them."""
        server, ae = self._server, self._ae
        if server is None:
            return
        self._server = None
        server.shutdown()
        deadline = time.monotonic() + _STOP_GRACE_S
        while ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in ae.active_associations:
            logger.warning("aborting association with %s at stop", assoc.requestor.ae_title)
            assoc.abort()
        with self._lock:
            leftovers = list(self._peers)
        for assoc in leftovers:
            self._close(assoc)

    @property
    def associations_open(self) -> int:
        """Associations established and not yet released or aborted."""
        with self._lock:
            return sum(peer.established for peer in self._peers.values())

    # -- association events ----------------------------------------------------------------

    def _record(self, code: AuditEventCode, **fields: Any) -> None:
        self._retrieve.record(code, **fields)

    def _on_tls_failure(self, address: str, exc: ssl.SSLError) -> None:
        self._record(
            AuditEventCode.SECURITY_ALERT,
            action=AuditAction.EXECUTE,
            outcome=AuditOutcome.MINOR_FAILURE,
            source_address=address,
            detail={"reason": f"TLS handshake failed: {exc.reason or exc}"},
        )

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        assoc.dul._run_loop_delay = _DUL_POLL_S
        calling, address = "?", "?"
        try:
            calling = str(assoc.requestor.primitive.calling_ae_title).strip()
            address = str(assoc.requestor.address)
            sender = self._senders.authorise(
                calling,
                address,
                client_certificate(getattr(assoc.dul.socket, "socket", None)),
                require_binding=self._settings.mode is Mode.PROD,
            )
        except UnknownSenderError as exc:
            logger.warning("rejected association from %s at %s: %s", calling, address, exc.reason)
            self._record(
                AuditEventCode.SECURITY_ALERT,
                action=AuditAction.EXECUTE,
                outcome=AuditOutcome.MINOR_FAILURE,
                user_name=calling,
                source_address=address,
                detail={"reason": exc.reason, "called_ae_title": self._settings.gateway_ae_title},
            )
            self._reject(assoc, 0x01, 0x01, 0x03)
            return
        except Exception:
            logger.exception("cannot check sender %s at %s: rejecting for now", calling, address)
            self._reject(assoc, 0x02, 0x01, 0x01)  # rejected-transient, no reason given
            return
        with self._lock:
            self._peers[assoc] = _Peer(sender, address)
        guard_message_decoding(
            assoc, lambda reason: self._on_invalid_message(sender, address, reason)
        )

    def _on_invalid_message(self, sender: SenderInfo, address: str, reason: str) -> None:
        """A message the gateway cannot decode: the association is aborted; audited."""
        self._record(
            AuditEventCode.SECURITY_ALERT,
            action=AuditAction.EXECUTE,
            outcome=AuditOutcome.MINOR_FAILURE,
            user_name=sender.ae_title,
            source_address=address,
            detail={"reason": reason},
        )

    @staticmethod
    def _reject(assoc: Any, result: int, source: int, diagnostic: int) -> None:
        """Send A-ASSOCIATE-RJ (PS3.8 9.3.4) and wait, as pynetdicom's own rejections do, until
        the peer has it and closed the connection (or the ARTIM timer expired): pynetdicom
        closes the socket as soon as this handler returns."""
        assoc.acse.send_reject(result, source, diagnostic)
        assoc.kill()

    def _on_established(self, event: Any) -> None:
        with self._lock:
            peer = self._peers.get(event.assoc)
            if peer is None or peer.established:
                return
            peer.established = True
        metrics.ASSOCIATIONS_OPEN.inc()

    def _on_ended(self, event: Any) -> None:
        self._close(event.assoc)

    def _close(self, assoc: Any) -> None:
        """Forget an association (once, whichever of release/abort/close comes first) and
        audit what it stored."""
        with self._lock:
            peer = self._peers.pop(assoc, None)
            if peer is None:
                return
            peer.closed = True
            studies = dict(peer.studies)
        if peer.established:
            metrics.ASSOCIATIONS_OPEN.dec()
        for study_uid, tally in studies.items():
            self._audit_stored(peer, study_uid, tally)

    def _audit_stored(self, peer: _Peer, study_uid: str, tally: _StudyTally) -> None:
        self._record(
            AuditEventCode.INSTANCES_TRANSFERRED,
            action=AuditAction.CREATE,
            outcome=AuditOutcome.SUCCESS,
            user_name=peer.sender.ae_title,
            role=_ROLE,
            source_address=peer.address,
            resource_type="study",
            resource_id=study_uid,
            patient_id=tally.patient_id,
            detail={"instances": tally.instances, "hospital": peer.sender.hospital},
        )

    def _peer(self, event: Any) -> _Peer | None:
        with self._lock:
            return self._peers.get(event.assoc)

    def _on_pdu_received(self, event: Any) -> None:
        """Count the bytes of the data set being received; past the size limit, drop them so
        that an oversized instance is never held in memory (the C-STORE handler refuses it)."""
        pdu = event.pdu
        if not isinstance(pdu, P_DATA_TF):
            return
        peer = self._peer(event)
        if peer is None:
            return
        for item in pdu.presentation_data_value_items:
            value = item.presentation_data_value
            if not value:
                continue
            if value[0] & 0x01:  # a command fragment: a new message starts (PS3.8 E.2)
                peer.dataset_bytes, peer.oversized = 0, False
                continue
            peer.dataset_bytes += len(value) - 1
            if peer.dataset_bytes > self._max_instance_bytes:
                if not peer.oversized:
                    logger.warning(
                        "data set from %s exceeds %d bytes: discarding it as it arrives",
                        peer.sender.ae_title,
                        self._max_instance_bytes,
                    )
                peer.oversized = True
                item.presentation_data_value = value[:1]

    # -- C-ECHO, C-STORE -------------------------------------------------------------------

    def _on_echo(self, event: Any) -> int:
        return _SUCCESS

    def _on_store(self, event: Any) -> int | Dataset:
        peer = self._peer(event)
        if peer is None:
            return _status(0xC001, "association is not authorised")
        try:
            return self._store(event, peer)
        except Exception:  # a DIMSE handler answers every request; the service stays up
            logger.exception("C-STORE from %s failed unexpectedly", peer.sender.ae_title)
            return _status(0xC001, "internal error: instance not stored")

    def _store(self, event: Any, peer: _Peer) -> int | Dataset:
        sender = peer.sender
        try:
            data: bytes = b"" if peer.oversized else event.encoded_dataset(include_meta=True)
            if peer.oversized or len(data) > self._max_instance_bytes:
                metrics.INSTANCES_FAILED.labels(sender.ae_title, "dimse", "too_large").inc()
                size = peer.dataset_bytes if peer.oversized else len(data)
                raise InstanceTooLargeError(size, self._max_instance_bytes)
            entry = self._intake.accept(
                data, sender_ae_title=sender.ae_title, hospital=sender.hospital, source="dimse"
            )
        except GatewayError as exc:
            return self._store_failure(sender, exc)
        info = entry.info
        with self._lock:
            if not peer.closed:
                tally = peer.studies.setdefault(
                    info.study_instance_uid, _StudyTally(info.patient_id)
                )
                tally.instances += 1
                return _SUCCESS
        # The connection closed while storing: audit this instance on its own.
        self._audit_stored(peer, info.study_instance_uid, _StudyTally(info.patient_id, 1))
        return _SUCCESS

    @staticmethod
    def _store_failure(sender: SenderInfo, exc: GatewayError) -> Dataset:
        """The C-STORE failure status for ``exc`` (PS3.4 B.2.3, :mod:`._store_status`)."""
        failure = store_failure(exc)
        if failure is None:
            logger.error("cannot store instance from %s: %s", sender.ae_title, exc)
            return _status(CANNOT_UNDERSTAND, "instance not stored: gateway error")
        if failure[0] == OUT_OF_RESOURCES:
            logger.warning("refused instance from %s: %s", sender.ae_title, exc)
        return _status(*failure)

    # -- C-FIND, C-MOVE --------------------------------------------------------------------

    @staticmethod
    def _query(event: Any) -> Query:
        model = information_model(event.request.AffectedSOPClassUID)
        try:
            identifier = event.identifier
        except Exception as exc:  # pydicom raises many kinds on bad bytes
            raise InvalidIdentifierError(f"identifier cannot be decoded: {exc}") from exc
        return Query.from_identifier(identifier, model)

    def _on_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        peer = self._peer(event)
        if peer is None:
            yield _status(0xC001, "association is not authorised"), None
            return
        query: Query | None = None
        matches, status = 0, _SUCCESS
        try:
            query = self._query(event)
            scope = self._retrieve.scope(peer.sender)
            for answer in self._archive.find(query, scope):
                if event.is_cancelled:
                    status = _CANCEL
                    yield _CANCEL, None
                    return
                matches += 1
                yield _PENDING, answer
        except InvalidIdentifierError as exc:
            status = 0xA900
            yield _status(0xA900, exc.reason), None
        except QueryTooBroadError as exc:
            logger.warning("C-FIND from %s: %s", peer.sender.ae_title, exc)
            status = 0xA700
            yield _status(0xA700, "out of resources: too many matches, narrow the query"), None
        except ArchiveError as exc:
            logger.error("C-FIND from %s: %s", peer.sender.ae_title, exc)
            status = 0xC001
            yield _status(0xC001, "archive unavailable"), None
        except Exception:
            logger.exception("C-FIND from %s failed unexpectedly", peer.sender.ae_title)
            status = 0xC001
            yield _status(0xC001, "internal error"), None
        finally:
            self._retrieve.audit_query(
                peer.sender,
                peer.address,
                str(event.request.AffectedSOPClassUID),
                query,
                status=status,
                matches=matches,
            )

    def _on_move(self, event: Any) -> Iterator[Any]:
        peer = self._peer(event)
        destination_ae = str(event.move_destination or "").strip()
        destination = self._move_destination(peer, destination_ae)
        if peer is None or destination is None:
            yield None, None  # pynetdicom answers 0xA801 Move Destination unknown
            return
        failure: Dataset | None = None
        try:
            scope = self._retrieve.scope(peer.sender)
            items = self._archive.move_items(self._query(event), scope)
        except InvalidIdentifierError as exc:
            failure = _status(0xA900, exc.reason)
        except ArchiveError as exc:
            logger.error("C-MOVE from %s: %s", peer.sender.ae_title, exc)
            failure = _status(0xA701, "archive unavailable: unable to calculate matches")
        except Exception:
            logger.exception("C-MOVE from %s failed unexpectedly", peer.sender.ae_title)
            failure = _status(0xA701, "internal error: unable to calculate matches")
        if failure is not None:
            # pynetdicom takes a status only after the destination and a sub-operation count.
            yield destination.host, destination.port, {"contexts": [build_context(VERIFICATION)]}
            yield 1
            yield failure, None
            return
        operation = MoveOperation(self._archive, items)
        yield destination.host, destination.port, operation.association_kwargs()
        yield len(items)
        cancelled = False
        try:
            for item in items:
                if event.is_cancelled:
                    cancelled = True
                    yield _CANCEL, None
                    return
                yield _PENDING, operation.dataset(item)
        finally:
            self._retrieve.audit_moved(
                peer.sender,
                peer.address,
                destination,
                operation.study_results(),
                cancelled=cancelled,
            )

    def _move_destination(self, peer: _Peer | None, ae_title: str) -> DestinationInfo | None:
        if peer is None:
            return None
        return self._retrieve.destination(peer.sender, peer.address, ae_title)
