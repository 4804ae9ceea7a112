"""Orthanc's Python plugin script for radcloud's DICOM edge (``PythonScript``; the orthanc-python
4.0 plugin runs it once, at start). It builds :class:`~dicom_gateway.edge.runtime.Edge` from the
``RADCLOUD_*`` settings in Orthanc's environment and registers its callbacks:

- the C-STORE filter (:mod:`dicom_gateway.edge.policy`);
- C-FIND and C-MOVE (:mod:`dicom_gateway.edge.query`);
- ``GET /radcloud/edge`` (health, JSON) and ``GET /radcloud/edge/metrics`` (Prometheus text)
  on Orthanc's REST API, behind its authentication.

Orthanc's environment puts the repository and the virtual environment on ``PYTHONPATH``
(:func:`radcloud.services.orthanc.orthanc_component`).
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
from io import BytesIO
from typing import Any

import orthanc  # type: ignore[import-not-found]  # the plugin's module, only inside Orthanc
from pydicom import dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from core.config import load_settings
from dicom_gateway.edge.query import identifier_of
from dicom_gateway.edge.runtime import Edge

_FIND_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.2.1.1")  # Patient Root Query/Retrieve - FIND
_JSON_FORMAT = orthanc.DicomToJsonFormat.HUMAN
_JSON_FLAGS = orthanc.DicomToJsonFlags.SKIP_GROUP_LENGTHS
_JSON_MAX_STRING = 256


class _Instance:
    """Orthanc's ``DicomInstance`` as :class:`~dicom_gateway.edge.policy.ReceivedInstance`."""

    __slots__ = ("_instance",)

    def __init__(self, instance: Any) -> None:
        self._instance = instance

    @property
    def calling_ae_title(self) -> str:
        return str(self._instance.GetInstanceRemoteAet())

    @property
    def size(self) -> int:
        return int(self._instance.GetInstanceSize())

    @property
    def transfer_syntax_uid(self) -> str:
        return str(self._instance.GetInstanceTransferSyntaxUid())

    @property
    def has_pixel_data(self) -> bool:
        return bool(self._instance.HasInstancePixelData())

    def tags(self) -> dict[str, Any]:
        # keyword -> value like the "simplified JSON", without private, unknown or binary
        # elements and with long strings cut: the policy reads short public attributes only
        text = self._instance.GetInstanceAdvancedJson(_JSON_FORMAT, _JSON_FLAGS, _JSON_MAX_STRING)
        return json.loads(text)  # type: ignore[no-any-return]

    def data(self) -> bytes:
        return bytes(self._instance.GetInstanceData())


def _on_store(instance: Any) -> int:
    return EDGE.store.check(_Instance(instance))


def _find_value(query: Any, index: int) -> str:
    """The value of a C-FIND key; Orthanc gives none for a key of a binary VR (``Rows``, US),
    which is then read as a return key (an empty value)."""
    try:
        return str(query.GetFindQueryValue(index))
    except orthanc.OrthancException:
        return ""


def _on_find(answers: Any, query: Any, issuer_aet: str, called_aet: str) -> None:
    elements = [
        (query.GetFindQueryTagGroup(i), query.GetFindQueryTagElement(i), _find_value(query, i))
        for i in range(query.GetFindQuerySize())
    ]
    for answer in EDGE.query.find(identifier_of(elements), issuer_aet):
        answers.FindAddAnswer(_part10(answer))


def _part10(dataset: Any) -> bytes:
    """A C-FIND answer as the Part 10 buffer ``FindAddAnswer`` parses."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = _FIND_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.file_meta = meta
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def _on_move(**request: Any) -> None:
    EDGE.query.move(request)


def _on_health(output: Any, uri: str, **request: Any) -> None:
    if request.get("method") != "GET":
        output.SendMethodNotAllowed("GET")
        return
    output.AnswerBuffer(json.dumps(EDGE.health()), "application/json")


def _on_metrics(output: Any, uri: str, **request: Any) -> None:
    if request.get("method") != "GET":
        output.SendMethodNotAllowed("GET")
        return
    output.AnswerBuffer(EDGE.metrics(), "text/plain; version=0.0.4")


SETTINGS = load_settings()
logging.basicConfig(
    stream=sys.stderr,
    level=SETTINGS.log_level,
    format="%(asctime)s %(levelname)s radcloud-edge %(name)s: %(message)s",
)
logging.getLogger("httpx").setLevel(logging.WARNING)  # a request a second to Orthanc itself
EDGE = Edge(SETTINGS)
orthanc.RegisterIncomingCStoreInstanceFilter(_on_store)
orthanc.RegisterFindCallback(_on_find)
orthanc.RegisterMoveCallback(_on_move)
orthanc.RegisterRestCallback("/radcloud/edge", _on_health)
orthanc.RegisterRestCallback("/radcloud/edge/metrics", _on_metrics)
EDGE.start()
atexit.register(EDGE.stop)
logging.getLogger("dicom_gateway.edge").info(
    "radcloud's DICOM edge is in Orthanc (archive node %d): %s on port %d",
    SETTINGS.orthanc_node or 0,
    SETTINGS.gateway_ae_title,
    SETTINGS.gateway_port + SETTINGS.orthanc_node_offset(SETTINGS.orthanc_node or 0),
)
