"""A study stored over DIMSE registers its patient's identifiers in the cross-reference
(issue 15): storescu (dcmtk) to the gateway's real DicomService, a real SQLite database; the
instance names its PatientID with IssuerOfPatientID and a national number in
OtherPatientIDsSequence, which an authority rule then links to another hospital's patient."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from core.identity import PatientIdentifier, PatientIdentity
from core.security import Actor
from tests.dicom_gateway.dicom_files import synthetic_ct
from tests.dicom_gateway.test_scp import HOSPITAL, Gateway, make_gateway, store

pytestmark = pytest.mark.integration

__all__ = ["make_gateway"]  # the fixture, used here


def _ct(path: Path, patient_id: str, issuer: str, national: str) -> Path:
    ds = pydicom.dcmread(io.BytesIO(synthetic_ct(generate_uid(), generate_uid())))
    ds.PatientID, ds.IssuerOfPatientID = patient_id, issuer
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = national, "NHS"
    ds.OtherPatientIDsSequence = [other]
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_dimse_store_registers_the_patients_identifiers(
    make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    gateway = make_gateway(mode="dev")
    sent = store(gateway, _ct(tmp_path / "ct.dcm", "GH-123", "GH_MRN", "9434765919"))
    assert sent.statuses == [0x0000], sent.output
    identity = PatientIdentity(gateway.db, gateway.audit)
    key = identity.key_for(HOSPITAL, "GH-123", "GH_MRN")
    assert key is not None
    assert identity.identifiers(key) == [
        PatientIdentifier(HOSPITAL, "9434765919", "NHS"),
        PatientIdentifier(HOSPITAL, "GH-123", "GH_MRN"),
    ]
    registered = gateway.audit_records("110110")
    assert [r["resource_id"] for r in registered] == [key]
    assert registered[0]["user_name"] == HOSPITAL

    # another hospital's patient with the same national number: one patient once NHS is a rule
    other = identity.register("Other Hospital", "OH-9", "OH_MRN", [("9434765919", "NHS")])
    assert other != key
    identity.add_authority("NHS", "national", actor=Actor.cli())
    assert identity.key_for("Other Hospital", "OH-9", "OH_MRN") == key
