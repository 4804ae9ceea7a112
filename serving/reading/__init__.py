"""Remote reading: what the viewer shows of a study, the AI masks, and the signed report.

:class:`ReadingService` backs the reading web app's API (``serving/api/routes/reading.py``,
contract in ``docs/reading-app.md``). Roles: :mod:`~serving.reading.series` (image series in
display order), :mod:`~serving.reading.manifest` (the study opened for reading),
:mod:`~serving.reading.masks` (a finding's SEG, bit-packed), :mod:`~serving.reading.signing`
(the signed SR and the report transaction), :mod:`~serving.reading.amending` (an amendment:
a new SR referencing the signed one, never an edit), :mod:`~serving.reading.labels` (the
labels training reads), :mod:`~serving.reading.service` (the facade the routes call); the SR
itself is built by :mod:`imaging.report_sr`.
"""

from imaging.report_sr import person_name
from serving.exceptions import SignError
from serving.reading.amending import AmendOutcome
from serving.reading.labels import AddedFinding, Decision
from serving.reading.manifest import AiFinding, Manifest, SignedReport
from serving.reading.masks import FindingMask
from serving.reading.series import ViewerSeries
from serving.reading.service import ReadingService
from serving.reading.signing import SignOutcome
from serving.studies import study_by_uid

__all__ = [
    "AddedFinding",
    "AiFinding",
    "AmendOutcome",
    "Decision",
    "FindingMask",
    "Manifest",
    "ReadingService",
    "SignError",
    "SignOutcome",
    "SignedReport",
    "ViewerSeries",
    "person_name",
    "study_by_uid",
]
