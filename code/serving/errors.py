"""The JSON error document every error response carries: ``{"code", "type", "message"}``.

MMS's own errors (``{"code": 503, "type": "ServiceUnavailableException", "message": ...}``)
have the same shape, so a client reads every error the same way.
"""

from __future__ import annotations

import json
from http import HTTPStatus


def error_body(status: int, message: str) -> str:
    """``{"code": 415, "type": "UnsupportedMediaType", "message": "..."}``."""
    try:
        kind = HTTPStatus(status).phrase.replace(" ", "")
    except ValueError:
        kind = "Error"
    return json.dumps({"code": status, "type": kind, "message": message})
