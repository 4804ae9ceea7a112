"""The load suite's simulated radiologists: locust users, headless, in a process of their own.

``python -m benchmarks._load_users --host URL --accounts FILE --users N --stop-file PATH
--out FILE [--spawn-rate R] [--max-seconds S] [--think MIN MAX]`` (started by
:mod:`benchmarks.load`, never imported by it: locust patches the standard library for gevent
when it is imported, which the harness's threads, Ray and SQLAlchemy must not see).

Each user signs in with its own account (``POST /api/auth/token``, the web app's OAuth2 password
grant) and then, with a think time between actions, pages the worklist (``GET /api/worklist``),
searches the archive (QIDO-RS ``GET /dicom-web/studies``) and opens a study it saw there: the
viewer's manifest (``GET /api/studies/{uid}/viewer``) and the first frames of its first series
(WADO-RS ``.../frames/1``), as the reading web app does. The users run until the stop file
appears (or ``max_seconds`` pass); then every request's latency, per kind (named as in
:data:`benchmarks.load.REQUEST_KINDS`), and the requests per second over time are written to
``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, between, events, task
from locust.env import Environment

from benchmarks._env import percentiles

_FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
_PAGE = 25  # worklist rows and QIDO matches per page, as the web app asks
_FRAMES_PER_OPEN = 3


class _Accounts:
    """The user names and the one password of the benchmark's radiologists, handed out in turn."""

    names: list[str] = []  # noqa: RUF012 - set once by main, before any user starts
    password = ""
    handed = 0

    @classmethod
    def next(cls) -> str:
        name = cls.names[cls.handed % len(cls.names)]
        cls.handed += 1
        return name


class Radiologist(FastHttpUser):
    """One radiologist at the web app: worklist pages, searches, studies opened."""

    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        self.username = _Accounts.next()
        self.seen: list[str] = []  # studies of the last worklist page or search
        self.total = 0  # worklist rows at the last look
        self.authorization: dict[str, str] = {}
        self._sign_in()

    def _sign_in(self) -> None:
        with self.client.post(
            "/api/auth/token",
            data={"username": self.username, "password": _Accounts.password},
            name="sign in",
            catch_response=True,
        ) as answer:
            if answer.status_code != 200:
                answer.failure(f"HTTP {answer.status_code}: {answer.text[:120]}")
                return
            token = answer.json()["access_token"]
        self.authorization = {"Authorization": f"Bearer {token}"}

    def _get(self, path: str, name: str, accept: str = "application/json") -> Any:
        """GET ``path``; on 401 (the token expired) sign in again. The answer, or None."""
        headers = {**self.authorization, "Accept": accept}
        with self.client.get(path, name=name, headers=headers, catch_response=True) as answer:
            if answer.status_code == 401:
                answer.failure("HTTP 401")
                self._sign_in()
                return None
            if answer.status_code != 200:
                answer.failure(f"HTTP {answer.status_code}: {answer.text[:120]}")
                return None
            return answer

    @task(4)
    def page_worklist(self) -> None:
        pages = max(1, -(-self.total // _PAGE))
        offset = random.randrange(pages) * _PAGE  # noqa: S311 - not a secret
        answer = self._get(f"/api/worklist?limit={_PAGE}&offset={offset}", "worklist page")
        if answer is not None:
            body = answer.json()
            self.total = int(body["total"])
            self.seen = [item["study_instance_uid"] for item in body["items"]] or self.seen

    @task(2)
    def search_studies(self) -> None:
        modality = random.choice(("CT", "CR", "DX"))  # noqa: S311 - not a secret
        answer = self._get(
            f"/dicom-web/studies?ModalitiesInStudy={modality}&limit={_PAGE}"
            "&includefield=StudyDescription",
            "qido studies",
            accept="application/dicom+json",
        )
        if answer is not None and answer.text.strip():
            found = [item["0020000D"]["Value"][0] for item in answer.json() if "0020000D" in item]
            self.seen = found or self.seen

    @task(2)
    def open_study(self) -> None:
        if not self.seen:
            return
        uid = random.choice(self.seen)  # noqa: S311 - not a secret
        answer = self._get(f"/api/studies/{uid}/viewer", "open study (manifest)")
        if answer is None:
            return
        series = answer.json()["series"]
        if not series:
            return
        first = series[0]
        for instance in first["instances"][:_FRAMES_PER_OPEN]:
            self._get(
                f"/dicom-web/studies/{uid}/series/{first['series_instance_uid']}"
                f"/instances/{instance['sop_instance_uid']}/frames/1",
                "frame",
                accept=_FRAMES_ACCEPT,
            )


class _Recorder:
    """Every request's latency and outcome, per kind, as locust reports them."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.latency_ms: dict[str, list[float]] = defaultdict(list)
        self.failures: dict[str, Counter[str]] = defaultdict(Counter)
        self.per_second: Counter[int] = Counter()

    def request(self, name: str, response_time: float, exception: Any, **_: Any) -> None:
        self.per_second[int(time.monotonic() - self.started)] += 1
        if exception is None:
            self.latency_ms[name].append(float(response_time))
        else:
            self.failures[name][str(exception)[:160]] += 1

    def document(self, environment: Environment, users: int) -> dict[str, Any]:
        names = sorted(set(self.latency_ms) | set(self.failures))
        total = environment.stats.total
        seconds = max(1, int(time.monotonic() - self.started) + 1)
        return {
            "users": users,
            "duration_s": round(time.monotonic() - self.started, 1),
            "kinds": {
                name: {
                    "requests": len(self.latency_ms[name]) + sum(self.failures[name].values()),
                    "failures": sum(self.failures[name].values()),
                    "failure_reasons": dict(self.failures[name]),
                    "latency_ms": percentiles(self.latency_ms[name]),
                }
                for name in names
            },
            "requests_per_second": [self.per_second.get(s, 0) for s in range(seconds)],
            "locust_totals": {"requests": total.num_requests, "failures": total.num_failures},
        }


def main() -> None:
    """Command line entry point (see the module's docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--accounts", type=Path, required=True, help="JSON: names, password")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--spawn-rate", type=float, default=5.0)
    parser.add_argument("--stop-file", type=Path, required=True)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    parser.add_argument("--think", type=float, nargs=2, default=(1.0, 3.0))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    accounts = json.loads(args.accounts.read_text())
    _Accounts.names, _Accounts.password = list(accounts["names"]), accounts["password"]
    Radiologist.wait_time = between(*args.think)
    recorder = _Recorder()
    events.request.add_listener(recorder.request)  # type: ignore[no-untyped-call]
    environment = Environment(user_classes=[Radiologist], host=args.host, events=events)
    runner = environment.create_local_runner()
    runner.start(args.users, spawn_rate=args.spawn_rate)
    deadline = time.monotonic() + args.max_seconds
    while not args.stop_file.exists() and time.monotonic() < deadline:
        gevent.sleep(0.5)
    runner.quit()
    args.out.write_text(json.dumps(recorder.document(environment, args.users), indent=1) + "\n")


if __name__ == "__main__":
    main()
