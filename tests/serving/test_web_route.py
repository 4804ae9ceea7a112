"""The API's serving of the reading web app's build (``serving/api/routes/web.py``)."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from serving.api.routes import web


@pytest.fixture
def dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty build folder the router serves from."""
    folder = tmp_path / "dist"
    monkeypatch.setattr(web, "WEB_DIST", folder)
    return folder


class Client:
    """Requests to an app holding only the web router, in process (ASGI)."""

    def __init__(self) -> None:
        self.app = FastAPI()
        self.app.include_router(web.router)

    async def _request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://radcloud") as client:
            return await client.request(method, path, headers=headers)

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return asyncio.run(self._request("GET", path, headers))

    def head(self, path: str) -> httpx.Response:
        return asyncio.run(self._request("HEAD", path))


@pytest.fixture
def client() -> Client:
    return Client()


def _build(dist: Path) -> None:
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>worklist</title>")
    (dist / "viewer.html").write_text("<!doctype html><title>viewer</title>")
    (dist / "assets" / "viewer-abc123.js").write_text("export {};")


def test_the_root_redirects_to_the_app(client: Client, dist: Path) -> None:
    assert client.get("/").headers["location"] == "/app/"
    assert client.get("/app").headers["location"] == "/app/"


def test_without_a_build_the_app_answers_503_saying_how_to_build_it(
    client: Client, dist: Path
) -> None:
    for path in ("/app/", "/app/viewer.html"):
        answer = client.get(path)
        assert answer.status_code == 503
        assert answer.json()["detail"] == "web app not built: run make install"


def test_the_build_is_served_without_credentials(client: Client, dist: Path) -> None:
    _build(dist)
    index = client.get("/app/")
    assert index.status_code == 200 and "worklist" in index.text
    assert index.headers["cache-control"] == "no-cache"
    viewer = client.get("/app/viewer.html?study=1.2.3")
    assert viewer.status_code == 200 and "viewer" in viewer.text
    asset = client.get("/app/assets/viewer-abc123.js")
    assert asset.status_code == 200
    assert asset.headers["content-type"].startswith("text/javascript")
    assert "immutable" in asset.headers["cache-control"]
    assert client.head("/app/").status_code == 200


def test_a_browser_accepting_gzip_gets_the_precompressed_copy(client: Client, dist: Path) -> None:
    _build(dist)
    script = "export const viewer = 1;\n" * 200
    (dist / "assets" / "viewer-abc123.js").write_text(script)
    (dist / "assets" / "viewer-abc123.js.gz").write_bytes(gzip.compress(script.encode()))
    zipped = client.get("/app/assets/viewer-abc123.js", {"Accept-Encoding": "gzip, br"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["content-type"].startswith("text/javascript")
    assert int(zipped.headers["content-length"]) < len(script) / 10
    assert zipped.text == script  # httpx decodes it as a browser does
    plain = client.get("/app/assets/viewer-abc123.js", {"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.text == script
    assert plain.headers["vary"] == "Accept-Encoding"
    # a file without a .gz copy is sent as it is
    index = client.get("/app/", {"Accept-Encoding": "gzip"})
    assert "content-encoding" not in index.headers and "worklist" in index.text


def test_paths_outside_the_build_are_not_served(client: Client, dist: Path, tmp_path: Path) -> None:
    _build(dist)
    (tmp_path / "secret.txt").write_text("not part of the app")
    assert client.get("/app/missing.js").status_code == 404
    assert client.get("/app/..%2Fsecret.txt").status_code == 404
    assert client.get("/app/%2E%2E/secret.txt").status_code == 404
