"""Training data exported from a real Orthanc and the labels table: labels, masks,
de-identification, hospital scope, determinism, errors, and a tiny training run on it."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from core.archive import ImageArchive, open_archive
from core.db.models import AuditEvent, Label, Study, StudyState
from core.secrets import load_secrets
from imaging.deid import Pseudonymizer
from imaging.nifti import load_nifti
from imaging.seg import HEMORRHAGE, AlgorithmIdentity, write_segmentation
from imaging.synthetic import generate_study
from imaging.volume import load_series, load_series_files
from tests.conftest import Stack
from tests.helpers import free_port
from tests.imaging.dicom_series import assert_dcmtk_accepts
from tests.orthanc_studies import (
    StoredStudy,
    _hospital_id,
    add_label,
    identifiable,
    store,
    store_study,
)
from training._labels import study_label
from training.data import read_labels_csv
from training.exceptions import DataSourceError
from training.orthanc_source import (
    SEG_SERIES_KEY,
    SEGMENT_NUMBERS_KEY,
    TASK_FINDINGS,
    ExportManifest,
    SkipReason,
    export_orthanc_source,
    normalise_finding,
)
from training.split import Part, Split
from training.tasks import Task

HOSPITAL_A, HOSPITAL_B, HOSPITAL_C = "Export Hospital A", "Export Hospital B", "Export Hospital C"
READER = AlgorithmIdentity("radiologist-outline", "1")


def label_row(finding: str, present: bool, number: int, **fields: Any) -> Label:
    return Label(id=number, study_id=1, finding=finding, present=present, author="r", **fields)


def test_study_label_semantics() -> None:
    findings = TASK_FINDINGS[Task.HEAD_CT]
    seg = {SEG_SERIES_KEY: "1.2.3", SEGMENT_NUMBERS_KEY: [1]}
    positive = study_label(
        [
            label_row("fracture", False, 1),
            label_row("Intracranial Hemorrhage", True, 2, region=seg),
            label_row("haemorrhage", False, 3),
        ],
        findings,
    )
    assert positive.label == 1 and positive.findings == ("intracranial_hemorrhage",)
    assert [r.series_instance_uid for r in positive.regions] == ["1.2.3"]
    assert positive.regions[0].segment_numbers == (1,)
    negative = study_label(
        [label_row("haemorrhage", False, 1), label_row("mass", False, 2)], findings
    )
    assert negative.label == 0 and negative.regions == ()
    assert study_label([label_row("fracture", True, 1)], findings).label is None
    assert study_label([], findings).label is None
    bad_region = study_label([label_row("subdural", True, 1, region={SEG_SERIES_KEY: 5})], findings)
    assert bad_region.label == 1 and bad_region.regions == ()
    assert normalise_finding("  Sub-Arachnoid  haemorrhage") == "sub_arachnoid_haemorrhage"


@dataclass
class Archive:
    """The studies of this module in the session's Orthanc and database."""

    stack: Stack
    studies: dict[str, StoredStudy]
    key: str

    def export(self, out: Path, **kwargs: Any) -> ExportManifest:
        kwargs.setdefault("deid_key", self.key)
        with self.stack.archive() as client:
            return export_orthanc_source(
                "head-ct", out, database=self.stack.database(), archive=client, **kwargs
            )


def store_seg(orthanc: ImageArchive, study: StoredStudy) -> str:
    """A radiologist's outline of the study's lesion as DICOM SEG in Orthanc; its series UID."""
    seg = write_segmentation(study.datasets, study.synthetic.mask, [HEMORRHAGE], READER)
    store(orthanc, [seg])
    return str(seg.SeriesInstanceUID)


@pytest.fixture(scope="module")
def archive(stack: Stack) -> Iterator[Archive]:
    """Hospital A: two positives with a SEG, two negatives, one positive without a mask, one
    with other findings only, one unlabelled. Hospital B: one positive with a SEG."""
    database = stack.database()
    studies: dict[str, StoredStudy] = {}
    with stack.archive() as orthanc:
        cases = [
            ("positive-1", HOSPITAL_A, True),
            ("positive-2", HOSPITAL_A, True),
            ("negative-1", HOSPITAL_A, False),
            ("negative-2", HOSPITAL_A, False),
            ("no-mask", HOSPITAL_A, True),
            ("other-finding", HOSPITAL_A, False),
            ("unlabelled", HOSPITAL_A, False),
            ("b-positive", HOSPITAL_B, True),
        ]
        for number, (name, hospital, positive) in enumerate(cases, start=100):
            studies[name] = store_study(orthanc, database, hospital, number, positive=positive)
        for name in ("positive-1", "positive-2", "b-positive"):
            region = {SEG_SERIES_KEY: store_seg(orthanc, studies[name])}
            add_label(database, studies[name], "haemorrhage", True, region)
        add_label(database, studies["negative-1"], "haemorrhage", False)
        add_label(database, studies["negative-2"], "haemorrhage", False)
        add_label(database, studies["negative-2"], "fracture", False)
        add_label(database, studies["no-mask"], "subdural", True)
        add_label(database, studies["other-finding"], "fracture", True)
    yield Archive(stack, studies, load_secrets(stack.settings).deid_hmac_key)
    database.dispose()


@pytest.fixture(scope="module")
def exported(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> ExportManifest:
    return archive.export(tmp_path_factory.mktemp("export") / "head-ct", hospitals=[HOSPITAL_A])


def csv_rows(folder: Path) -> dict[str, dict[str, str]]:
    with (folder / "labels.csv").open(newline="") as handle:
        return {row["study_instance_uid"]: row for row in csv.DictReader(handle)}


@pytest.mark.integration
def test_labels_csv_has_positives_negatives_and_skips_with_reasons(
    archive: Archive, exported: ExportManifest
) -> None:
    pseudonyms = Pseudonymizer(archive.key, "training")
    uid = {name: pseudonyms.uid(s.study_instance_uid) for name, s in archive.studies.items()}
    rows = csv_rows(exported.out_dir)
    assert set(rows) == {uid["positive-1"], uid["positive-2"], uid["negative-1"], uid["negative-2"]}
    for name in ("positive-1", "positive-2"):
        assert rows[uid[name]]["label"] == "1" and rows[uid[name]]["finding"] == "haemorrhage"
    for name in ("negative-1", "negative-2"):
        assert rows[uid[name]]["label"] == "0" and rows[uid[name]]["finding"] == "none"
    assert all(row["mask"] == f"masks/{u}.nii.gz" for u, row in rows.items())  # segmentation
    first = archive.studies["positive-1"].datasets[0]
    assert rows[uid["positive-1"]]["patient_id"] == pseudonyms.patient_id(
        str(first.PatientID), HOSPITAL_A
    )
    assert (exported.studies, exported.positives, exported.negatives) == (4, 2, 2)
    assert exported.unlabelled == 1
    assert {(s.study, s.reason) for s in exported.skipped} == {
        (uid["no-mask"], SkipReason.NO_MASK),
        (uid["other-finding"], SkipReason.OTHER_FINDINGS_ONLY),
    }
    manifest = json.loads((exported.out_dir / "manifest.json").read_text())
    assert manifest["skipped_counts"] == {"other-findings-only": 1, "positive-without-mask": 1}
    assert manifest["hospitals"] == [HOSPITAL_A]
    assert manifest["deidentification"]["deidentified"] is True
    assert "Basic Profile" in manifest["deidentification"]["method"][0]
    exported_names = ("positive-1", "positive-2", "negative-1", "negative-2")
    assert manifest["instances"] == sum(len(archive.studies[n].datasets) for n in exported_names)
    assert manifest["masks"] == 4 and manifest["created_at"]
    records = read_labels_csv(exported.out_dir)  # what training reads
    assert sorted(r.label for r in records) == [0, 0, 1, 1]


@pytest.mark.integration
def test_images_and_masks_keep_the_geometry(archive: Archive, exported: ExportManifest) -> None:
    pseudonyms = Pseudonymizer(archive.key, "training")
    for name in ("positive-1", "negative-1"):
        study = archive.studies[name]
        uid = pseudonyms.uid(study.study_instance_uid)
        files = sorted((exported.out_dir / "dicom" / uid).glob("*.dcm"))
        image, source = load_series_files(files), load_series(study.datasets)
        np.testing.assert_array_equal(image.array, source.array)
        np.testing.assert_allclose(image.affine_lps(), source.affine_lps(), atol=1e-9)
        mask = load_nifti(exported.out_dir / "masks" / f"{uid}.nii.gz", label_map=True)
        np.testing.assert_allclose(mask.affine_lps(), source.affine_lps(), atol=1e-6)
        np.testing.assert_array_equal(mask.array, study.synthetic.mask.astype(mask.array.dtype))
        assert_dcmtk_accepts(files[0])
    assert archive.studies["positive-1"].synthetic.mask.any()


@pytest.mark.integration
def test_nothing_in_the_export_identifies_a_patient(
    archive: Archive, exported: ExportManifest
) -> None:
    files = sorted(p for p in exported.out_dir.rglob("*") if p.is_file())
    content = b"".join(p.read_bytes() for p in files)
    data = b"".join(p.read_bytes() for p in files if p.name != "manifest.json")
    for study in archive.studies.values():
        for value in study.identifiers:
            assert value.encode() not in content, f"{value} found in the export"
            assert value not in "".join(p.name for p in files)
        assert study.hospital.encode() not in data  # named only in the manifest's provenance
    for path in (exported.out_dir / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.PatientIdentityRemoved == "YES" and not ds.get("PatientBirthDate")


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


@pytest.mark.integration
def test_export_is_deterministic_and_keyed(
    archive: Archive, exported: ExportManifest, tmp_path: Path
) -> None:
    again = archive.export(tmp_path / "again", hospitals=[HOSPITAL_A])
    assert tree_digest(again.out_dir) == tree_digest(exported.out_dir)
    assert again.labels_sha256 == exported.labels_sha256
    replaced = archive.export(exported.out_dir.parent / "again-in-place", hospitals=[HOSPITAL_A])
    archive.export(replaced.out_dir, hospitals=[HOSPITAL_A])  # an earlier export is replaced
    assert tree_digest(replaced.out_dir) == tree_digest(exported.out_dir)
    other = archive.export(tmp_path / "other-key", hospitals=[HOSPITAL_A], deid_key="other key")
    theirs, ours = csv_rows(other.out_dir), csv_rows(exported.out_dir)
    assert set(theirs).isdisjoint(ours)
    assert {r["patient_id"] for r in theirs.values()}.isdisjoint(
        r["patient_id"] for r in ours.values()
    )
    assert sorted(r["label"] for r in theirs.values()) == sorted(r["label"] for r in ours.values())


@pytest.mark.integration
def test_hospital_scope_and_identifiers(archive: Archive, tmp_path: Path) -> None:
    only_b = archive.export(tmp_path / "b", hospitals=[HOSPITAL_B])
    assert (only_b.studies, only_b.hospitals) == (1, (HOSPITAL_B,))
    both = archive.export(tmp_path / "ab", hospitals=[HOSPITAL_A, HOSPITAL_B])
    assert both.studies == 5 and both.hospitals == (HOSPITAL_A, HOSPITAL_B)
    for hospitals in ([], [HOSPITAL_A, HOSPITAL_B]):
        with pytest.raises(DataSourceError, match=r"identifiers can be kept only .* one hospital"):
            archive.export(tmp_path / "kept", hospitals=hospitals, keep_identifiers=True)
    kept = archive.export(tmp_path / "kept", hospitals=[HOSPITAL_B], keep_identifiers=True)
    study = archive.studies["b-positive"]
    row = csv_rows(kept.out_dir)[study.study_instance_uid]
    assert row["patient_id"] == str(study.datasets[0].PatientID)
    assert not kept.deidentified
    original = {str(ds.SOPInstanceUID) for ds in study.datasets}
    assert {p.stem for p in (kept.out_dir / "dicom" / study.study_instance_uid).iterdir()} == (
        original
    )
    with pytest.raises(DataSourceError, match="'Nowhere General' not registered"):
        archive.export(tmp_path / "x", hospitals=["Nowhere General"])


@pytest.mark.integration
def test_errors_name_the_problem(archive: Archive, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataSourceError, match="not an Orthanc export"):
        archive.export(tmp_path / "busy", hospitals=[HOSPITAL_B])
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    settings = archive.stack.settings
    down = settings.model_copy(update={"orthanc_http_port": free_port()})
    with (
        open_archive(down, load_secrets(settings), timeout_s=2) as client,
        pytest.raises(DataSourceError, match="cannot be reached"),
    ):
        export_orthanc_source(
            "head-ct",
            tmp_path / "down",
            database=archive.stack.database(),
            archive=client,
            deid_key=archive.key,
            hospitals=[HOSPITAL_B],
        )
    assert not (tmp_path / "down").exists()
    assert not list(tmp_path.glob(".down*")), "staging folder left behind"


@pytest.mark.integration
def test_export_training_command_writes_and_audits(archive: Archive, tmp_path: Path) -> None:
    out = tmp_path / "cli-export"
    result = archive.stack.cli(
        "export-training", "--task", "head-ct", "--hospital", HOSPITAL_A, "--out", str(out)
    )
    assert "2 positive, 2 negative" in result.stdout, result.stdout
    assert len(csv_rows(out)) == 4
    assert json.loads((out / "manifest.json").read_text())["skipped_counts"] == {
        "other-findings-only": 1,
        "positive-without-mask": 1,
    }
    with archive.stack.database().session() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.event_code == "110106"))
        assert any(e.resource_id == str(out) and e.detail["studies"] == 4 for e in events)
    refused = archive.stack.cli(
        "export-training", "--task", "head-ct", "--keep-identifiers", "--out", str(out), check=False
    )
    assert refused.returncode == 1 and "one hospital" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.integration
def test_classification_task_keeps_positives_without_a_mask(stack: Stack, tmp_path: Path) -> None:
    database = stack.database()
    with stack.archive() as orthanc:
        positive = store_study(
            orthanc, database, "Export Hospital D", 300, positive=True, task="chest-xr"
        )
        negative = store_study(
            orthanc, database, "Export Hospital D", 301, positive=False, task="chest-xr"
        )
    add_label(database, positive, "Pneumothorax", True)
    add_label(database, negative, "pneumothorax", False)
    with stack.archive() as client:
        manifest = export_orthanc_source(
            "chest-xr",
            tmp_path / "chest-xr",
            database=database,
            archive=client,
            deid_key="a key",
            hospitals=["Export Hospital D"],
        )
    assert (manifest.positives, manifest.negatives, manifest.masks) == (1, 1, 0)
    rows = csv_rows(manifest.out_dir).values()
    assert {(row["label"], row["finding"], row["mask"]) for row in rows} == {
        ("1", "pneumothorax", ""),
        ("0", "none", ""),
    }
    record = next(r for r in read_labels_csv(manifest.out_dir) if r.label == 1)
    image = load_series_files(sorted(record.image.glob("*.dcm")))
    np.testing.assert_array_equal(image.array, load_series(positive.datasets).array)
    database.dispose()


@pytest.mark.integration
@pytest.mark.slow
def test_tiny_training_run_on_the_orthanc_source(stack: Stack) -> None:
    """``radcloud train --source orthanc`` exports hospital C's studies and trains on them."""
    database = stack.database()
    studies = []
    with stack.archive() as orthanc:
        for number in range(200, 208):
            study = store_study(orthanc, database, HOSPITAL_C, number, positive=number % 2 == 0)
            if number % 2 == 0:
                region = {SEG_SERIES_KEY: store_seg(orthanc, study)}
                add_label(database, study, "haemorrhage", True, region)
            else:
                add_label(database, study, "haemorrhage", False)
            studies.append(study)
    # a split with both classes in every part (a random key could leave a part empty)
    pseudonyms = Pseudonymizer(load_secrets(stack.settings).deid_hmac_key, "training")
    parts = [Part.TRAIN] * 4 + [Part.VALIDATION] * 2 + [Part.TEST] * 2
    split = Split.load_or_create(stack.settings.home / "training" / "head-ct" / "split.json")
    for index, study in enumerate(studies):  # alternating labels: each part gets both
        patient = pseudonyms.patient_id(str(study.datasets[0].PatientID), HOSPITAL_C)
        split.patients[patient] = parts[index]
    split.save()

    result = stack.cli(
        "train",
        *("--task", "head-ct", "--preset", "tiny", "--source", "orthanc"),
        *("--hospital", HOSPITAL_C, "--epochs", "1", "--no-register"),
    )
    assert "4 positive, 4 negative" in result.stdout, result.stdout
    folder = stack.settings.home / "training" / "head-ct" / "orthanc"
    assert len(read_labels_csv(folder)) == 8
    reports = sorted((stack.settings.home / "training" / "head-ct" / "runs").glob("*/report.json"))
    report = json.loads(reports[-1].read_text())
    assert report["split_counts"] == {"train": 4, "validation": 2, "test": 2}
    assert report["metrics"]["test"]["positives"] == 1
    assert report["metrics"]["test"]["lesion_dice"] is not None
    database.dispose()


@pytest.mark.integration
def test_study_whose_uid_is_a_path_is_skipped_not_written(stack: Stack, tmp_path: Path) -> None:
    """The attack of issue 14 (item 5) on the exporter: an archive holding a study whose UID is
    a path (stored straight into Orthanc, past the gateway that would quarantine it). Exported
    with identifiers kept, the study is skipped as ``invalid-uid``; nothing is written outside
    the export folder, and no file is named after the UID."""
    hospital, number = "Export Hospital Traversal", 190
    synthetic = generate_study("head-ct", number, 7, positive=False)
    datasets = identifiable(synthetic, hospital, number)
    evil = "1.2.826.0.1.3680043.8.498.190/../../../../escaped"
    for ds in datasets:
        ds.StudyInstanceUID = evil
    database = stack.database()
    try:
        with stack.archive() as orthanc:
            orthanc_id = store(orthanc, datasets)
        with database.session() as session:
            row = Study(
                study_instance_uid=evil,
                hospital_id=_hospital_id(session, hospital),
                patient_id=str(datasets[0].PatientID),
                modalities="CT",
                state=StudyState.READY,
                instance_count=len(datasets),
                orthanc_id=orthanc_id,
            )
            session.add(row)
            session.flush()
            study_id = int(row.id)
        stored = StoredStudy(synthetic, datasets, study_id, orthanc_id, hospital)
        add_label(database, stored, "haemorrhage", False)
        out = tmp_path / "a" / "b" / "c" / "export"
        with stack.archive() as client:
            manifest = export_orthanc_source(
                "head-ct",
                out,
                database=database,
                archive=client,
                hospitals=[hospital],
                keep_identifiers=True,
                deid_key=load_secrets(stack.settings).deid_hmac_key,
            )
    finally:
        database.dispose()
    assert manifest.studies == 0
    [skipped] = manifest.skipped
    assert skipped.reason is SkipReason.INVALID_UID
    assert "is not a valid UID" in skipped.detail
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert not any("escaped" in p for p in written), written
    assert not (tmp_path / "escaped").exists()
