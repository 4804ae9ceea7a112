"""``radcloud cohorts create / show / run / list`` against a real Orthanc (alone) and a real
SQLite database: the command line acts as the OS user, audited; its answers suppress small
cells and carry no original identifier."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import pytest

from core.secrets import load_secrets
from radcloud.services import Supervisor, orthanc_component
from tests.audit_records import assert_cli_actor, audit_records
from tests.cohort_studies import CohortStudy, add_study
from tests.conftest import Stack, settings_from_env, stack_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def radcloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, list[CohortStudy]]]:
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc is not installed: run `make install` (apt-get install orthanc)")
    env = stack_env(tmp_path_factory.mktemp("cohort-cli"), cohort_min_cell_size=3)
    running = Stack(env, settings_from_env(env))
    secrets = load_secrets(running.settings)
    supervisor = Supervisor(
        running.settings, [orthanc_component(running.settings, secrets, as_edge=False)]
    )
    supervisor.up()
    try:
        database = running.database()
        with running.archive() as orthanc:
            studies = [
                add_study(orthanc, database, "Alpha", n, label=("haemorrhage", True))
                for n in range(1, 5)
            ] + [add_study(orthanc, database, "Beta", 10, label=("haemorrhage", True))]
        database.dispose()
        yield running, studies
    finally:
        supervisor.down()


def test_create_show_run_and_list_as_the_os_user(
    radcloud: tuple[Stack, list[CohortStudy]],
) -> None:
    stack, studies = radcloud
    created = stack.cli(
        "cohorts",
        "create",
        "--modality",
        "ct",
        "--label",
        "haemorrhage",
        "--from",
        "2025-01-01",
        "--to",
        "2025-12-31",
        "--name",
        "bleeds",
    ).stdout
    match = re.search(r"cohort (\d+) \(bleeds\)", created)
    assert match, created
    cohort_id = match.group(1)
    assert re.search(r"Alpha\s*│\s*4", created) and re.search(r"Beta\s*│\s*<3", created)
    assert re.search(r"total\s*│\s*>=5", created)  # one small cell: the total is withheld
    shown = stack.cli("cohorts", "show", cohort_id).stdout
    rerun = stack.cli("cohorts", "run", cohort_id).stdout
    listed = stack.cli("cohorts", "list").stdout
    assert "ANON-" in shown and "bleeds" in listed and "run 2x" in rerun
    for output in (created, shown, rerun, listed):
        for study in studies:
            for identifier in study.identifiers:
                assert identifier not in output
    records = [r for r in audit_records(stack.settings.home) if r["resource_type"] == "cohort"]
    assert [r["action"] for r in records] == ["C", "R", "E"]
    for record in records:
        assert_cli_actor(record)
        assert record["detail"]["counts"] == {"Alpha": 4, "Beta": 1}


def test_bad_queries_and_unknown_cohorts_are_refused(
    radcloud: tuple[Stack, list[CohortStudy]],
) -> None:
    stack, _ = radcloud
    empty = stack.cli("cohorts", "create", check=False)
    assert empty.returncode == 2 and "no criterion" in empty.stderr
    missing = stack.cli("cohorts", "show", "999", check=False)
    assert missing.returncode == 1 and 'cohort "999" does not exist' in missing.stderr
    bad = stack.cli("train", "--task", "head-ct", "--source", "cohort:x", check=False)
    assert bad.returncode == 2 and "cohort:ID" in bad.stderr
