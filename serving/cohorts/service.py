"""Research cohorts: define, run, store and show a cohort; every step audited.

A cohort is run over the application database (studies, ``inference_results``, ``labels``)
of every hospital of this deployment, with the body part read from the archive (series'
BodyPartExamined). Its answer holds counts per hospital suppressed below the minimum cell size
(:mod:`serving.cohorts.suppression`) and a de-identified study list keyed exactly as the
research de-identifier keys the studies' instances (:class:`imaging.deid.Deidentifier` with
``Pseudonymizer(deid_hmac_key, "research")``), so a study of the list is the study
``radcloud train --source cohort:ID`` exports:

- Study Instance UID → ``Pseudonymizer.uid`` (the same as the federated search's research rows);
- patient → ``Pseudonymizer.patient_pseudonym`` of the radcloud patient key
  (:meth:`core.identity.PatientIdentity.key_for`), or of :func:`imaging.deid.local_patient_key`
  when the patient is not linked: the same patient at two hospitals has one pseudonym;
- study date → shifted by the patient's ``Pseudonymizer.date_shift``.

The original Study Instance UID, the hospital and the patient key are stored in
``cohort_studies`` for the export and never answered. Who may see a cohort: the researcher who
made it, an admin, and the command line (the OS user, audited); another researcher's cohort is
not found.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.archive import ArchiveError, ArchiveId, ArchiveNotFoundError, ImageArchive
from core.audit import AuditAction, AuditEventCode, AuditTrail
from core.db import Database
from core.db.models import (
    Cohort,
    CohortStudy,
    Hospital,
    InferenceResult,
    InferenceStatus,
    Study,
)
from core.identity import PatientIdentity
from core.security import Actor, Door
from imaging.deid import RESEARCH_SCOPE, Pseudonymizer, local_patient_key
from serving.cohorts.exceptions import CohortNotFoundError
from serving.cohorts.model import CohortAnswer, CohortQuery, CohortStudyRow
from serving.cohorts.selection import matching_studies
from serving.cohorts.suppression import suppress
from serving.exceptions import PlatformUnavailableError

__all__ = ["CohortService", "shifted_date"]

"""The de-identification scope of cohorts, as of the federated search's research rows."""


def shifted_date(study_date: str | None, shift: dt.timedelta) -> str | None:
    """A DA value (YYYYMMDD) shifted by ``shift``; ``None`` when absent or not a date."""
    if not study_date:
        return None
    try:
        day = dt.datetime.strptime(study_date.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None
    return (day + shift).strftime("%Y%m%d")


class CohortService:
    """Runs and keeps research cohorts.

    Parameters
    ----------
    db
        The application database.
    audit
        Where creation, runs and reads are recorded (query and counts, never an identifier).
    archive
        The image archive (body parts of the studies' series).
    deid_key
        The deployment's ``deid_hmac_key``; pseudonyms are of the scope :data:`RESEARCH_SCOPE`.
    min_cell_size
        ``RADCLOUD_COHORT_MIN_CELL_SIZE``, kept with each cohort when it is run.
    """

    def __init__(
        self,
        *,
        db: Database,
        audit: AuditTrail,
        archive: ImageArchive,
        deid_key: str,
        min_cell_size: int,
    ) -> None:
        self._db = db
        self._audit = audit
        self._archive = archive
        self._pseudonyms = Pseudonymizer(deid_key, RESEARCH_SCOPE)
        self._identity = PatientIdentity(db, audit)
        self._min_cell_size = min_cell_size

    # -- public ---------------------------------------------------------------------------

    def create(self, actor: Actor, query: CohortQuery, *, name: str | None = None) -> CohortAnswer:
        """Define a cohort, run it and store it; audited (110112, action C).

        Raises
        ------
        PlatformUnavailableError
            The archive did not answer (the body parts are read there).
        """
        found = self._run(query)
        with self._db.session() as session:
            cohort = Cohort(
                name=name,
                query=query.to_json(),
                created_by=actor.name,
                min_cell_size=self._min_cell_size,
                counts=found[0],
                runs=1,
            )
            session.add(cohort)
            session.flush()
            self._store_rows(session, cohort, found[1])
            cohort_id = cohort.id
        answer = self.get(actor, cohort_id, audited=False)
        self._record(actor, AuditAction.CREATE, "cohort created and run", answer, found[0])
        return answer

    def rerun(self, actor: Actor, cohort_id: int) -> CohortAnswer:
        """Run a stored cohort's query again (the data may have changed); audited (110112,
        action E).

        Raises
        ------
        CohortNotFoundError
            No such cohort, or not the caller's.
        PlatformUnavailableError
            The archive did not answer.
        """
        with self._db.session() as session:
            query = CohortQuery.from_json(self._cohort(session, actor, cohort_id).query)
        counts, rows = self._run(query)
        with self._db.write_session() as session:
            cohort = self._cohort(session, actor, cohort_id)
            session.query(CohortStudy).filter(CohortStudy.cohort_id == cohort.id).delete()
            cohort.counts = counts
            cohort.min_cell_size = self._min_cell_size
            cohort.runs += 1
            cohort.run_at = dt.datetime.now(dt.UTC)
            self._store_rows(session, cohort, rows)
        answer = self.get(actor, cohort_id, audited=False)
        self._record(actor, AuditAction.EXECUTE, "cohort run", answer, counts)
        return answer

    def get(self, actor: Actor, cohort_id: int, *, audited: bool = True) -> CohortAnswer:
        """A stored cohort as the caller may see it; audited (110112, action R).

        Raises
        ------
        CohortNotFoundError
            No such cohort, or not the caller's.
        """
        with self._db.session() as session:
            cohort = self._cohort(session, actor, cohort_id)
            rows = session.scalars(
                select(CohortStudy)
                .where(CohortStudy.cohort_id == cohort.id, CohortStudy.listed.is_(True))
                .order_by(CohortStudy.deid_study_instance_uid)
            ).all()
            answer = _answer(cohort, rows)
            counts = dict(cohort.counts)
        if audited:
            self._record(actor, AuditAction.READ, "cohort read", answer, counts)
        return answer

    def cohorts(self, actor: Actor) -> list[CohortAnswer]:
        """The caller's cohorts (all for an admin and the command line), newest first,
        without their study lists."""
        with self._db.session() as session:
            statement = select(Cohort).order_by(Cohort.id.desc())
            if not _sees_all(actor):
                statement = statement.where(Cohort.created_by == actor.name)
            return [_answer(cohort, ()) for cohort in session.scalars(statement)]

    # -- running --------------------------------------------------------------------------

    def _run(self, query: CohortQuery) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """Exact counts per hospital (zeros included) and the matching studies' rows."""
        with self._db.session() as session:
            counts = {name: 0 for name in session.scalars(select(Hospital.name))}
            candidates = [
                (study, hospital) for study, hospital in session.execute(matching_studies(query))
            ]
            rows = []
            for study, hospital in candidates:
                body_parts = self._body_parts(study)
                if query.body_part is not None and query.body_part not in body_parts:
                    continue
                counts[hospital] = counts.get(hospital, 0) + 1
                rows.append(self._row(session, query, study, hospital, body_parts))
        return counts, rows

    def _body_parts(self, study: Study) -> set[str]:
        """BodyPartExamined of the study's series in the archive (none when not stored)."""
        try:
            archive_id = ArchiveId(study.orthanc_id) if study.orthanc_id else None
            if archive_id is None:
                found = self._archive.search_for_studies(
                    {"StudyInstanceUID": study.study_instance_uid}
                )
                if not found:
                    return set()
                archive_id = found[0].archive_id
            series = self._archive.get_study_series(archive_id)
        except ArchiveNotFoundError:
            return set()
        except ArchiveError as exc:
            raise PlatformUnavailableError(f"the archive did not answer: {exc}") from exc
        return {
            part.strip().upper()
            for s in series
            if (part := s.get("BodyPartExamined")) and part.strip()
        }

    def _patient_key(self, study: Study, hospital: str) -> str:
        issuer = study.issuer_of_patient_id or ""
        if study.patient_id:
            linked = self._identity.key_for(hospital, study.patient_id, issuer)
            return linked or local_patient_key(hospital, study.patient_id, issuer)
        # no Patient ID: a patient of its own, keyed by its study
        return local_patient_key(hospital, f"study {study.study_instance_uid}")

    def _row(
        self,
        session: Session,
        query: CohortQuery,
        study: Study,
        hospital: str,
        body_parts: set[str],
    ) -> dict[str, Any]:
        key = self._patient_key(study, hospital)
        finding: dict[str, Any] = {}
        if query.label is not None:
            finding["label"] = {"finding": query.label.finding, "present": query.label.present}
        if query.ai_finding is not None:
            best = session.execute(
                select(
                    InferenceResult.model_name,
                    func.max(InferenceResult.score),
                    func.max(InferenceResult.critical),
                )
                .where(
                    InferenceResult.study_id == study.id,
                    InferenceResult.status == InferenceStatus.SUCCEEDED,
                    *(
                        [InferenceResult.model_name == query.ai_finding.model]
                        if query.ai_finding.model
                        else []
                    ),
                )
                .group_by(InferenceResult.model_name)
                .order_by(func.max(InferenceResult.score).desc())
                .limit(1)
            ).first()
            if best is not None:
                finding["ai"] = {"model": best[0], "score": best[1], "critical": bool(best[2])}
        return {
            "study_id": study.id,
            "study_instance_uid": study.study_instance_uid,
            "hospital": hospital,
            "patient_key": key,
            "deid_study_instance_uid": self._pseudonyms.uid(study.study_instance_uid),
            "patient_pseudonym": self._pseudonyms.patient_pseudonym(key),
            "study_date": shifted_date(study.study_date, self._pseudonyms.date_shift(key)),
            "modality": study.modalities,
            "body_part": "\\".join(sorted(body_parts)) or None,
            "finding": finding,
        }

    def _store_rows(self, session: Session, cohort: Cohort, rows: list[dict[str, Any]]) -> None:
        listed = suppress(cohort.counts, cohort.min_cell_size).listed_hospitals
        for row in rows:
            session.add(CohortStudy(cohort_id=cohort.id, listed=row["hospital"] in listed, **row))

    # -- access and audit -----------------------------------------------------------------

    @staticmethod
    def _cohort(session: Session, actor: Actor, cohort_id: int) -> Cohort:
        cohort = session.get(Cohort, cohort_id)
        if cohort is None or not (_sees_all(actor) or cohort.created_by == actor.name):
            raise CohortNotFoundError(cohort_id)
        return cohort

    def _record(
        self,
        actor: Actor,
        action: AuditAction,
        event: str,
        answer: CohortAnswer,
        counts: Mapping[str, int],
    ) -> None:
        """One 110112 record: the query and the counts (exact, for auditors), never a UID
        or a patient."""
        self._audit.record(
            AuditEventCode.QUERY,
            actor=actor,
            action=action,
            resource_type="cohort",
            resource_id=str(answer.cohort_id),
            detail={
                "event": event,
                "purpose": "research",
                "query": answer.query.to_json(),
                "min_cell_size": answer.min_cell_size,
                "counts": dict(sorted(counts.items())),
                "total": sum(counts.values()),
                "suppressed": sorted(h.hospital for h in answer.hospitals if h.suppressed),
                "total_shown": answer.total_shown,
                "studies_listed": len(answer.studies),
                "runs": answer.runs,
            },
        )


def _sees_all(actor: Actor) -> bool:
    return actor.door is Door.CLI or actor.role == "admin"


def _answer(cohort: Cohort, rows: Any) -> CohortAnswer:
    shown = suppress(cohort.counts, cohort.min_cell_size)
    return CohortAnswer(
        cohort_id=cohort.id,
        name=cohort.name,
        query=CohortQuery.from_json(cohort.query),
        created_by=cohort.created_by,
        created_at=cohort.created_at,
        run_at=cohort.run_at,
        runs=cohort.runs,
        min_cell_size=cohort.min_cell_size,
        hospitals=shown.hospitals,
        total=shown.total,
        total_shown=shown.total_shown,
        studies=tuple(
            CohortStudyRow(
                study_instance_uid=row.deid_study_instance_uid,
                patient_pseudonym=row.patient_pseudonym,
                study_date=row.study_date,
                modality=row.modality,
                body_part=row.body_part,
                finding=dict(row.finding),
            )
            for row in rows
        )
        if shown.list_withheld is None
        else (),
        list_withheld=shown.list_withheld,
    )
