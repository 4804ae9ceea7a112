"""The C-STORE failure status for each reason the gateway refuses an instance (PS3.4 B.2.3),
shared by both DICOM edges: the pynetdicom service (:mod:`dicom_gateway.scp`) answers it with an
Error Comment, the Orthanc edge (:mod:`dicom_gateway.edge`) with the status alone (Orthanc's
C-STORE filter returns a status code, nothing more).

==================================================  =======================================
over the size limit, ``InstanceTooLargeError``,     0xA700 Refused: Out of Resources
a deflate bomb (``InflationTooLargeError``),
``SpoolFullError``
``NonConformantInstanceError`` (quarantined)        0xA900 Data Set does not match SOP Class
``UnreadableInstanceError`` (quarantined)           0xC000 Cannot understand
``StudyCollisionError`` (quarantined): the study    0xC409 (a Cannot understand code, as
is another hospital's, or of another patient        STOW-RS's study mismatch)
any other ``GatewayError``, unexpected errors       0xC001 Cannot understand (logged)
==================================================  =======================================
"""

from __future__ import annotations

from dicom_gateway.exceptions import (
    GatewayError,
    InflationTooLargeError,
    InstanceRejectedError,
    InstanceTooLargeError,
    NonConformantInstanceError,
    SpoolFullError,
    StudyCollisionError,
    UnreadableInstanceError,
)

__all__ = ["CANNOT_UNDERSTAND", "OUT_OF_RESOURCES", "STUDY_COLLISION", "store_failure"]

OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC001
STUDY_COLLISION = 0xC409  # in the Cxxx "cannot understand" range; STOW-RS uses the same code

# Refusals of the instance itself, with the failure status each answers (PS3.4 B.2.3).
_REJECTIONS: tuple[tuple[type[InstanceRejectedError], int], ...] = (
    (StudyCollisionError, STUDY_COLLISION),
    (NonConformantInstanceError, 0xA900),
    (UnreadableInstanceError, 0xC000),
)


def store_failure(exc: GatewayError) -> tuple[int, str] | None:
    """The failure status and error comment for ``exc``; ``None`` for an error that is not a
    refusal of the instance (the edge logs it and answers 0xC001)."""
    if isinstance(exc, InflationTooLargeError):
        return OUT_OF_RESOURCES, f"deflated data set inflates beyond {exc.limit_bytes} bytes"
    if isinstance(exc, InstanceTooLargeError):
        return OUT_OF_RESOURCES, f"instance exceeds the limit of {exc.limit_bytes} bytes"
    if isinstance(exc, SpoolFullError):
        return OUT_OF_RESOURCES, "out of resources: the gateway's spool is full"
    for kind, status in _REJECTIONS:
        if isinstance(exc, kind):
            return status, exc.reason
    return None
