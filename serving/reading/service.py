"""The reading app's domain service: open a study, read an AI mask, sign the report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.db import Database
from serving.reading._archive import ReadingArchive, orthanc_errors
from serving.reading.labels import AddedFinding, Decision
from serving.reading.manifest import Manifest, build_manifest
from serving.reading.masks import FindingMask, finding_mask
from serving.reading.signing import SignOutcome, sign_report

__all__ = ["ReadingService"]


class ReadingService:
    """The reading app's view of studies in Orthanc and the database.

    Orthanc not answering, or answering with an error, is a
    :class:`~serving.exceptions.PlatformUnavailableError` from every method.

    Parameters
    ----------
    db
        The application database.
    orthanc
        An Orthanc REST client (``pyorthanc.Orthanc``, an ``httpx.Client``).
    site_name
        The organisation that verifies signed reports.
    """

    def __init__(self, db: Database, orthanc: Any, site_name: str) -> None:
        self._db = db
        self._archive = ReadingArchive(orthanc)
        self._site = site_name

    def manifest(self, study_instance_uid: str) -> Manifest:
        """The study's series, AI findings, reading state and report
        (:func:`~serving.reading.manifest.build_manifest`)."""
        with orthanc_errors():
            return build_manifest(self._db, self._archive, study_instance_uid)

    def mask(self, study_instance_uid: str, result_id: int) -> FindingMask:
        """The SEG of ``result_id`` as bit-packed frames
        (:func:`~serving.reading.masks.finding_mask`)."""
        with orthanc_errors():
            return finding_mask(self._db, self._archive, study_instance_uid, result_id)

    def sign(
        self,
        study_instance_uid: str,
        *,
        author: str,
        version: int,
        text: str,
        decisions: Sequence[Decision],
        added: Sequence[AddedFinding] = (),
    ) -> SignOutcome:
        """Sign the report of a study ``author`` holds
        (:func:`~serving.reading.signing.sign_report`)."""
        with orthanc_errors():
            return sign_report(
                self._db,
                self._archive,
                study_instance_uid,
                site_name=self._site,
                author=author,
                version=version,
                text=text,
                decisions=decisions,
                added=added,
            )
