"""STOW-RS mechanics behind :mod:`serving.api.routes.stow` (PS3.18 10.5): each part of a request
is handed to the gateway process, the spool's only writer, over its internal STOW endpoint
(:class:`GatewayIngest`; the contract, with the Failure Reason values, is :mod:`core.ingest`),
or with the Orthanc edge in batches (:class:`core.stow.PartBatch`, :func:`store_batch`). The
checks of a part before it is sent, the Store Instances Response and the audit record are
:mod:`core.stow`, shared with the gateway's own door. The gateway unreachable raises
:class:`httpx.TransportError` out of :meth:`GatewayIngest.store`; the route answers 503, or
reports the rest as not stored.
"""

from __future__ import annotations

import logging

import httpx

from core.config import GatewayEdge, Settings, url_host
from core.ingest import BATCH_PATH, STOW_PATH, FailureReason, StoreAnswer, encode_batch
from core.multipart import BodyPart
from core.secrets import Secrets
from core.stow import DICOM, precheck, store_checked

__all__ = ["GatewayIngest", "store_batch", "store_part"]

logger = logging.getLogger(__name__)

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
            self.url, content=data, params=params, headers={"Content-Type": DICOM}
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
    early = precheck(part, number, ingest.max_instance_bytes)
    if early is not None:
        return early
    return ingest.store(part.data, study, hospital)


def store_batch(
    ingest: GatewayIngest, parts: list[tuple[BodyPart, int]], study: str | None, hospital: str
) -> list[StoreAnswer]:
    """:func:`store_part` for a batch of ``(part, number)`` (Orthanc edge): one hand-over for
    the parts that pass :func:`core.stow.precheck`; an answer per part, in order (blocking
    until Orthanc has stored them).

    Raises
    ------
    httpx.TransportError
        The gateway cannot be reached.
    """
    return store_checked(
        lambda sent: ingest.store_batch(sent, study, hospital), parts, ingest.max_instance_bytes
    )
