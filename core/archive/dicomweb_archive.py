"""The image archive over DICOMweb (QIDO-RS, WADO-RS, STOW-RS; PS3.18): the seam's second
implementation, for a remote node (another radcloud, a hospital's Orthanc with its DICOMweb
plugin, dcm4chee) or the local Orthanc's plugin.

Its :data:`~core.archive.model.ArchiveId` is the resource's DICOMweb path below the service
root, e.g. ``studies/1.2.3/series/1.2.4/instances/1.2.5`` (a patient, which DICOMweb does not
address, is ``patients/{PatientID}``); see :mod:`core.archive._dicomweb_json`. Errors map as
:mod:`core.archive.dicomweb_stream` draws them. What DICOMweb cannot do (delete, a change feed,
counts of the whole archive, de-identifying on the server) raises
:class:`~core.archive.ArchiveUnsupportedError` naming the operation, before anything is sent.

HTTP goes through httpx rather than dicomweb-client (whose ``requests`` transport reads a
multipart answer whole): a series or study is read part by part as it arrives
(:mod:`core.archive._multipart`), and :meth:`DicomwebArchive.open_dicomweb_stream` relays any
answer chunk by chunk for the federated pass-through. Resources from a search carry no
``children`` (a QIDO-RS result does not list them); ask one level down instead.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import re
import ssl
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import certifi
import httpx
import pydicom
from pydicom.errors import InvalidDicomError

from core.archive._dicomweb_json import (
    ResourcePath,
    count_of,
    cut_short,
    dataset_keywords,
    query_params,
    resource_from_json,
    stow_outcomes,
)
from core.archive._multipart import boundary_of, encode_parts, iter_parts
from core.archive._stow_http import StowSender
from core.archive.dicomweb_stream import (
    DicomwebStream,
    check_answer,
    dicomweb_timeout,
    open_dicomweb_stream,
    transport_error,
)
from core.archive.exceptions import (
    ArchiveError,
    ArchiveNotFoundError,
    ArchiveQueryTooBroadError,
    ArchiveRejectedError,
    ArchiveUnsupportedError,
)
from core.archive.model import (
    ArchivedResource,
    ArchiveId,
    ArchiveStatistics,
    ChangeFeed,
    InstanceFormat,
    ResourceLevel,
    StoredInstance,
)
from core.archive.relay import HttpEndpoint

if TYPE_CHECKING:
    from core.archive.protocol import ImageArchive

__all__ = ["DICOM_PARTS", "STOW_BATCH_BYTES", "DicomwebArchive"]

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
DICOM_PARTS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
"""The Accept of a retrieval: Part 10 instances, in the transfer syntax the node stores."""
STOW_BATCH_BYTES = 64 * 1024 * 1024
"""The most bytes of instances one STOW-RS request carries (one instance may exceed it)."""

_QIDO_PATHS = {
    ResourceLevel.STUDY: "studies",
    ResourceLevel.SERIES: "series",
    ResourceLevel.INSTANCE: "instances",
}
_INCLUDE = {  # beyond PS3.18 Table 6.7.1-2a's defaults: the issuer makes a Patient ID whole
    ResourceLevel.STUDY: (
        "IssuerOfPatientID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    ResourceLevel.SERIES: ("StudyInstanceUID", "NumberOfSeriesRelatedInstances"),
    ResourceLevel.INSTANCE: ("StudyInstanceUID", "SeriesInstanceUID"),
}
_TRANSFER_SYNTAX = re.compile(r'transfer-syntax\s*=\s*(?:"([0-9.]+)"|([0-9.]+))', re.IGNORECASE)


def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The TLS context of a node: its CA file's, or the system's (certifi) trust store.

    Built once per CA file (and again when the file changes): httpx would load the whole trust
    store for every client, 25-60 ms of CPU per federated search of a node
    (``benchmarks/results/2026-12-06-vm-cpu.json``, the federation suite's notes).
    """
    if ca_file is None:
        return _cached_context(None, 0.0)
    return _cached_context(ca_file, Path(ca_file).stat().st_mtime)


@functools.lru_cache(maxsize=32)
def _cached_context(ca_file: str | None, _mtime: float) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file or certifi.where())


def _uids_of(data: bytes) -> tuple[str, str, str]:
    """The Study, Series and SOP Instance UIDs of a Part 10 file.

    Raises
    ------
    InvalidDicomError, OSError, ValueError, EOFError, AttributeError
        Its header cannot be read, or lacks one of them.
    """
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return (
        str(header.StudyInstanceUID),
        str(header.SeriesInstanceUID),
        str(header.SOPInstanceUID),
    )


def _unsupported(operation: str, url: str, why: str) -> ArchiveUnsupportedError:
    return ArchiveUnsupportedError(operation, url, why)


class DicomwebArchive:
    """An image archive over DICOMweb (thread-safe: one connection pool).

    Parameters
    ----------
    url
        The DICOMweb service root, e.g. ``https://pacs.example.org/dicom-web``.
    username, password
        HTTP basic credentials, or neither.
    token
        A bearer token (instead of basic credentials).
    ca_file
        PEM file of the CAs that sign the node's TLS certificate (else the system's).
    connect_timeout_s, read_timeout_s
        Timeouts of each request: connecting, and each read of the answer.
    max_find_results
        The most matches one search returns; a broader search without ``limit`` is refused
        (:class:`~core.archive.ArchiveQueryTooBroadError`).
    name
        The node's name, for messages.

    Raises
    ------
    ArchiveError
        ``ca_file`` cannot be read as PEM certificates.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        ca_file: Path | str | None = None,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 15.0,
        max_find_results: int = 10000,
        name: str | None = None,
    ) -> None:
        if token is not None and (username is not None or password is not None):
            raise ValueError("give basic credentials (username, password) or a token, not both")
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self._url = url.rstrip("/")
        self.name = name or self._url
        self.max_find_results = max_find_results
        self.timeout = dicomweb_timeout(connect_timeout_s, read_timeout_s)
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        try:
            verify = _ssl_context(str(ca_file) if ca_file is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise ArchiveError(
                f'the CA file "{ca_file}" of DICOMweb node {self._url} cannot be used: {exc}'
            ) from exc
        self._client_options: dict[str, Any] = {
            "base_url": f"{self._url}/",
            "auth": (username, password) if username is not None and password is not None else None,
            "headers": headers,
            "timeout": self.timeout,
            "verify": verify,
        }
        self._client = httpx.Client(**self._client_options)
        self._stow_sender = StowSender(
            self._url,
            headers=headers,
            basic=self._client_options["auth"],
            tls=verify,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
        )
        self._endpoint = HttpEndpoint(
            f"{self._url}/",
            self._client_options["auth"],
            headers,
            verify,
            connect_timeout_s,
            read_timeout_s,
        )

    def __repr__(self) -> str:  # never the credentials
        return f"DicomwebArchive({self._url!r})"

    @property
    def url(self) -> str:
        """The DICOMweb service root."""
        return self._url

    @property
    def http_client(self) -> httpx.Client:
        """The authenticated client (``base_url`` the service root), for
        :func:`~core.archive.open_dicomweb_stream`."""
        return self._client

    @property
    def endpoint(self) -> HttpEndpoint:
        """The same root, credentials, TLS and timeouts, for a relay on an event loop
        (:func:`~core.archive.relay.open_relay`)."""
        return self._endpoint

    def __enter__(self) -> DicomwebArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pools."""
        self._client.close()
        self._stow_sender.close()

    # -- transport --------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        missing: tuple[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        url = f"{self._url}/{path}"
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.RequestError as exc:
            raise transport_error(url, exc) from exc
        return check_answer(response, missing=missing)

    def _json(self, path: str, *, missing: tuple[str, str] | None = None, **kwargs: Any) -> Any:
        return self._json_answer(path, missing=missing, **kwargs)[0]

    def _json_answer(
        self, path: str, *, missing: tuple[str, str] | None = None, **kwargs: Any
    ) -> tuple[Any, httpx.Headers]:
        """The JSON of ``GET path`` (``[]`` for 204 No Content) and the answer's headers."""
        response = self._send(
            "GET", path, missing=missing, headers={"Accept": DICOM_JSON}, **kwargs
        )
        if response.status_code == 204 or not response.content.strip():
            return [], response.headers  # QIDO-RS: no match
        try:
            return response.json(), response.headers
        except ValueError as exc:
            raise ArchiveError(
                f"DICOMweb GET {self._url}/{path} did not answer JSON: {exc}"
            ) from exc

    def open_dicomweb_stream(
        self,
        path: str,
        query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        check: bool = False,
        missing: tuple[str, str] | None = None,
        decoded: bool = False,
    ) -> AbstractContextManager[DicomwebStream]:
        """Stream ``GET path`` of this node (see :func:`~core.archive.open_dicomweb_stream`),
        e.g. ``archive.open_dicomweb_stream(f"studies/{uid}", headers={"Accept": ...})``."""
        return open_dicomweb_stream(
            self._client, path, query, headers, check=check, missing=missing, decoded=decoded
        )

    # -- store (STOW-RS) --------------------------------------------------------------------

    def store_instance(self, data: bytes) -> StoredInstance:
        """Store one DICOM Part 10 file (STOW-RS).

        Raises
        ------
        ArchiveRejectedError
            The node refused it, or it is not DICOM.
        ArchiveUnavailableError
            The node cannot be reached or failed.
        """
        (outcome,) = self.store_instances([data])
        if isinstance(outcome, ArchiveError):
            raise outcome
        return outcome

    def store_instances(
        self,
        instances: Sequence[bytes],
        *,
        uids: Sequence[tuple[str, str, str]] | None = None,
    ) -> list[StoredInstance | ArchiveError]:
        """Store DICOM Part 10 files by STOW-RS, as few requests as :data:`STOW_BATCH_BYTES`
        allows; one outcome per instance, in order, from the answers' Referenced and Failed SOP
        Sequences (PS3.18 10.5.3). A file whose header cannot be read is refused here, without
        being sent. ``already_stored`` is always ``False``: STOW-RS does not say.

        ``uids``: the Study, Series and SOP Instance UIDs of each file, where the caller has
        read them already (then the files are not parsed here). A request the node refuses
        whole (an HTTP error, not a Failed SOP Sequence) is sent again one instance per
        request, so that a refusal lands on the instance it concerns."""
        outcomes: list[StoredInstance | ArchiveError | None] = []
        sent: list[tuple[int, ResourcePath, bytes]] = []
        for index, data in enumerate(instances):
            try:
                study, series, instance = uids[index] if uids is not None else _uids_of(data)
            except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError) as exc:
                outcomes.append(ArchiveRejectedError(f"instance {index} is not DICOM: {exc}"))
                continue
            outcomes.append(None)
            sent.append(
                (index, ResourcePath(ResourceLevel.INSTANCE, study, series, instance), data)
            )
        start = 0
        while start < len(sent):
            end, size = start, 0
            while end < len(sent) and (
                end == start or size + len(sent[end][2]) <= STOW_BATCH_BYTES
            ):
                size += len(sent[end][2])
                end += 1
            answered = self._stow([data for _, _, data in sent[start:end]])
            whole_refused = isinstance(answered, ArchiveRejectedError) and end - start > 1
            for index, path, data in sent[start:end]:
                alone = self._stow([data]) if whole_refused else answered
                outcomes[index] = self._receipt(path, alone)
            start = end
        return [o if o is not None else ArchiveError("no outcome") for o in outcomes]

    def _stow(self, instances: Sequence[bytes]) -> dict[str, str | None] | ArchiveError:
        """SOP Instance UID to ``None`` (stored) or the failure reason; an error for all."""
        content_type, body = encode_parts(instances, "application/dicom")
        try:
            status, data = self._stow_sender.post(content_type, body, DICOM_JSON)
        except ArchiveError as exc:
            return exc
        if status not in (200, 202, 409):
            text = data[:200].decode("utf-8", "replace")
            return ArchiveRejectedError(f"STOW-RS answered {status}: {text}", status)
        try:
            answer = json.loads(data)
        except ValueError:
            text = data[:200].decode("utf-8", "replace")
            return ArchiveRejectedError(f"STOW-RS answer is not DICOM JSON: {text}", status)
        return stow_outcomes(answer)

    def _receipt(
        self, path: ResourcePath, answered: dict[str, str | None] | ArchiveError
    ) -> StoredInstance | ArchiveError:
        if isinstance(answered, ArchiveError):
            return answered
        uid = path.sop_instance_uid or ""
        if uid not in answered:
            return ArchiveRejectedError(f'the STOW-RS answer does not mention instance "{uid}"')
        failure = answered[uid]
        if failure is not None:
            return ArchiveRejectedError(f'instance "{uid}" refused: {failure}', 409)
        series = ResourcePath(
            ResourceLevel.SERIES, path.study_instance_uid, path.series_instance_uid
        )
        study = ResourcePath(ResourceLevel.STUDY, path.study_instance_uid)
        return StoredInstance(path.archive_id, series.archive_id, study.archive_id)

    # -- search (QIDO-RS) -------------------------------------------------------------------

    def _query(
        self,
        path: str,
        level: ResourceLevel,
        search_filters: Mapping[str, str] | None,
        limit: int | None,
        offset: int,
        *,
        missing: tuple[str, str] | None = None,
    ) -> list[ArchivedResource]:
        """One QIDO-RS request, bounded as :meth:`OrthancArchive._search` is: without ``limit``
        one more than the maximum is asked for, so that a broader search is refused; so is one
        the node cut short itself (a ``Warning: 299`` saying more results exist, PS3.18
        8.3.4.1), rather than taken as complete."""
        if limit is not None and limit <= 0:
            return []
        bound = (
            min(limit, self.max_find_results) if limit is not None else self.max_find_results + 1
        )
        params = query_params(search_filters, bound, offset, _INCLUDE[level])
        answer, headers = self._json_answer(path, missing=missing, params=params)
        if limit is None and cut_short(headers):
            raise ArchiveQueryTooBroadError(level.name.lower(), len(answer))
        if not isinstance(answer, list):
            raise ArchiveError(f"QIDO-RS {path} answered {type(answer).__name__}: expected a list")
        found = [resource_from_json(item, level) for item in answer]
        if limit is None and len(found) > self.max_find_results:
            raise ArchiveQueryTooBroadError(level.name.lower(), self.max_find_results)
        return found

    def search_for_patients(
        self,
        search_filters: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ArchivedResource]:
        """Patients of the studies matching ``search_filters`` (DICOMweb has no patient
        resource: one entry per distinct Patient ID, paged after grouping)."""
        studies = self._query("studies", ResourceLevel.STUDY, search_filters, None, 0)
        patients: dict[str, ArchivedResource] = {}
        for study in studies:
            patient_id = study.get("PatientID") or ""
            if patient_id in patients:
                continue
            keep = {k: v for k, v in study.attributes.items() if k.startswith("Patient")}
            path = ResourcePath(ResourceLevel.PATIENT, patient_id=patient_id)
            patients[patient_id] = ArchivedResource(ResourceLevel.PATIENT, path.archive_id, keep)
        found = list(patients.values())[offset:]
        return found[:limit] if limit is not None else found

    def search_for_studies(
        self,
        search_filters: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ArchivedResource]:
        """Studies matching ``search_filters`` (``GET /studies``)."""
        return self._query("studies", ResourceLevel.STUDY, search_filters, limit, offset)

    def search_for_series(
        self,
        search_filters: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ArchivedResource]:
        """Series matching ``search_filters`` (``GET /series``)."""
        return self._query("series", ResourceLevel.SERIES, search_filters, limit, offset)

    def search_for_instances(
        self,
        search_filters: Mapping[str, str] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ArchivedResource]:
        """Instances matching ``search_filters`` (``GET /instances``)."""
        return self._query("instances", ResourceLevel.INSTANCE, search_filters, limit, offset)

    # -- navigate ---------------------------------------------------------------------------

    def get_resource(self, level: ResourceLevel, archive_id: ArchiveId) -> ArchivedResource:
        """One resource by its path (a QIDO-RS search on its UIDs)."""
        path = ResourcePath.parse(level, archive_id)
        if level is ResourceLevel.PATIENT:
            found = self.search_for_patients(path.filters(), limit=1)
        else:
            found = self._query(_QIDO_PATHS[level], level, path.filters(), 2, 0)
        if not found:
            raise ArchiveNotFoundError(level.name.lower(), archive_id)
        return found[0]

    def get_resources(
        self, level: ResourceLevel, archive_ids: Sequence[ArchiveId]
    ) -> list[ArchivedResource]:
        """Several resources: one search each (DICOMweb has no bulk read by key)."""
        found = []
        for archive_id in dict.fromkeys(archive_ids):
            try:
                found.append(self.get_resource(level, archive_id))
            except ArchiveNotFoundError:
                continue
        return found

    def get_patient_studies(self, patient: ArchiveId) -> list[ArchivedResource]:
        """The patient's studies (a study search on the Patient ID)."""
        path = ResourcePath.parse(ResourceLevel.PATIENT, patient)
        studies = self.search_for_studies(path.filters())
        if not studies:
            raise ArchiveNotFoundError("patient", patient)
        return studies

    def get_study_series(self, study: ArchiveId) -> list[ArchivedResource]:
        """The study's series (``GET /studies/{uid}/series``)."""
        ResourcePath.parse(ResourceLevel.STUDY, study)
        path = f"{study}/series"
        return self._query(path, ResourceLevel.SERIES, None, None, 0, missing=("study", study))

    def get_study_instances(self, study: ArchiveId) -> list[ArchivedResource]:
        """Every instance of the study (``GET /studies/{uid}/instances``)."""
        ResourcePath.parse(ResourceLevel.STUDY, study)
        path = f"{study}/instances"
        return self._query(path, ResourceLevel.INSTANCE, None, None, 0, missing=("study", study))

    def get_series_instances(self, series: ArchiveId) -> list[ArchivedResource]:
        """Every instance of the series (``GET /studies/{uid}/series/{uid}/instances``)."""
        ResourcePath.parse(ResourceLevel.SERIES, series)
        path = f"{series}/instances"
        return self._query(path, ResourceLevel.INSTANCE, None, None, 0, missing=("series", series))

    def get_statistics(
        self, level: ResourceLevel | None = None, archive_id: ArchiveId | None = None
    ) -> ArchiveStatistics:
        """Counts below one resource, from the QIDO-RS ``NumberOf...Related...`` attributes.

        Raises
        ------
        ArchiveUnsupportedError
            Without a resource: DICOMweb has no count of a whole archive.
        """
        if (level is None) != (archive_id is None):
            raise ValueError(f"give both level ({level}) and archive_id ({archive_id}), or neither")
        if level is None or archive_id is None:
            raise _unsupported("get_statistics", self._url, "DICOMweb counts no whole archive")
        if level is ResourceLevel.INSTANCE:
            self.get_resource(level, archive_id)
            return ArchiveStatistics(None, None, None, instances=1)
        if level is ResourceLevel.SERIES:
            series = self.get_resource(level, archive_id)
            count = count_of(series, "NumberOfSeriesRelatedInstances")
            return ArchiveStatistics(None, None, None, instances=count)
        if level is ResourceLevel.STUDY:
            studies = [self.get_resource(level, archive_id)]
        else:
            studies = self.get_patient_studies(archive_id)
        return ArchiveStatistics(
            patients=None,
            studies=len(studies) if level is ResourceLevel.PATIENT else None,
            series=sum(count_of(s, "NumberOfStudyRelatedSeries") for s in studies),
            instances=sum(count_of(s, "NumberOfStudyRelatedInstances") for s in studies),
        )

    # -- retrieve (WADO-RS) -----------------------------------------------------------------

    def iter_instances(self, level: ResourceLevel, archive_id: ArchiveId) -> Iterator[bytes]:
        """The Part 10 files of a study, series or instance, one at a time as they arrive
        (WADO-RS ``multipart/related``): at most one instance is held.

        Raises
        ------
        ArchiveNotFoundError, ArchiveUnavailableError, ArchiveRejectedError
            As the module docstring says, also while iterating.
        """
        ResourcePath.parse(level, archive_id)
        missing = (level.name.lower(), archive_id)
        with self.open_dicomweb_stream(
            archive_id, headers={"Accept": DICOM_PARTS}, check=True, missing=missing, decoded=True
        ) as stream:
            content_type = stream.headers.get("content-type", "")
            if content_type.lower().startswith("application/dicom"):
                yield b"".join(stream.chunks)
                return
            for _, body in iter_parts(stream.chunks, boundary_of(content_type)):
                yield body

    def retrieve_instance(self, instance: ArchiveId) -> bytes:
        """The instance's Part 10 file (WADO-RS)."""
        parts = list(self.iter_instances(ResourceLevel.INSTANCE, instance))
        if not parts:
            raise ArchiveNotFoundError("instance", instance)
        return parts[0]

    def _zip(self, level: ResourceLevel, archive_id: ArchiveId) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zipped:
            for index, data in enumerate(self.iter_instances(level, archive_id)):
                zipped.writestr(f"{index:05d}.dcm", data)
        return buffer.getvalue()

    def retrieve_series_archive(self, series: ArchiveId) -> bytes:
        """The series as one ZIP of Part 10 files, built as the instances arrive."""
        return self._zip(ResourceLevel.SERIES, series)

    def retrieve_study_archive(self, study: ArchiveId) -> bytes:
        """The study as one ZIP of Part 10 files, built as the instances arrive."""
        return self._zip(ResourceLevel.STUDY, study)

    def get_instance_metadata(self, instance: ArchiveId) -> dict[str, Any]:
        """The instance's attributes by keyword (WADO-RS ``.../metadata``)."""
        ResourcePath.parse(ResourceLevel.INSTANCE, instance)
        answer = self._json(f"{instance}/metadata", missing=("instance", instance))
        if not isinstance(answer, list) or not answer or not isinstance(answer[0], dict):
            raise ArchiveError(f"WADO-RS metadata of {instance} answered {answer!r:.200}")
        return dataset_keywords(answer[0])

    def get_instance_format(self, instance: ArchiveId) -> InstanceFormat:
        """SOP Class UID from the WADO-RS metadata; Transfer Syntax UID from the metadata where
        the node includes (0002,0010), else from the ``transfer-syntax`` parameter of the
        instance's part in a WADO-RS retrieval (PS3.18 8.7.3.5.2), else from the retrieved
        file's meta information (Orthanc's plugin gives it in neither QIDO-RS nor metadata)."""
        metadata = self.get_instance_metadata(instance)
        syntax = metadata.get("TransferSyntaxUID")
        if not syntax:
            syntax = self._retrieved_syntax(instance)
        return InstanceFormat(
            sop_class_uid=str(metadata.get("SOPClassUID", "")),
            transfer_syntax_uid=str(syntax or ""),
        )

    def _retrieved_syntax(self, instance: ArchiveId) -> str | None:
        missing = ("instance", instance)
        with self.open_dicomweb_stream(
            instance, headers={"Accept": DICOM_PARTS}, check=True, missing=missing, decoded=True
        ) as stream:
            content_type = stream.headers.get("content-type", "")
            if content_type.lower().startswith("application/dicom"):
                head, body = {"content-type": content_type}, b"".join(stream.chunks)
            else:
                head, body = next(iter_parts(stream.chunks, boundary_of(content_type)), ({}, b""))
        match = _TRANSFER_SYNTAX.search(head.get("content-type", ""))
        if match:
            return match.group(1) or match.group(2)
        try:
            meta = pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True).file_meta
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise ArchiveError(
                f"the node's copy of {instance} has no readable meta: {exc}"
            ) from exc
        return str(meta.get("TransferSyntaxUID", "")) or None

    # -- what DICOMweb cannot do ------------------------------------------------------------

    def delete_instance(self, instance: ArchiveId) -> None:
        """Refused: PS3.18 has no delete (:class:`~core.archive.ArchiveUnsupportedError`)."""
        raise _unsupported("delete_instance", self._url, "DICOMweb has no delete")

    def delete_series(self, series: ArchiveId) -> None:
        """Refused: PS3.18 has no delete."""
        raise _unsupported("delete_series", self._url, "DICOMweb has no delete")

    def delete_study(self, study: ArchiveId) -> None:
        """Refused: PS3.18 has no delete."""
        raise _unsupported("delete_study", self._url, "DICOMweb has no delete")

    def changes(self, since: int = 0, limit: int = 100) -> ChangeFeed:
        """Refused: DICOMweb has no change feed (poll QIDO-RS by date instead)."""
        raise _unsupported("changes", self._url, "DICOMweb has no change feed")

    def latest_change(self) -> int:
        """Refused: DICOMweb has no change feed."""
        raise _unsupported("latest_change", self._url, "DICOMweb has no change feed")

    def anonymize_instance(self, instance: ArchiveId, **_: Any) -> bytes:
        """Refused: DICOMweb does not de-identify on the server (de-identify locally,
        :mod:`imaging.deid`)."""
        raise _unsupported("anonymize_instance", self._url, "DICOMweb has no server-side anonymize")


if TYPE_CHECKING:  # mypy proves the implementation keeps the protocol
    _CONFORMS: type[ImageArchive] = DicomwebArchive
