"""Bearer tokens, shared by the server (which requires one when configured) and the mobile side's client
(which sends it). A token lives in a file whose first line is the token."""

from __future__ import annotations

import hmac
from pathlib import Path

from .errors import NeurosurgeonError

__all__ = ["authorization_header", "read_token", "token_matches"]


def read_token(token_file: str | Path) -> str:
    """The bearer token: the file's first line, stripped; a missing, unreadable or empty file is a
    one-line error naming it."""
    try:
        lines = Path(token_file).read_text().splitlines()
    except UnicodeDecodeError:
        raise NeurosurgeonError(f"token file {token_file}: not a text file") from None
    except OSError as err:
        raise NeurosurgeonError(f"token file {token_file}: {err.strerror}") from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise NeurosurgeonError(f"token file {token_file}: the first line is empty")
    return token


def authorization_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header value carries `token` (compared in constant time)."""
    scheme, _, credentials = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode())
