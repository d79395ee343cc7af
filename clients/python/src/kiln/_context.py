"""The `nats` CLI's contexts, read as the `kiln` CLI reads them (`kiln_client::context`):
`$XDG_CONFIG_HOME/nats/context/<name>.json` (default `~/.config/nats/`), the selected one
named in `nats/context.txt`, so that a server and credentials set up once with `nats context
save` serve this client as well. What `connect()`'s arguments or the environment give
overrides a context's value, one value at a time."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

#: Fields kiln cannot honour: a context that sets one is refused rather than half-used.
UNSUPPORTED = (
    "nsc",
    "jetstream_domain",
    "jetstream_api_prefix",
    "inbox_prefix",
    "user_jwt",
    "socks_proxy",
)
#: The text fields kiln uses ("" or absent: not set).
_TEXT = ("url", "token", "user", "password", "creds", "nkey", "cert", "key", "ca")
_PATHS = frozenset({"creds", "nkey", "cert", "key", "ca"})


@dataclass(frozen=True)
class NatsContext:
    """The values of a context kiln uses (None where the context sets none); paths with a
    leading `~/` made absolute, as `nats` reads them."""

    name: str
    url: str | None = None
    token: str | None = None
    user: str | None = None
    password: str | None = None
    creds: str | None = None
    nkey: str | None = None
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    tls_first: bool = False


def config_dir() -> Path | None:
    """`$XDG_CONFIG_HOME/nats`, else `~/.config/nats` (None without either)."""
    base = os.environ.get("XDG_CONFIG_HOME")
    if base:
        return Path(base) / "nats"
    home = os.environ.get("HOME")
    return Path(home) / ".config" / "nats" if home else None


def load(name: str | None) -> NatsContext | None:
    """The context called `name`, or without a name the one `nats context select` chose
    (None when nothing is selected). A named or selected context that does not exist, does
    not parse, or sets a field kiln cannot honour raises ValueError naming it."""
    folder = config_dir()
    if folder is None:
        return None
    if name is None:
        try:
            name = (folder / "context.txt").read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        if not name:
            return None
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a NATS context name")
    path = folder / "context" / f"{name}.json"
    try:
        text = path.read_text()
    except OSError as e:
        why = "does not exist" if isinstance(e, FileNotFoundError) else f"cannot be read ({e})"
        raise ValueError(
            f"NATS context {name!r} ({path}) {why}: list them with `nats context ls`, or "
            "leave out context= / NATS_CONTEXT (or select another with `nats context select`)"
        ) from e
    return _parse(name, path, text)


def _parse(name: str, path: Path, text: str) -> NatsContext:
    """The context file `path` holds, or a ValueError saying why kiln cannot use it."""
    where = f"NATS context {name!r} ({path})"
    try:
        fields = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{where} is not a context file: {e}") from e
    if not isinstance(fields, dict):
        raise ValueError(f"{where} is not a context file: not a JSON object")
    for field in UNSUPPORTED:
        if fields.get(field):
            raise ValueError(
                f"{where} sets {field}, which kiln does not support: use a context without it"
            )
    values: dict[str, str | None] = {}
    for field in _TEXT:
        value = fields.get(field)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where} is not a context file: {field} is not a string")
        values[field] = _expand(value) if field in _PATHS else (value or None)
    tls_first = fields.get("tls_first", False)
    if not isinstance(tls_first, bool):
        raise ValueError(f"{where} is not a context file: tls_first is not true or false")
    return NatsContext(name=name, tls_first=tls_first, **values)


def _expand(path: str | None) -> str | None:
    """A path from a context file, with a leading `~/` meaning the home folder."""
    if not path:
        return None
    home = os.environ.get("HOME")
    if path.startswith("~/") and home:
        return str(Path(home) / path[2:])
    return path
