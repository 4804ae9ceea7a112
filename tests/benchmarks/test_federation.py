"""The federation suite (``radcloud bench --suite federation --quick``): its report's schema,
from real Orthanc nodes, a real slow proxy and silent port, and radcloud's API under uvicorn;
and the suite's own parts (the proxy, the silent node, the multipart counter). No timing is
asserted: figures are checked to be present, positive and consistent, never fast or slow."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from benchmarks._federation_sites import SilentNode, SlowProxy
from benchmarks.federation import QUICK, _fetch

RADCLOUD = [sys.executable, "-m", "radcloud"]


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps(
            {"path": self.path, "authorization": self.headers.get("Authorization")}
        ).encode()
        self.send_response(207)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("X-Origin", "echo")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_slow_proxy_forwards_path_query_credentials_status_and_headers(echo: str) -> None:
    proxy = SlowProxy(echo, delay_s=0.01)
    try:
        answer = httpx.get(
            f"{proxy.url}/dicom-web/studies",
            params={"PatientID": "P-1", "limit": "5"},
            auth=("user", "secret"),
        )
    finally:
        proxy.close()
    assert answer.status_code == 207
    assert answer.headers["x-origin"] == "echo"
    seen = answer.json()
    assert seen["path"] == "/dicom-web/studies?PatientID=P-1&limit=5"
    assert seen["authorization"].startswith("Basic ")


def test_the_silent_node_accepts_and_never_answers() -> None:
    node = SilentNode()
    try:
        with pytest.raises(httpx.ReadTimeout):  # connected (no ConnectError), then nothing
            httpx.get(f"{node.url}/dicom-web/studies", timeout=httpx.Timeout(5.0, read=0.3))
    finally:
        node.close()


def test_retrieval_counts_parts_and_bytes_across_chunk_boundaries() -> None:
    boundary = b"b0undary-42"
    parts = [bytes([n]) * (1000 + n) for n in range(7)]
    body = b"".join(
        b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in parts
    )
    body += b"--" + boundary + b"--\r\n"

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 5):  # boundaries split between chunks
            yield body[start : start + 5]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; '
                f'boundary="{boundary.decode()}"'
            },
            content=chunks(),
        )

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        fetched = _fetch(client, "http://node/studies/1.2.3", {})
    assert fetched["instances"] == len(parts)
    assert fetched["bytes"] == len(body)
    assert fetched["s"] > 0


@pytest.mark.slow
@pytest.mark.integration
def test_quick_federation_suite_reports_latency_failing_nodes_and_retrieval(
    tmp_path: Path,
) -> None:
    run = subprocess.run(
        [*RADCLOUD, "bench", "--suite", "federation", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    [path] = tmp_path.glob("*-cpu.json")
    report = json.loads(path.read_text())
    assert report["errors"] == {} and report["skipped"] == {}
    assert report["suites"] == ["federation"] and report["quick"] is True
    result = report["results"]["federation"]
    assert result["suite"] == "federation" and "machine" not in result
    assert result["synthetic"] is True

    latency = result["latency"]
    assert set(latency["nodes"]) == {"A", "B", "C"}
    rounds = QUICK.windows * QUICK.per_window
    for figure in [*latency["nodes"].values(), latency["federated"]]:
        stat = figure["all_ms"]
        assert stat["n"] == rounds
        assert 0 < stat["min"] <= stat["p50"] <= stat["p95"] <= stat["max"]
        windows = figure["window_p50_ms"]
        assert windows["n"] == QUICK.windows
        assert windows["min"] <= windows["median"] <= windows["max"]
    # the proxy's delay is on node C alone: it is the baseline
    assert latency["slowest_node"] == "C"
    assert latency["nodes"]["C"]["all_ms"]["min"] >= QUICK.delay_s * 1000
    base, fed = latency["nodes"]["C"]["all_ms"], latency["federated"]["all_ms"]
    assert latency["overhead_ms"]["p50"] == pytest.approx(fed["p50"] - base["p50"])
    assert latency["ratio"]["p50"] == pytest.approx(fed["p50"] / base["p50"])
    answer = latency["answer"]
    assert answer["partial"] is False
    assert {n["hospital"]: n["state"] for n in answer["nodes"]} == {
        "North": "ok",
        "South": "ok",
        "A": "ok",
        "B": "ok",
        "C": "ok",
    }
    assert set(latency["inside_radcloud_ms"]) == {"North", "South", "A", "B", "C"}

    for key, state in (("down", "error"), ("silent", "timeout")):
        failing = result[key]
        assert failing["failing_node_states"] == [state], failing
        assert failing["other_nodes_ok"] is True and failing["partial"] is True
        assert failing["studies"] == [answer["studies"]] * QUICK.failing_samples
        assert failing["ms"]["n"] == QUICK.failing_samples
        assert failing["within_bound"] is True  # the answer waited no longer than the timeout

    retrieval = result["retrieval"]
    if "skipped" in retrieval:
        assert "federated WADO-RS" in retrieval["skipped"]
    else:
        for side in ("direct", "radcloud"):
            assert [r["instances"] for r in retrieval["runs"][side]] == [
                QUICK.retrieval_instances
            ] * QUICK.repeats
            assert retrieval[side]["mb_per_s"]["median"] > 0
        assert retrieval["ratio"] > 0

    plot = tmp_path / report["files"]["plots"]["federation"]
    with Image.open(plot) as image:
        image.verify()
        assert image.format == "PNG"
    markdown = (tmp_path / report["files"]["markdown"]).read_text()
    assert "GET /api/federated/studies" in markdown and "--quick" in markdown
    assert "silent (never answers)" in markdown
