"""A federated search as FHIR R4 ``ImagingStudy`` resources in a ``searchset`` Bundle.

Built and validated with the ``fhir.resources`` models (the R4B package, whose ImagingStudy,
Endpoint and OperationOutcome are R4's). As the SMART imaging access guide and IHE's
ImagingStudy usage describe, each ImagingStudy names its Study Instance UID
(``urn:dicom:uid``) and references an ``Endpoint`` of type ``dicom-wado-rs`` whose address is
the WADO-RS base through which radcloud serves the study of that hospital; the Endpoints are
``include`` entries. When a node did not answer, an ``OperationOutcome`` entry (search mode
``outcome``) names it, so a client sees the results are partial.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome

from serving.federation.model import FederatedAnswer, FederatedStudy, NodeState

__all__ = ["endpoint_id", "imaging_study_bundle"]

DCM = "http://dicom.nema.org/resources/ontology/DCM"
CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
_ISSUE_CODE = {  # FHIR issue-type codes
    NodeState.TIMEOUT: "timeout",
    NodeState.REFUSED: "forbidden",
    NodeState.ERROR: "exception",
}


def endpoint_id(hospital: str) -> str:
    """A FHIR id (``[A-Za-z0-9.-]{1,64}``) for a hospital's WADO-RS Endpoint, stable per name."""
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", hospital).strip("-")[:40] or "hospital"
    return f"{slug}-{hashlib.sha256(hospital.encode()).hexdigest()[:8]}"


def _started(study: FederatedStudy) -> str | None:
    """The study date as a FHIR date; DICOM Study Time has no time zone, which a FHIR
    dateTime with a time must have, so the time is left out."""
    date = study.study_date or ""
    if not re.fullmatch(r"\d{8}", date):
        return None
    try:
        return dt.date(int(date[:4]), int(date[4:6]), int(date[6:])).isoformat()
    except ValueError:
        return None


def _imaging_study(study: FederatedStudy) -> ImagingStudy:
    identifiers: list[dict[str, Any]] = [
        {"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_instance_uid}"}
    ]
    if study.accession_number:
        identifiers.append(
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "ACSN",
                        }
                    ]
                },
                "value": study.accession_number,
                "assigner": {"display": study.held_by[0]},
            }
        )
    subject = (
        {"reference": f"Patient/{study.patient_key}"}
        if study.patient_key
        else {"display": "patient not linked across hospitals"}
    )
    return ImagingStudy(
        id=study.study_instance_uid,
        identifier=identifiers,
        status="available",
        subject=subject,
        started=_started(study),
        modality=[{"system": DCM, "code": code} for code in study.modalities_in_study] or None,
        numberOfSeries=study.number_of_study_related_series,
        numberOfInstances=study.number_of_study_related_instances,
        description=study.study_description or None,
        endpoint=[{"reference": f"Endpoint/{endpoint_id(h)}"} for h in study.held_by],
    )


def _endpoint(hospital: str, address: str) -> Endpoint:
    return Endpoint(
        id=endpoint_id(hospital),
        status="active",
        name=f"{hospital} (WADO-RS through radcloud)",
        connectionType={"system": CONNECTION_TYPE, "code": "dicom-wado-rs"},
        payloadType=[{"text": "DICOM"}],
        payloadMimeType=["application/dicom"],
        address=address,
    )


def _outcome(answer: FederatedAnswer) -> OperationOutcome:
    issues = [
        {
            "severity": "warning",
            "code": _ISSUE_CODE[node.state],
            "diagnostics": f"{node.hospital} ({node.kind}): {node.state}: {node.reason or ''}",
        }
        for node in answer.nodes
        if node.state is not NodeState.OK
    ]
    return OperationOutcome(issue=issues)


def imaging_study_bundle(
    answer: FederatedAnswer, *, self_url: str, wado_base: Callable[[str], str]
) -> Bundle:
    """The answer as a ``searchset`` Bundle.

    Parameters
    ----------
    answer
        The merged studies and every node's answer.
    self_url
        The search's own URL (the Bundle's ``self`` link).
    wado_base
        The WADO-RS base URL through which radcloud serves a hospital's studies.
    """
    base = self_url.split("?", 1)[0].rsplit("/", 1)[0]
    entries: list[dict[str, object]] = [
        {
            "fullUrl": f"{base}/ImagingStudy/{study.study_instance_uid}",
            "resource": _imaging_study(study),
            "search": {"mode": "match"},
        }
        for study in answer.studies
    ]
    hospitals = sorted({h for study in answer.studies for h in study.held_by})
    entries += [
        {
            "fullUrl": f"{base}/Endpoint/{endpoint_id(hospital)}",
            "resource": _endpoint(hospital, wado_base(hospital)),
            "search": {"mode": "include"},
        }
        for hospital in hospitals
    ]
    if answer.partial:
        entries.append({"resource": _outcome(answer), "search": {"mode": "outcome"}})
    return Bundle(
        type="searchset",
        total=len(answer.studies),
        link=[{"relation": "self", "url": self_url}],
        entry=entries or None,
    )
