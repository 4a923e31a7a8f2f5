"""Helpers shared by the API tests: error-shape checks and small uploads."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image


def assert_error(resp: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response has ``status`` and the one error shape (and ``code`` if given); returns the error."""
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "detail"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in resp.text
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def png_bytes(size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()
