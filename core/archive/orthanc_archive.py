"""The image archive over Orthanc's REST API (the one implementation of the seam today).

Orthanc's own resource IDs are this module's business: they appear outside only as
:data:`~core.archive.model.ArchiveId`. HTTP answers map to the seam's errors::

    no answer (refused, reset, timeout)       ArchiveUnavailableError(status_code=None)
    5xx, 401, 403, 408, 429                   ArchiveUnavailableError(status_code)
    404                                       ArchiveNotFoundError
    other 4xx (e.g. 400 for invalid DICOM)    ArchiveRejectedError(status_code)

Several instances are stored as one uncompressed ZIP (``POST /instances``): Orthanc answers
one receipt per member, in order, each with the member's Orthanc ID (:func:`orthanc_instance_id`).
A ZIP Orthanc refuses (one bad member fails the whole archive), or answers otherwise, is sent
again one instance per request, so that a refusal lands on exactly the instance it concerns.

Several archive nodes (Orthanc processes sharing one PostgreSQL index and one storage area,
README "Several archive nodes"): the archive takes every node's root and spreads requests over
them in turn. A request is tried on the next node when its node gave no answer:

- the connection could not be made (refused, connect timeout): nothing was sent, so any
  request moves on;
- it broke off after the request was sent (reset, read timeout): only a request that may be
  sent twice moves on: reads (``GET``, ``/tools/find``, ``/tools/bulk-content``,
  ``/anonymize``), ``PUT`` and stores (``POST /instances``: Orthanc keys an instance by its
  SOP Instance UID, with ``OverwriteInstances`` off a second store of the same instance
  changes nothing and is answered ``AlreadyStored``). A ``DELETE`` is not repeated.

An answer is never repeated elsewhere, except Orthanc's 503: with several writers its
PostgreSQL index runs every transaction SERIALIZABLE and replays one that collided up to the
plugin's ``MaximumConnectionRetries`` times, then answers 503 (``DatabaseCannotSerialize``,
rolled back); the archive sends such a request again after a pause that grows
(:data:`_BUSY_PAUSES_S`) before it gives up with ``ArchiveUnavailableError(503)``.
"""

from __future__ import annotations

import io
import itertools
import logging
import time
import zipfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from core.archive._orthanc_json import (
    LEVELS,
    ORTHANC_LEVELS,
    PATHS,
    UNAVAILABLE_STATUSES,
    expected_id,
    orthanc_instance_id,
    orthanc_series_id,
    orthanc_study_id,
    read_receipt,
    reason,
    resource,
)
from core.archive.exceptions import (
    ArchiveError,
    ArchiveNotFoundError,
    ArchiveQueryTooBroadError,
    ArchiveRejectedError,
    ArchiveUnavailableError,
)
from core.archive.model import (
    ArchivedResource,
    ArchiveId,
    ArchiveStatistics,
    Change,
    ChangeFeed,
    InstanceAttachment,
    InstanceFormat,
    ResourceLevel,
    StoredInstance,
)

if TYPE_CHECKING:
    from core.archive.protocol import AnonymizingArchive

__all__ = ["OrthancArchive", "orthanc_instance_id", "orthanc_series_id", "orthanc_study_id"]

logger = logging.getLogger(__name__)

_BULK = 1000  # keys per POST /tools/bulk-content
_EDGE_METRICS = "/radcloud/edge/metrics"  # dicom_gateway.edge.plugin serves it
_BUSY_PAUSES_S = (0.05, 0.2, 0.8)  # before each resend of a request Orthanc answered 503
_REPEATABLE_POSTS = ("/tools/find", "/tools/bulk-content", "/instances")


def _repeatable(method: str, path: str) -> bool:
    """Whether a request whose answer was lost may be sent again (module docstring)."""
    if method in ("GET", "HEAD", "PUT"):
        return True
    return method == "POST" and (path in _REPEATABLE_POSTS or path.endswith("/anonymize"))


class OrthancArchive:
    """radcloud's image archive over Orthanc's REST API (thread-safe: one connection pool).

    Parameters
    ----------
    url
        Orthanc's HTTP root, e.g. ``http://127.0.0.1:8042``, or the roots of several archive
        nodes sharing one index (spread over, failed over: see the module docstring).
    username, password
        Orthanc's HTTP basic credentials.
    timeout_s
        Timeout of each request.
    archive_timeout_s
        Timeout of a ZIP download (a series or study).
    max_find_results
        The most matches one search returns (``RADCLOUD_ARCHIVE_MAX_FIND_RESULTS``, also
        Orthanc's ``LimitFindResults``); a broader search without ``limit`` is refused.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        username: str,
        password: str,
        timeout_s: float = 30.0,
        archive_timeout_s: float = 120.0,
        max_find_results: int = 10000,
    ) -> None:
        roots = [url] if isinstance(url, str) else list(url)
        if not roots:
            raise ValueError("expected at least one Orthanc root URL")
        self._urls = [root.rstrip("/") for root in roots]
        self.max_find_results = max_find_results
        self._archive_timeout_s = max(timeout_s, archive_timeout_s)
        self._clients = [
            httpx.Client(base_url=root, auth=(username, password), timeout=timeout_s)
            for root in self._urls
        ]
        self._turns = itertools.count()

    @property
    def url(self) -> str:
        """Orthanc's HTTP root (the first node's)."""
        return self._urls[0]

    @property
    def urls(self) -> list[str]:
        """Every node's HTTP root."""
        return list(self._urls)

    def __enter__(self) -> OrthancArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pools."""
        for client in self._clients:
            client.close()

    # -- transport --------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        missing: tuple[str, str] | None = None,
        timeout_s: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request, on the nodes in turn, failed over and resent after a 503 as the module
        docstring says; errors mapped as it draws (``missing``: what a 404 means, as
        ``(resource, identifier)``)."""
        timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s
        first = next(self._turns) % len(self._clients)
        unanswered: list[ArchiveUnavailableError] = []
        for turn in range(len(self._clients)):
            node = (first + turn) % len(self._clients)
            url = f"{self._urls[node]}{path}"
            try:
                response = self._request(node, method, path, timeout, kwargs)
            except httpx.RequestError as exc:
                error = ArchiveUnavailableError(url, str(exc) or type(exc).__name__)
                error.__cause__ = exc
                unanswered.append(error)
                nothing_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if not (nothing_sent or _repeatable(method, path)):
                    raise error from exc
                if turn + 1 < len(self._clients):
                    logger.warning("Orthanc %s gave no answer (%s): next node", url, exc)
                continue
            return self._checked(response, url, method, path, missing)
        raise unanswered[-1]

    def _request(
        self, node: int, method: str, path: str, timeout: Any, kwargs: Mapping[str, Any]
    ) -> httpx.Response:
        """One request to one node, sent again after Orthanc's 503 (a transaction that could
        not be serialised, rolled back) while :data:`_BUSY_PAUSES_S` lasts."""
        client = self._clients[node]
        for pause in _BUSY_PAUSES_S:
            response = client.request(method, path, timeout=timeout, **kwargs)
            if response.status_code != 503:
                return response
            logger.info("Orthanc answered 503 to %s %s (%s): again", method, path, reason(response))
            time.sleep(pause)
        return client.request(method, path, timeout=timeout, **kwargs)

    def _checked(
        self,
        response: httpx.Response,
        url: str,
        method: str,
        path: str,
        missing: tuple[str, str] | None,
    ) -> httpx.Response:
        """``response``, or the seam's error for it (module docstring)."""
        status = response.status_code
        if status >= 500 or status in UNAVAILABLE_STATUSES:
            raise ArchiveUnavailableError(url, reason(response), status)
        if status == 404:
            resource, identifier = missing or ("resource", path)
            raise ArchiveNotFoundError(resource, identifier)
        if status >= 400:
            raise ArchiveRejectedError(f"{method} {path}: {reason(response)}", status)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise ArchiveError(f"Orthanc {method} {path} did not answer JSON: {exc}") from exc

    def _list(self, method: str, path: str, **kwargs: Any) -> list[Any]:
        answer = self._json(method, path, **kwargs)
        if not isinstance(answer, list):
            raise ArchiveError(
                f"Orthanc {method} {path} answered {type(answer).__name__}: expected a list"
            )
        return answer

    @staticmethod
    def _missing(level: ResourceLevel, archive_id: str) -> tuple[str, str]:
        return (level.name.lower(), archive_id)

    # -- store ------------------------------------------------------------------------------

    def store_instance(self, data: bytes) -> StoredInstance:
        """Store one DICOM Part 10 file (``POST /instances``).

        Raises
        ------
        ArchiveRejectedError
            Orthanc refused it (e.g. not DICOM), or answered something other than a receipt.
        ArchiveUnavailableError
            Orthanc cannot be reached or failed.
        """
        answer = self._json("POST", "/instances", content=data)
        receipt = read_receipt(answer)
        if receipt is None:
            raise ArchiveRejectedError(f"unexpected answer from Orthanc: {answer!r:.300}")
        return receipt

    def store_instances(self, instances: Sequence[bytes]) -> list[StoredInstance | ArchiveError]:
        """Store DICOM Part 10 files: one ZIP, else one request each (see the module
        docstring). One outcome per instance, in order; never raises for Orthanc's failures."""
        if len(instances) > 1:
            receipts = self._store_zip(instances)
            if isinstance(receipts, ArchiveUnavailableError):
                return [receipts] * len(instances)
            if receipts is not None:
                return list(receipts)
        outcomes: list[StoredInstance | ArchiveError] = []
        for data in instances:
            if outcomes and isinstance(outcomes[-1], ArchiveUnavailableError):
                outcomes.append(outcomes[-1])  # no point trying the rest now
                continue
            try:
                outcomes.append(self.store_instance(data))
            except ArchiveError as exc:
                outcomes.append(exc)
        return outcomes

    def _store_zip(
        self, instances: Sequence[bytes]
    ) -> list[StoredInstance] | ArchiveUnavailableError | None:
        """The receipts of one ZIP upload; ``None`` when it must be sent one by one."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zipped:
            for index, data in enumerate(instances):
                zipped.writestr(f"{index:04d}.dcm", data)
        try:
            answers = self._json("POST", "/instances", content=buffer.getvalue())
        except ArchiveUnavailableError as exc:
            return exc
        except ArchiveError as exc:
            logger.info(
                "Orthanc refused a ZIP of %d instances (%s): one by one", len(instances), exc
            )
            return None
        if not isinstance(answers, list) or len(answers) != len(instances):
            return None
        receipts = []
        for data, answer in zip(instances, answers, strict=True):
            receipt = read_receipt(answer)
            if receipt is None or receipt.archive_id != expected_id(data):
                return None
            receipts.append(receipt)
        return receipts

    # -- search -----------------------------------------------------------------------------

    def _search(
        self,
        level: ResourceLevel,
        search_filters: Mapping[str, str] | None,
        limit: int | None,
        offset: int,
    ) -> list[ArchivedResource]:
        """``POST /tools/find`` with ``Limit`` and ``Since``: never unbounded. Without ``limit``
        one more than the maximum is asked for, so that a broader search shows and is refused.
        """
        if limit is not None and limit <= 0:
            return []  # Orthanc reads a Limit of 0 as none
        body = {
            "Level": ORTHANC_LEVELS[level],
            "Query": dict(search_filters or {}),
            "Expand": True,
            "Limit": min(limit, self.max_find_results)
            if limit is not None
            else self.max_find_results + 1,
            "Since": offset,
        }
        found = [resource(item, level) for item in self._list("POST", "/tools/find", json=body)]
        if limit is None and len(found) > self.max_find_results:
            raise ArchiveQueryTooBroadError(ORTHANC_LEVELS[level], self.max_find_results)
        return found

    def search_for_patients(
        self,
        search_filters: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ArchivedResource]:
        """Patients matching ``search_filters`` (``POST /tools/find``)."""
        return self._search(ResourceLevel.PATIENT, search_filters, limit, offset)

    def search_for_studies(
        self,
        search_filters: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ArchivedResource]:
        """Studies matching ``search_filters`` (``POST /tools/find``)."""
        return self._search(ResourceLevel.STUDY, search_filters, limit, offset)

    def search_for_series(
        self,
        search_filters: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ArchivedResource]:
        """Series matching ``search_filters`` (``POST /tools/find``)."""
        return self._search(ResourceLevel.SERIES, search_filters, limit, offset)

    def search_for_instances(
        self,
        search_filters: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ArchivedResource]:
        """Instances matching ``search_filters`` (``POST /tools/find``)."""
        return self._search(ResourceLevel.INSTANCE, search_filters, limit, offset)

    # -- navigate ---------------------------------------------------------------------------

    def get_resource(self, level: ResourceLevel, archive_id: ArchiveId) -> ArchivedResource:
        """One resource by its Orthanc ID."""
        missing = self._missing(level, archive_id)
        return resource(self._json("GET", f"/{PATHS[level]}/{archive_id}", missing=missing), level)

    def get_resources(
        self, level: ResourceLevel, archive_ids: Sequence[ArchiveId]
    ) -> list[ArchivedResource]:
        """Several resources of one level: ``POST /tools/bulk-content``, one request per
        ``_BULK`` keys (Orthanc leaves out the keys it does not have)."""
        found: list[ArchivedResource] = []
        keys = list(dict.fromkeys(archive_ids))
        for start in range(0, len(keys), _BULK):
            body = {"Resources": keys[start : start + _BULK], "Level": ORTHANC_LEVELS[level]}
            found += [
                resource(item, level)
                for item in self._list("POST", "/tools/bulk-content", json=body)
            ]
        return found

    def _below(
        self, level: ResourceLevel, archive_id: ArchiveId, below: ResourceLevel
    ) -> list[ArchivedResource]:
        path = f"/{PATHS[level]}/{archive_id}/{PATHS[below]}"
        items = self._list("GET", path, missing=self._missing(level, archive_id))
        return [resource(item, below) for item in items]

    def get_patient_studies(self, patient: ArchiveId) -> list[ArchivedResource]:
        """The patient's studies."""
        return self._below(ResourceLevel.PATIENT, patient, ResourceLevel.STUDY)

    def get_study_series(self, study: ArchiveId) -> list[ArchivedResource]:
        """The study's series."""
        return self._below(ResourceLevel.STUDY, study, ResourceLevel.SERIES)

    def get_study_instances(self, study: ArchiveId) -> list[ArchivedResource]:
        """Every instance of the study."""
        return self._below(ResourceLevel.STUDY, study, ResourceLevel.INSTANCE)

    def get_series_instances(self, series: ArchiveId) -> list[ArchivedResource]:
        """Every instance of the series."""
        return self._below(ResourceLevel.SERIES, series, ResourceLevel.INSTANCE)

    def edge_metrics(self, *, timeout_s: float = 2.0) -> str:
        """The Prometheus text radcloud's DICOM edge plugin serves in this Orthanc
        (``GET /radcloud/edge/metrics``; ``gateway_edge=orthanc``).

        Raises
        ------
        ArchiveError
            Orthanc cannot be reached, or has no such plugin route (``ArchiveNotFoundError``).
        """
        return self._send("GET", _EDGE_METRICS, timeout_s=timeout_s).text

    def get_statistics(
        self, level: ResourceLevel | None = None, archive_id: ArchiveId | None = None
    ) -> ArchiveStatistics:
        """Counts of the whole archive (no arguments) or below one resource."""
        if (level is None) != (archive_id is None):
            raise ValueError(f"give both level ({level}) and archive_id ({archive_id}), or neither")
        if level is None or archive_id is None:
            path, missing = "/statistics", None
        else:
            path, missing = (
                f"/{PATHS[level]}/{archive_id}/statistics",
                self._missing(level, archive_id),
            )
        answer = self._json("GET", path, missing=missing)
        if not isinstance(answer, dict):
            raise ArchiveError(f"Orthanc GET {path} answered {answer!r:.200}: expected an object")

        def count(key: str) -> int | None:
            value = answer.get(key)
            return int(value) if value is not None else None

        return ArchiveStatistics(
            patients=count("CountPatients"),
            studies=count("CountStudies"),
            series=count("CountSeries"),
            instances=count("CountInstances") or 0,
        )

    def list_instance_attachments(
        self, since: int = 0, limit: int = 1000
    ) -> list[InstanceAttachment]:
        """A page of every instance the archive holds, in the index's order, with its stored
        file's key and size (``GET /instances?expand&since&limit``): what a backup walks.

        Parameters
        ----------
        since
            How many instances to skip (an offset into Orthanc's list, not a change ``seq``).
        limit
            The most instances of the page; a shorter page is the last.
        """
        answer = self._list(
            "GET", "/instances", params={"expand": "", "since": since, "limit": limit}
        )
        try:
            return [
                InstanceAttachment(
                    archive_id=ArchiveId(str(item["ID"])),
                    attachment_id=str(item["FileUuid"]),
                    size=int(item["FileSize"]),
                )
                for item in answer
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchiveError(f"Orthanc GET /instances?expand answered {answer!r:.200}") from exc

    # -- retrieve ---------------------------------------------------------------------------

    def retrieve_instance(self, instance: ArchiveId) -> bytes:
        """The instance's Part 10 file."""
        missing = self._missing(ResourceLevel.INSTANCE, instance)
        return self._send("GET", f"/instances/{instance}/file", missing=missing).content

    def retrieve_series_archive(self, series: ArchiveId) -> bytes:
        """The series as one ZIP."""
        missing = self._missing(ResourceLevel.SERIES, series)
        path = f"/series/{series}/archive"
        return self._send("GET", path, missing=missing, timeout_s=self._archive_timeout_s).content

    def retrieve_study_archive(self, study: ArchiveId) -> bytes:
        """The study as one ZIP."""
        missing = self._missing(ResourceLevel.STUDY, study)
        path = f"/studies/{study}/archive"
        return self._send("GET", path, missing=missing, timeout_s=self._archive_timeout_s).content

    def get_instance_metadata(self, instance: ArchiveId) -> dict[str, Any]:
        """The instance's attributes by keyword (``/instances/{id}/simplified-tags``)."""
        missing = self._missing(ResourceLevel.INSTANCE, instance)
        answer = self._json("GET", f"/instances/{instance}/simplified-tags", missing=missing)
        if not isinstance(answer, dict):
            raise ArchiveError(f"Orthanc answered {answer!r:.200} for the tags of {instance}")
        return answer

    def get_instance_format(self, instance: ArchiveId) -> InstanceFormat:
        """SOP Class and Transfer Syntax UIDs from Orthanc's metadata of the instance."""
        missing = self._missing(ResourceLevel.INSTANCE, instance)
        answer = self._json("GET", f"/instances/{instance}/metadata?expand", missing=missing)
        if not isinstance(answer, dict):
            raise ArchiveError(f"Orthanc answered {answer!r:.200} for the metadata of {instance}")
        return InstanceFormat(
            sop_class_uid=str(answer.get("SopClassUid", "")),
            transfer_syntax_uid=str(answer.get("TransferSyntax", "")),
        )

    # -- delete -----------------------------------------------------------------------------

    def _delete(self, level: ResourceLevel, archive_id: ArchiveId) -> None:
        self._send(
            "DELETE", f"/{PATHS[level]}/{archive_id}", missing=self._missing(level, archive_id)
        )

    def delete_instance(self, instance: ArchiveId) -> None:
        """Delete one instance."""
        self._delete(ResourceLevel.INSTANCE, instance)

    def delete_series(self, series: ArchiveId) -> None:
        """Delete a series."""
        self._delete(ResourceLevel.SERIES, series)

    def delete_study(self, study: ArchiveId) -> None:
        """Delete a study."""
        self._delete(ResourceLevel.STUDY, study)

    # -- changes ----------------------------------------------------------------------------

    def changes(self, since: int = 0, limit: int = 100) -> ChangeFeed:
        """A page of Orthanc's change log (``GET /changes``)."""
        answer = self._json("GET", "/changes", params={"since": since, "limit": limit})
        if not isinstance(answer, dict):
            raise ArchiveError(f"Orthanc GET /changes answered {answer!r:.200}: expected an object")
        changes = tuple(
            Change(
                seq=int(item["Seq"]),
                change_type=str(item["ChangeType"]),
                level=LEVELS[str(item["ResourceType"])],
                archive_id=ArchiveId(str(item["ID"])),
                date=str(item.get("Date", "")),
            )
            for item in answer.get("Changes", [])
            if str(item.get("ResourceType")) in LEVELS
        )
        return ChangeFeed(
            changes, last=int(answer.get("Last", since)), done=bool(answer.get("Done"))
        )

    def latest_change(self) -> int:
        """The ``Seq`` of Orthanc's newest change (``GET /changes?last``)."""
        answer = self._json("GET", "/changes", params={"last": ""})
        if not isinstance(answer, dict):
            raise ArchiveError(f"Orthanc GET /changes?last answered {answer!r:.200}")
        return int(answer.get("Last", 0))

    # -- Orthanc's own ----------------------------------------------------------------------

    def server_version(self) -> str:
        """``Orthanc`` and its version (``GET /system``)."""
        answer = self._json("GET", "/system")
        version = answer.get("Version", "unknown") if isinstance(answer, dict) else "unknown"
        return f"Orthanc {version}"

    def anonymize_instance(
        self,
        instance: ArchiveId,
        *,
        dicom_version: str,
        replace: Mapping[str, Any],
        keep: Sequence[str] = (),
    ) -> bytes:
        """``POST /instances/{id}/anonymize``: the de-identified file, nothing stored."""
        body = {
            "DicomVersion": dicom_version,
            "Force": True,
            "Replace": dict(replace),
            "Keep": list(keep),
        }
        missing = self._missing(ResourceLevel.INSTANCE, instance)
        return self._send(
            "POST", f"/instances/{instance}/anonymize", missing=missing, json=body
        ).content


if TYPE_CHECKING:  # mypy proves the implementation keeps the protocol
    _CONFORMS: type[AnonymizingArchive] = OrthancArchive
