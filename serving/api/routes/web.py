"""The radiologists' web app (``serving/web``, built by ``make install``) served at ``/app/``.

``/`` redirects to ``/app/``; ``/app/`` is the sign-in and worklist page, ``/app/viewer.html``
the viewer. The files hold no patient data, so they need no credentials: every API and DICOMweb
call the pages make does (``docs/reading-app.md``). The build output is looked up on each
request, so a build made while the API runs is served at once; when it is missing, ``/app/``
answers 503 with a JSON error telling how to build it. A browser that accepts gzip gets the
build's pre-compressed ``.gz`` copy of a file where there is one (the viewer's script: 4.2 MB,
1.2 MB gzipped), with ``Content-Encoding: gzip``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

__all__ = ["WEB_DIST", "router"]

WEB_DIST = Path(__file__).resolve().parents[2] / "web" / "dist"
"""Where ``npm run build`` in ``serving/web`` writes the app."""

router = APIRouter(include_in_schema=False)

# vite names every file under assets/ by its content hash: such a file never changes.
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
_MEDIA_TYPES = {".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css"}


@router.api_route("/", methods=["GET", "HEAD"])
def root() -> RedirectResponse:
    """The web app."""
    return RedirectResponse("/app/", status_code=307)


@router.api_route("/app", methods=["GET", "HEAD"])
def app_without_slash() -> RedirectResponse:
    """The web app (relative asset paths need the trailing slash)."""
    return RedirectResponse("/app/", status_code=307)


@router.api_route("/app/{path:path}", methods=["GET", "HEAD"])
def app_file(path: str, request: Request) -> Response:
    """A file of the built web app; ``index.html`` for the folder itself."""
    gzip = "gzip" in request.headers.get("accept-encoding", "").lower()
    return web_file(WEB_DIST, path, gzip=gzip)


def web_file(dist: Path, path: str, *, gzip: bool = False) -> Response:
    """The answer for ``path`` inside the build output ``dist``.

    Parameters
    ----------
    dist
        The build output folder (``serving/web/dist``).
    path
        The path below ``/app/``; empty for the index page.
    gzip
        The client accepts gzip: send the file's ``.gz`` copy when the build has one.

    Returns
    -------
    Response
        The file; 503 when the app is not built, 404 for a path that is not one of its files
        (including one that tries to leave ``dist``).
    """
    if not (dist / "index.html").is_file():
        return JSONResponse(
            {"error": "unavailable", "detail": "web app not built: run make install"}, 503
        )
    root = dist.resolve()
    target = (root / (path or "index.html")).resolve()
    if target.is_dir():
        target = target / "index.html"
    if not target.is_relative_to(root) or not target.is_file():
        return JSONResponse(
            {"error": "not_found", "detail": f'"/app/{path}" is not a file of the web app'}, 404
        )
    immutable = target.parent == root / "assets"
    headers = {"Cache-Control": _IMMUTABLE if immutable else _REVALIDATE, "Vary": "Accept-Encoding"}
    media_type = _MEDIA_TYPES.get(target.suffix) or (
        "text/html" if target.suffix == ".html" else None
    )
    compressed = target.with_name(f"{target.name}.gz")
    if gzip and compressed.is_file():
        headers["Content-Encoding"] = "gzip"
        return FileResponse(compressed, media_type=media_type, headers=headers)
    return FileResponse(target, media_type=media_type, headers=headers)
