"""Patient ID of recently accessed studies, for audit records of image access.

A viewer fetches frame after frame of one study; each fetch is audited with the study's patient
(as an HMAC, ``core.audit``), and this cache keeps that from costing one archive query per
frame. One cache per API process, held by its context (no module-level state).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from core.archive import ArchiveError, ImageArchive

__all__ = ["PatientIdCache"]

logger = logging.getLogger(__name__)


class PatientIdCache:
    """Patient ID (0010,0020) by Study Instance UID, read through the archive seam.

    Parameters
    ----------
    archive
        The archive holding the studies.
    size
        Studies remembered at most (least recently used dropped first).
    ttl_s
        How long an answer is reused.
    """

    def __init__(self, archive: ImageArchive, *, size: int = 4096, ttl_s: float = 300.0) -> None:
        self._archive = archive
        self._size, self._ttl_s = size, ttl_s
        self._entries: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, study_instance_uid: str) -> str | None:
        """The study's Patient ID; ``None`` when the study is unknown or the archive does not
        answer (the access is then audited without a patient, and logged)."""
        now = time.monotonic()
        with self._lock:
            cached = self._entries.get(study_instance_uid)
            if cached is not None and now - cached[0] < self._ttl_s:
                self._entries.move_to_end(study_instance_uid)
                return cached[1]
        try:
            matches = self._archive.search_for_studies({"StudyInstanceUID": study_instance_uid})
        except ArchiveError as exc:
            logger.warning("no patient ID for study %s: %s", study_instance_uid, exc)
            return None
        patient_id = matches[0].get("PatientID") if matches else None
        with self._lock:
            self._entries[study_instance_uid] = (now, patient_id)
            self._entries.move_to_end(study_instance_uid)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return patient_id
