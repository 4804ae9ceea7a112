"""The API's resource budget, attacked on the real stack (Ray Serve's proxy in front of the API).

Bodies are generated chunk by chunk and sent over a raw socket that stops as soon as the server
answers, so a "multi-GB" attack costs the test only what the server actually reads.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import select
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import nibabel
import numpy as np
import pytest
from starlette.datastructures import QueryParams

from serving._body_limit import BodyLimitMiddleware, BodyLimits
from serving.api import _qido
from tests.conftest import Stack

pytestmark = pytest.mark.integration

_MIB = 1024 * 1024
_GIB = 1024 * _MIB
MODEL = "head-ct-haemorrhage"


@dataclass
class Answer:
    status: int
    sent: int  # body bytes the client managed to send before the answer came
    seconds: float
    raw: bytes  # the head and the body its Content-Length names


def _zeros(total: int, step: int = _MIB) -> Iterator[bytes]:
    chunk = bytes(step)
    for _ in range(total // step):
        yield chunk


def _answer_complete(data: bytes) -> bool:
    """The head and as much body as its Content-Length names (the body may come in a later
    segment than the head)."""
    head, separator, body = data.partition(b"\r\n\r\n")
    if not separator:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def _read_answer(sock: socket.socket) -> bytes:
    data = b""
    deadline = time.monotonic() + 30
    while not _answer_complete(data) and time.monotonic() < deadline:
        try:
            piece = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not piece:
            break
        data += piece
    return data


def post_raw(
    stack: Stack,
    path: str,
    body: Iterator[bytes],
    *,
    headers: dict[str, str],
    declared_length: int | None = None,
) -> Answer:
    """POST ``body`` (chunked unless ``declared_length``) until the server answers."""
    start = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", stack.settings.api_port), timeout=30)
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{stack.settings.api_port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if declared_length is None:
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {declared_length}")
    sent = 0
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        for chunk in body:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            framed = chunk if declared_length else b"%x\r\n%s\r\n" % (len(chunk), chunk)
            sock.sendall(framed)
            sent += len(chunk)
        else:
            if declared_length is None:
                sock.sendall(b"0\r\n\r\n")
        head = _read_answer(sock)
    except (BrokenPipeError, ConnectionResetError):
        head = _read_answer(sock)
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 "), f"no HTTP answer after {sent} bytes: {head[:200]!r}"
    return Answer(int(head.split()[1]), sent, time.monotonic() - start, head)


def _form_headers(token: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    return headers | ({"Authorization": f"Bearer {token}"} if token else {})


def _still_serves(stack: Stack) -> None:
    with stack.client() as anonymous:
        assert anonymous.get("/healthz").status_code == 200
    with stack.client("admin") as admin:
        assert admin.get("/api/users").status_code == 200


# -- before authentication --------------------------------------------------------------------


def test_unauthenticated_declared_multi_gb_infer_post_is_refused_unread(stack: Stack) -> None:
    answer = post_raw(
        stack,
        "/api/infer/x",
        _zeros(8 * _GIB),
        headers=_form_headers(),
        declared_length=8 * _GIB,
    )
    assert answer.status == 413, answer.raw
    assert answer.sent < 64 * _MIB
    _still_serves(stack)


def test_unauthenticated_streamed_multi_gb_infer_post_is_refused_unread(stack: Stack) -> None:
    """No declared length: authentication runs before the form is read (401), long before the
    512 MiB budget."""
    answer = post_raw(stack, "/api/infer/x", _zeros(8 * _GIB), headers=_form_headers())
    assert answer.status == 401, answer.raw
    assert answer.sent < 256 * _MIB
    _still_serves(stack)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_multi_gb_json_post_is_refused_after_its_budget(stack: Stack, declared: bool) -> None:
    """FastAPI reads a JSON body before it runs the route's authentication: the budget (1 MiB)
    is what stops an anonymous client."""
    answer = post_raw(
        stack,
        "/api/users",
        _zeros(4 * _GIB),
        headers={"Content-Type": "application/json"},
        declared_length=4 * _GIB if declared else None,
    )
    assert answer.status == 413, answer.raw
    assert b"RADCLOUD_API_MAX_BODY_KIB" in answer.raw
    assert answer.sent < 256 * _MIB
    _still_serves(stack)


def test_authenticated_oversized_json_post_is_refused(stack: Stack) -> None:
    token = stack.token_for("admin")
    answer = post_raw(
        stack,
        "/api/users",
        _zeros(64 * _MIB),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    assert answer.status == 413, answer.raw
    _still_serves(stack)


# -- STOW-RS ----------------------------------------------------------------------------------


def test_stow_with_more_parts_than_the_limit_is_refused(stack: Stack) -> None:
    limit = stack.settings.api_max_stow_parts
    part = b"--b\r\nContent-Type: text/plain\r\n\r\nnot dicom\r\n"
    body = part * (limit + 5) + b"--b--\r\n"
    with stack.client("pacs") as client:
        answer = client.post(
            "/dicom-web/studies",
            content=body,
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
            timeout=120,
        )
    assert answer.status_code == 413, answer.text
    assert "RADCLOUD_API_MAX_STOW_PARTS" in answer.json()["detail"]
    assert f"the first {limit} were handled (0 stored)" in answer.json()["detail"]
    _still_serves(stack)


# -- NIfTI bombs to ad hoc inference ----------------------------------------------------------


def _nifti_header(shape: tuple[int, ...]) -> bytes:
    header = nibabel.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    return header.binaryblock + b"\0" * 4  # vox_offset 352


def _gzip_stream(head: bytes, zeros: int) -> bytes:
    deflater = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    pieces = [deflater.compress(head)]
    pieces.extend(deflater.compress(chunk) for chunk in _zeros(zeros))
    pieces.append(deflater.flush())
    return b"".join(pieces)


def _infer(stack: Stack, name: str, data: bytes) -> tuple[int, dict[str, object]]:
    with stack.client("admin") as client:
        answer = client.post(f"/api/infer/{MODEL}", files=[("file", (name, data))], timeout=120)
    return answer.status_code, answer.json()


def test_nifti_declaring_too_many_voxels_is_refused_before_reading(stack: Stack) -> None:
    head = _nifti_header((2048, 2048, 2048))  # 8 Gi voxels, 32 GiB as float32
    status, body = _infer(stack, "bomb.nii.gz", gzip.compress(head + bytes(_MIB)))
    assert status == 413, body
    assert "RADCLOUD_API_MAX_INFER_VOXELS" in str(body["detail"])
    _still_serves(stack)


def test_gzip_bomb_nifti_is_refused_after_its_declared_size(stack: Stack) -> None:
    """A small header (64³ float32: 1 MiB) over a gzip stream of 256 MiB of zeros."""
    bomb = _gzip_stream(_nifti_header((64, 64, 64)), 256 * _MIB)
    assert len(bomb) < 2 * _MIB
    status, body = _infer(stack, "bomb.nii.gz", bomb)
    assert status == 413, body
    assert "inflates beyond" in str(body["detail"])
    _still_serves(stack)


# -- scoped QIDO-RS: Orthanc is asked with a limit --------------------------------------------


def test_scoped_search_asks_orthanc_with_a_limit_and_refuses_a_broader_answer() -> None:
    params, window = _qido.upstream_query(QueryParams("PatientID=x&limit=5&offset=2"), 100)
    assert ("limit", "101") in params and ("limit", "5") not in params
    assert (window.limit, window.offset) == (5, 2)
    _qido.check_breadth(json.dumps([{}] * 100).encode(), 100)
    with pytest.raises(_qido.SearchTooBroadError, match="RADCLOUD_ARCHIVE_MAX_FIND_RESULTS"):
        _qido.check_breadth(json.dumps([{}] * 101).encode(), 100)


# -- the middleware itself (as `python -m serving.api` runs it, without Ray's proxy) ----------


def _run(middleware: BodyLimitMiddleware, path: str, chunks: list[bytes], headers: list) -> dict:
    """Drive one request through ``middleware``; what the app read and what was sent."""
    seen: dict = {"app_read": 0, "app_called": False, "sent": [], "asked": 0}
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]

    async def receive() -> dict:
        seen["asked"] += 1
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        seen["sent"].append(message)

    async def app(scope: dict, receive: Any, send: Any) -> None:
        seen["app_called"] = True
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionError("client went away")
            seen["app_read"] += len(message["body"])
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware.app = app
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    asyncio.run(middleware(scope, receive, send))
    return seen


def test_the_body_budget_per_route_class() -> None:
    limits = BodyLimits(json_bytes=10, infer_bytes=100, stow_bytes=1000)
    middleware = BodyLimitMiddleware(lambda *a: None, limits)  # type: ignore[arg-type]

    declared = _run(middleware, "/api/users", [b""], [(b"content-length", b"11")])
    assert not declared["app_called"] and declared["sent"][0]["status"] == 413
    assert b"RADCLOUD_API_MAX_BODY_KIB" in declared["sent"][1]["body"]

    chunked = _run(middleware, "/api/users", [b"x" * 6] * 100, [])
    assert chunked["sent"][0]["status"] == 413 and len(chunked["sent"]) == 2  # app's answer dropped
    assert chunked["app_read"] == 6 and chunked["asked"] == 2  # nothing past the budget is read

    infer = _run(middleware, "/api/infer/m", [b"x" * 50, b"x" * 50], [])
    assert infer["sent"][0]["status"] == 200 and infer["app_read"] == 100
    stow = _run(middleware, "/dicom-web/studies", [b"x" * 600, b"x" * 600], [])
    assert stow["sent"][0]["status"] == 413
    assert b"RADCLOUD_API_MAX_STOW_MIB" in stow["sent"][1]["body"]
