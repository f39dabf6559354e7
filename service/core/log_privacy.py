"""Raw user ids never reach a log line: a log outlives the deletion it would undo.

Paths and queries that carry a user id (``/forget/{user_id}``, ``?user_id=``) are logged with
the user's HMAC instead (the first 16 hex digits of the same hash the stored requests keep, so
an operator can still match a log line to a request). The access log of uvicorn is filtered
here; the app's own log lines use :func:`redact` on the path they print.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode

_FORGET = re.compile(r"^(/forget/)(?!requests(?:/|$))([^/?]+)")


def redact(path: str, hash_of: Callable[[str], str]) -> str:
    """``path`` (with its query, if any) with every user id replaced by ``u:<hash>``."""
    path, sep, query = path.partition("?")
    path = _FORGET.sub(lambda m: m.group(1) + _token(m.group(2), hash_of), path)
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k == "user_id" for k, _ in pairs):
            query = urlencode(
                [(k, _token(v, hash_of) if k == "user_id" else v) for k, v in pairs], safe=":,"
            )
    return path + sep + query


def _token(external_id: str, hash_of: Callable[[str], str]) -> str:
    return "u:" + hash_of(external_id)[:16]


class AccessLogRedactor(logging.Filter):
    """Rewrites the path argument of uvicorn's access log records."""

    def __init__(self, hash_of: Callable[[str], str]):
        super().__init__()
        self.hash_of = hash_of

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], redact(args[2], self.hash_of), args[3], args[4])
        return True


def install(hash_of: Callable[[str], str]) -> AccessLogRedactor:
    access = logging.getLogger("uvicorn.access")
    for old in [f for f in access.filters if isinstance(f, AccessLogRedactor)]:
        access.removeFilter(old)  # one per process: the latest app's salt
    redactor = AccessLogRedactor(hash_of)
    access.addFilter(redactor)
    return redactor
