"""The library's settings: one typed, immutable object, read once where a program starts
(docs/configuration.md).

Configuration used to travel through `os.environ`, read wherever a value was needed, so
what a function did depended on variables set (or changed) anywhere in the process. Now
the environment is read by `Settings.from_env()` at the program's entry point — the CLI,
the worker boot, a script, or a library caller's explicit call — and the result is passed
down: stores get their credentials, the operation registry its modules and transports,
manifests their provenance, each as a parameter.

Parsing never echoes a value (a password must not end up in an error line) and never
writes back into `os.environ`: a password file is read here, into a `SecretStr`. An
invalid variable is `settings_invalid` (an `InvalidInput`) naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import SecretStr

from mfm_dist.errors import InvalidInput
from mfm_dist.secrets import SECRET_MARKERS, redact_url

DEFAULT_HOME = ".mfm"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def truthy(value: str) -> bool:
    """Whether a flag's text says yes (`1`, `true`, `yes`, `on`, in any case): the one
    reading of a yes/no word, for URL options (`?durable=1`) as for variables."""
    return value.lower() in TRUE_WORDS


class SettingsError(InvalidInput):
    """An environment variable with a value the settings cannot use. The message names
    the variable and what it must be — never the value, which may be a secret. A name
    that itself looks secret-shaped (`MFM_REDIS_PASSWORD_FILE`) is shown with its marker
    masked (`MFM_REDIS_*_FILE`), since the secrets policy redacts any message carrying a
    marker; `details["variable"]` holds the exact name."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(
            "settings_invalid",
            f"{_masked(variable)} {problem}",
            details={"variable": variable},
        )
        self.variable = variable


def _masked(name: str) -> str:
    for marker in SECRET_MARKERS:
        name = re.sub(re.escape(marker), "*", name, flags=re.IGNORECASE)
    return name


@dataclass(frozen=True)
class RedisCredentials:
    """`MFM_REDIS_USERNAME` / `MFM_REDIS_PASSWORD` (or `MFM_REDIS_PASSWORD_FILE`): applied
    to every Redis URL that carries no credentials of its own."""

    username: str | None = None
    password: SecretStr | None = None

    def client_kwargs(self, url: str) -> dict[str, str]:
        """Keyword arguments for a redis-py client of `url` (empty when the URL has its own
        password, or there is none to give)."""
        if self.password is None or urlsplit(url).password is not None:
            return {}
        kwargs = {"password": self.password.get_secret_value()}
        if self.username:
            kwargs["username"] = self.username
        return kwargs

    def apply(self, url: str) -> str:
        """`url` with these credentials in its user info, if it is a `redis://`/`rediss://`
        URL without credentials (what Celery's broker and result backend need). The result
        holds a secret: never print or log it (`mfm_dist.secrets.redact_url`)."""
        parts = urlsplit(url)
        if self.password is None or parts.scheme not in ("redis", "rediss") or "@" in parts.netloc:
            return url
        user = quote(self.username or "", safe="")
        secret = quote(self.password.get_secret_value(), safe="")
        netloc = f"{user}:{secret}@{parts.netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class S3Credentials:
    """`MFM_S3_ACCESS_KEY` / `MFM_S3_SECRET_KEY` / `MFM_S3_SESSION_TOKEN`, else the standard
    `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`; none: anonymous."""

    access_key: str | None = None
    secret_key: SecretStr | None = None
    session_token: SecretStr | None = None


@dataclass(frozen=True)
class TransportSettings:
    """The allow-lists of the built-in transports, as given (`MFM_EXEC_ALLOW`, `/a:/b`;
    `MFM_HTTP_ALLOW_HOSTS`, `host[:port],…`). Empty allows nothing. They are checked when
    the transports are built — on a run's first live attempt, never by a replay — with the
    transports' own codes (`exec_allow_invalid`, `http_allow_invalid`)."""

    exec_allow: str = ""
    http_allow_hosts: str = ""


@dataclass(frozen=True)
class Provenance:
    """What a manifest's build record takes from the configuration: `MFM_GIT_COMMIT`
    (instead of asking `git`) and the names of `MFM_ENV_ALLOWLIST` (docs/plans.md)."""

    git_commit: str | None = None
    env_allowlist: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """Everything the library takes from the environment. Built by `from_env` at a
    program's start (or directly, e.g. `Settings(home=Path("/srv/mfm"))`); the defaults
    are what an empty environment gives."""

    home: Path = Path(DEFAULT_HOME)
    events_url: str | None = None
    """`MFM_EVENTS_URL`; None: `sqlite:` under `home`."""
    artifacts_url: str | None = None
    """`MFM_ARTIFACTS_URL`; None: `file:` under `home`."""
    operations: tuple[str, ...] = ()
    """`MFM_OPERATIONS`: operations modules to import, in order."""
    redis: RedisCredentials = field(default_factory=RedisCredentials)
    s3: S3Credentials = field(default_factory=S3Credentials)
    transports: TransportSettings = field(default_factory=TransportSettings)
    provenance: Provenance = field(default_factory=Provenance)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from `environ` (default: this process's environment). Call it
        where a program starts; pass the result down."""
        env = Env(os.environ if environ is None else environ)
        return cls(
            home=Path(env.raw("MFM_HOME") or DEFAULT_HOME),
            events_url=env.text("MFM_EVENTS_URL"),
            artifacts_url=env.text("MFM_ARTIFACTS_URL"),
            operations=env.names("MFM_OPERATIONS"),
            redis=RedisCredentials(
                username=env.text("MFM_REDIS_USERNAME"), password=_redis_password(env)
            ),
            s3=_s3_credentials(env),
            transports=TransportSettings(
                exec_allow=env.raw("MFM_EXEC_ALLOW"),
                http_allow_hosts=env.raw("MFM_HTTP_ALLOW_HOSTS"),
            ),
            provenance=Provenance(
                git_commit=env.text("MFM_GIT_COMMIT"),
                env_allowlist=env.names("MFM_ENV_ALLOWLIST"),
            ),
        )

    def with_stores(
        self,
        *,
        home: str | os.PathLike[str] | None = None,
        events_url: str | None = None,
        artifacts_url: str | None = None,
    ) -> Settings:
        """These settings with the stores a caller chose explicitly (e.g. `--home`,
        `--events-url`); an argument left None keeps the setting."""
        changes: dict[str, Any] = {}
        if home is not None:
            changes["home"] = Path(home)
        if events_url:
            changes["events_url"] = events_url
        if artifacts_url:
            changes["artifacts_url"] = artifacts_url
        return dataclasses.replace(self, **changes) if changes else self

    def store_urls(self) -> tuple[str, str]:
        """The event and artifact store URLs in force: the configured ones, else the
        embedded stores under the home (absolute `sqlite:///…` and `file:///…` URLs)."""
        root = self.home.absolute()
        events = self.events_url or f"sqlite://{root / 'events.sqlite3'}"
        artifacts = self.artifacts_url or f"file://{root / 'artifacts'}"
        return events, artifacts

    def __repr__(self) -> str:
        return redacted_repr(self)


def redacted_repr(obj: Any) -> str:
    """A dataclass's repr with every URL field redacted (user info, secret-shaped query
    parameters); secrets are `SecretStr`, which repr as stars."""
    shown = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, str) and "://" in value:
            value = redact_url(value)
        shown.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(shown)})"


class Env:
    """Typed reads of one environment mapping; every refusal names its variable."""

    TRUE = TRUE_WORDS
    FALSE = FALSE_WORDS

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str, default: str = "") -> str:
        return self._environ.get(name, default)

    def text(self, name: str) -> str | None:
        """The value, stripped; None when unset or blank."""
        value = self._environ.get(name, "").strip()
        return value or None

    def names(self, name: str) -> tuple[str, ...]:
        """A comma-separated list, each entry stripped, empty entries dropped."""
        return tuple(part.strip() for part in self.raw(name).split(",") if part.strip())

    def number(self, name: str, default: float, *, zero_ok: bool = False) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        must_be = "a non-negative number" if zero_ok else "a positive number"
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(name, f"must be {must_be}") from None
        if not value >= 0 or value == float("inf") or (value == 0 and not zero_ok):
            raise SettingsError(name, f"must be {must_be}")
        return value

    def integer(self, name: str, default: int, *, low: int = 0, high: int | None = None) -> int:
        raw = self.text(name)
        if raw is None:
            return default
        bounds = f"from {low}" + (f" to {high}" if high is not None else "")
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(name, f"must be an integer {bounds}") from None
        if value < low or (high is not None and value > high):
            raise SettingsError(name, f"must be an integer {bounds}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        if truthy(raw):
            return True
        if raw.lower() in self.FALSE:
            return False
        raise SettingsError(name, "must be one of 1/true/yes/on or 0/false/no/off")


def _redis_password(env: Env) -> SecretStr | None:
    """`MFM_REDIS_PASSWORD`, else the contents of `MFM_REDIS_PASSWORD_FILE` (e.g. a compose
    secret, so the password need not sit in the environment) without its final newline."""
    password = env.raw("MFM_REDIS_PASSWORD")
    if password:
        return SecretStr(password)
    path = env.text("MFM_REDIS_PASSWORD_FILE")
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            password = fh.read().strip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"names a file that cannot be read ({type(exc).__name__})"
        raise SettingsError("MFM_REDIS_PASSWORD_FILE", problem) from None
    return SecretStr(password) if password else None


def _s3_credentials(env: Env) -> S3Credentials:
    def secret(name: str) -> SecretStr | None:
        value = env.raw(name)
        return SecretStr(value) if value else None

    if env.raw("MFM_S3_ACCESS_KEY"):
        return S3Credentials(
            env.raw("MFM_S3_ACCESS_KEY"),
            secret("MFM_S3_SECRET_KEY"),
            secret("MFM_S3_SESSION_TOKEN"),
        )
    return S3Credentials(
        env.raw("AWS_ACCESS_KEY_ID") or None,
        secret("AWS_SECRET_ACCESS_KEY"),
        secret("AWS_SESSION_TOKEN"),
    )
