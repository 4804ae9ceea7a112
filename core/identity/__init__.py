"""Patient identity across hospitals (IHE PIX / FHIR PIXm) and purpose-bound context tokens.

- :class:`PatientIdentity`: the cross-reference of (hospital, PatientID, IssuerOfPatientID)
  to radcloud patient keys, linked by explicit rules only (:mod:`core.identity.service`);
- :class:`PatientIdentifier`: one identifier, ``HOSPITAL:ISSUER:PATIENTID`` or a FHIR
  identifier system URN (:mod:`core.identity.identifiers`);
- :class:`AssertionRetractions`: an administrator's retraction of a link a hospital's study
  asserted, honoured by later registrations (:mod:`core.identity.retractions`);
- :func:`register_in`: the gateway's registration inside its own claim transaction;
- :func:`issue_context_token`: treatment (one patient) and research tokens
  (:mod:`core.identity.context`).
"""

from core.identity._graph import Registered, register_in
from core.identity.context import PURPOSE_ROLES, ContextToken, issue_context_token
from core.identity.identifiers import (
    AUTHORITY_SYSTEM_PREFIX,
    HOSPITAL_SYSTEM_PREFIX,
    AuthorityRule,
    PatientIdentifier,
    PatientLinkInfo,
    RetractionInfo,
    authority_system,
    parse_system,
)
from core.identity.pixm import PixAnswer, operation_outcome, pix_query
from core.identity.retractions import AssertionRetractions
from core.identity.service import PatientIdentity

__all__ = [
    "AUTHORITY_SYSTEM_PREFIX",
    "HOSPITAL_SYSTEM_PREFIX",
    "PURPOSE_ROLES",
    "AssertionRetractions",
    "AuthorityRule",
    "ContextToken",
    "PatientIdentifier",
    "PatientIdentity",
    "PatientLinkInfo",
    "PixAnswer",
    "Registered",
    "RetractionInfo",
    "authority_system",
    "issue_context_token",
    "operation_outcome",
    "parse_system",
    "pix_query",
    "register_in",
]
