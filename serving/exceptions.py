"""Errors of serving: the triage pipeline, the worklist, reading and ad hoc inference.

The domain raises them; only the protocol edge translates them (``serving/api/errors.py``:
HTTP status and a JSON body ``{"error", "detail", ...}``; the triage worker: a failed result or
a retry).

::

    ServingError (RadcloudError)
    ├── PlatformUnavailableError(reason)         Orthanc or a model deployment did not answer:
    │                                            triage retries later; HTTP 503
    ├── UnprocessableStudyError(reason, detail)  triage records a failed result, never retried
    ├── StudyNotReadyError(study_instance_uid)   reprocess of a study still arriving: HTTP 409
    ├── PromotionRefusedError(name, version, problems)  a guard rail, not forced: HTTP 409
    ├── WorklistError
    │   ├── StudyNotOnWorklistError(study_instance_uid)                   also a NotFoundError: 404
    │   ├── WorklistConflictError(study_instance_uid, reason, status, claimed_by, version)  409
    │   └── NotClaimantError(study_instance_uid, user, claimed_by)                          403
    ├── SignError(reason)                        a report that cannot be signed as sent: 422
    └── InferenceRequestError
        ├── UnknownModelError(model, served)     no deployment serves the model: 404
        ├── UploadTooLargeError(limit_bytes)     the upload exceeds the limit: 413
        ├── TooManyVoxelsError(reason, limit)    the volume exceeds the voxel budget: 413
        └── UnreadableImageError(reason)         neither a DICOM series nor NIfTI: 422
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from core.db.models import ReadingStatus
from core.exceptions import NotFoundError, RadcloudError

__all__ = [
    "FailureReason",
    "InferenceRequestError",
    "NotClaimantError",
    "PlatformUnavailableError",
    "PromotionRefusedError",
    "ServingError",
    "SignError",
    "StudyNotOnWorklistError",
    "StudyNotReadyError",
    "TooManyVoxelsError",
    "UnknownModelError",
    "UnprocessableStudyError",
    "UnreadableImageError",
    "UploadTooLargeError",
    "WorklistConflictError",
    "WorklistError",
]


class ServingError(RadcloudError):
    """Root of serving's errors."""


class PlatformUnavailableError(ServingError):
    """A part radcloud depends on (Orthanc, a model deployment) did not answer: retry later."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class FailureReason(StrEnum):
    """Why a study could not be processed (the prefix of ``InferenceResult.error``)."""

    UNSUPPORTED = "unsupported"
    INCONSISTENT_SERIES = "inconsistent_series"
    DECODE_FAILED = "decode_failed"
    NO_MODEL = "no_model"
    INTERNAL = "internal"


class UnprocessableStudyError(ServingError):
    """This study cannot be processed by this model: recorded, not retried."""

    def __init__(self, reason: FailureReason | str, detail: str) -> None:
        self.reason = FailureReason(reason)
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}")


class PromotionRefusedError(ServingError):
    """A promotion fails a guard rail (the card below the production's floor, another input
    contract) and was not forced with a written reason."""

    def __init__(self, name: str, version: int, problems: list[str]) -> None:
        self.name = name
        self.version = version
        self.problems = problems
        super().__init__(
            f"promotion of {name} v{version} refused: {'; '.join(problems)} (force it with a "
            "written reason to promote anyway)"
        )


class StudyNotReadyError(ServingError):
    """The study is still arriving: it is triaged when ready, not reprocessed before."""

    def __init__(self, study_instance_uid: str) -> None:
        self.study_instance_uid = study_instance_uid
        super().__init__(
            f'study "{study_instance_uid}": is not complete yet: it is processed when ready'
        )


# -- the worklist ---------------------------------------------------------------------------------


class WorklistError(ServingError):
    """Root of the worklist's errors."""


class StudyNotOnWorklistError(WorklistError, NotFoundError):
    """No worklist item exists for the study (unknown, or not ready yet)."""

    def __init__(self, study_instance_uid: str) -> None:
        self.study_instance_uid = study_instance_uid
        NotFoundError.__init__(self, "worklist study", study_instance_uid)


class WorklistConflictError(WorklistError):
    """The transition does not apply to the item as it is now (stale version, wrong status)."""

    def __init__(
        self,
        study_instance_uid: str,
        reason: str,
        *,
        status: ReadingStatus,
        claimed_by: str | None,
        version: int,
    ) -> None:
        self.study_instance_uid, self.reason = study_instance_uid, reason
        self.status, self.claimed_by, self.version = status, claimed_by, version
        held = f"; claimed by {claimed_by}" if claimed_by else ""
        super().__init__(
            f'study "{study_instance_uid}": {reason} (status {status}, version {version}{held})'
        )


class NotClaimantError(WorklistError):
    """Only the radiologist who claimed the study (or an admin, for release) may do this."""

    def __init__(self, study_instance_uid: str, user: str, claimed_by: str | None) -> None:
        self.study_instance_uid, self.user, self.claimed_by = study_instance_uid, user, claimed_by
        super().__init__(
            f'study "{study_instance_uid}" is claimed by {claimed_by}, not by {user}: '
            "only the claimant may do this"
        )


# -- reading and ad hoc inference ---------------------------------------------------------------


class SignError(ServingError):
    """A report that cannot be signed as sent (the message says why)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class InferenceRequestError(ServingError):
    """An ad hoc inference request that cannot be answered as sent."""


class UnknownModelError(InferenceRequestError):
    """No Serve deployment runs the model."""

    def __init__(self, model: str, served: Iterable[str]) -> None:
        self.model, self.served = model, sorted(served)
        super().__init__(f'no deployment for "{model}"; served: {", ".join(self.served) or "none"}')


class UploadTooLargeError(InferenceRequestError):
    """The uploaded files together exceed the limit."""

    def __init__(self, limit_bytes: int, reason: str | None = None) -> None:
        self.limit_bytes = limit_bytes
        super().__init__(
            reason
            or f"uploads above {limit_bytes >> 20} MiB are refused (RADCLOUD_API_MAX_INFER_MIB)"
        )


class TooManyVoxelsError(InferenceRequestError):
    """The uploaded volume has more voxels than ``limit`` (found before decoding)."""

    def __init__(self, reason: str, limit: int) -> None:
        self.reason, self.limit = reason, limit
        super().__init__(reason)


class UnreadableImageError(InferenceRequestError):
    """The upload is not a DICOM series or NIfTI volume the model's preparation accepts."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
