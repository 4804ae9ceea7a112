"""A study stored over DIMSE registers its patient's identifiers in the cross-reference
(issue 15), once with each DICOM edge: storescu (dcmtk) to the gateway's real DicomService on a
real SQLite database, and to the Orthanc edge of the session's ``stack`` (its plugin
claims the study and registers the identifiers). The instance names its PatientID with
IssuerOfPatientID and a national number in OtherPatientIDsSequence, which an authority rule
then links to another hospital's patient."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from core.audit import AuditTrail
from core.config import GatewayEdge
from core.identity import PatientIdentifier, PatientIdentity
from core.secrets import load_secrets
from core.security import Actor
from dicom_gateway.dcmtk import storescu
from tests.conftest import EDGES, edge_id, stack_with_edge
from tests.dicom_gateway.dicom_files import synthetic_ct
from tests.dicom_gateway.test_scp import HOSPITAL, Gateway, make_gateway, store

pytestmark = pytest.mark.integration

__all__ = ["make_gateway"]  # the fixture, used here

EDGE_SENDER = "IDENTITY1"


def _ct(path: Path, patient_id: str, issuer: str, national: str, authority: str) -> Path:
    ds = pydicom.dcmread(io.BytesIO(synthetic_ct(generate_uid(), generate_uid())))
    ds.PatientID, ds.IssuerOfPatientID = patient_id, issuer
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = national, authority
    ds.OtherPatientIDsSequence = [other]
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("edge", EDGES, ids=edge_id)
def test_a_dimse_store_registers_the_patients_identifiers(
    make_gateway: Callable[..., Gateway],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    edge: GatewayEdge,
) -> None:
    tag = uuid.uuid4().hex[:8].upper()  # the Orthanc edge's database is the session's
    patient_id, authority = f"GH-{tag}", f"NHS-{tag}"
    ct = _ct(tmp_path / "ct.dcm", patient_id, "GH_MRN", "9434765919", authority)
    if edge is GatewayEdge.PYNETDICOM:
        gateway = make_gateway(mode="dev")
        sent = store(gateway, ct)
        assert sent.statuses == [0x0000], sent.output
        db, audit = gateway.db, gateway.audit
    else:
        stack = stack_with_edge(request, edge)
        stack.add_sender(EDGE_SENDER, HOSPITAL)
        report = storescu(
            [ct],
            host="127.0.0.1",
            port=stack.settings.gateway_port,
            calling_ae=EDGE_SENDER,
            called_ae=stack.settings.gateway_ae_title,
        )
        assert report.stored == [ct], report.output
        db = stack.database()
        audit = AuditTrail.from_secrets(db, load_secrets(stack.settings))
    identity = PatientIdentity(db, audit)
    key = identity.key_for(HOSPITAL, patient_id, "GH_MRN")
    assert key is not None
    assert identity.identifiers(key) == [
        PatientIdentifier(HOSPITAL, "9434765919", authority),
        PatientIdentifier(HOSPITAL, patient_id, "GH_MRN"),
    ]
    registered = audit.search(actor=Actor.cli(), event_code="110110", resource_id=key)
    assert [r["resource_id"] for r in registered] == [key]
    assert registered[0]["user_name"] == HOSPITAL

    # another hospital's patient with the same national number: one patient once it is a rule
    other = identity.register("Other Hospital", f"OH-{tag}", "OH_MRN", [("9434765919", authority)])
    assert other != key
    identity.add_authority(authority, "national", actor=Actor.cli())
    assert identity.key_for("Other Hospital", f"OH-{tag}", "OH_MRN") == key
