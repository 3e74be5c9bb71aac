"""The secrets policy (docs/secrets.md): recognise secret-shaped strings and JSON.

Nothing secret-shaped may be persisted or echoed. The scan is deliberately
conservative: a false positive costs a rejected input, a false negative leaks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SECRET_MARKERS: tuple[str, ...] = (
    "password",
    "passphrase",
    "mnemonic",
    "private_key",
    "privatekey",
    "seed phrase",
    "seed_phrase",
    "seedphrase",
    "api_key",
    "apikey",
    "x-api-key",
    "x_api_key",
    "access_key",
    "accesskey",
    "secret_key",
    "secretkey",
    "aws_access_key_id",
    "aws_secret_access_key",
    "access_token",
    "refresh_token",
    "id_token",
    "authorization",
    "bearer ",
)

MNEMONIC_MIN_WORDS = 12
MNEMONIC_MAX_WORDS = 24
_MNEMONIC_WORD = re.compile(r"^[a-z]+$")


def _looks_like_mnemonic(text: str) -> bool:
    words = text.split()
    if not MNEMONIC_MIN_WORDS <= len(words) <= MNEMONIC_MAX_WORDS:
        return False
    return all(_MNEMONIC_WORD.match(w) for w in words)


def is_secret_string(text: str) -> bool:
    """True if `text` contains a secret marker or looks like a 12–24 word mnemonic.

    This is the rule's reference definition; the compiled scans (mfm_dist/_jsonscan.c) apply
    the same rule to whole JSON values and to the keys and strings of JSON bytes, and
    tests/engine/test_canonical.py holds them together."""
    lowered = text.lower()
    if any(marker in lowered for marker in SECRET_MARKERS):
        return True
    return _looks_like_mnemonic(text)


try:
    # Named as an export: the tests read it and swap it out.
    from mfm_dist import _jsonscan as _jsonscan
except ImportError:  # built without a C compiler: the pure-Python paths below are used
    _jsonscan = None  # type: ignore[assignment]
else:
    _jsonscan.configure_secrets(SECRET_MARKERS, MNEMONIC_MIN_WORDS, MNEMONIC_MAX_WORDS)


def contains_mnemonic_run(text: str) -> bool:
    """True if `text` holds 12 or more consecutive lowercase a–z words anywhere in it.

    Stricter than `is_secret_string` on purpose: used before persisting free text such
    as error messages, where a mnemonic may be embedded in other words.
    """
    run = 0
    for word in text.split():
        run = run + 1 if _MNEMONIC_WORD.match(word) else 0
        if run >= 12:
            return True
    return False


def must_redact(text: str) -> bool:
    """Free text (e.g. an error message) that must not be persisted or shown as is."""
    return is_secret_string(text) or contains_mnemonic_run(text)


def shown(text: str) -> str:
    """`text` as it may appear in a message: `<redacted>` when it is secret-shaped."""
    return "<redacted>" if is_secret_string(text) else text


def iter_strings(value: Any) -> Iterator[str]:
    """Every key and string value of a JSON-like structure, depth first."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str):
                    yield k
                stack.append(v)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def contains_secret(value: Any) -> bool:
    """True if any key or string value of the JSON-like `value` is secret-shaped."""
    if _jsonscan is not None:
        found = _jsonscan.find_secret(value)
        if found != 2:  # 2: a subclass or very deep nesting, which only the walk below decides
            return found == 1
    return any(is_secret_string(s) for s in iter_strings(value))


def redact_url(url: str) -> str:
    """Drop user info (and any password) and secret-shaped query parameters from a URL
    before it is printed or logged. A URL with nothing to hide is returned unchanged."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        pairs = []
        for pair in parts.query.split("&"):
            key, sep, value = pair.partition("=")
            if pair and (is_secret_string(key) or is_secret_string(value)):
                pairs.append(f"{key}=***")
            elif pair:
                pairs.append(f"{key}{sep}{value}")
        query = "&".join(pairs)
        if netloc == parts.netloc and query == parts.query:
            return url
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparseable url>"
