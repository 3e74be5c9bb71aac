"""S3 / MinIO artifact store (docs/storage.md) on the `minio` client.

URL: `s3://bucket/prefix?endpoint=http://host:9000&region=us-east-1&create_bucket=1`
(`endpoint` defaults to AWS, `https://s3.amazonaws.com`). Objects live at
`<prefix>/<id[:2]>/<id>` with the kind in the `x-amz-meta-mfm-kind` metadata.

Credentials come only from the settings (`S3Credentials`, read from `MFM_S3_ACCESS_KEY`,
`MFM_S3_SECRET_KEY`, `MFM_S3_SESSION_TOKEN`, else the standard `AWS_*` variables, where
the program starts); without them the client is anonymous. A URL carrying user info is
refused, and URLs are redacted in every error.

Puts are create-only: a conditional `PUT If-None-Match: *`, one request for a new object
(the common case: snapshots and facts are new). If the object exists (412: written
earlier, or a concurrent writer won), it must hold our bytes: its size and single-part
MD5 ETag from a `HEAD`, or the bytes themselves when the ETag is not a plain MD5, else
`Corruption`. Objects of `head_first_bytes` (default 64 KiB) or more are `HEAD`ed
first instead, so an existing large object is never uploaded again. Gets are
hash-verified by the base class.
Transient faults (connection refused/reset, timeouts, 5xx, throttling) are
retried with bounded backoff, then `StorageUnavailable` (retryable); the HTTP
timeouts are short so a dead endpoint is detected in seconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error, ServerError
from pydantic import SecretStr

from mfm_dist.artifacts import ArtifactStore, KindLike, kind_label
from mfm_dist.errors import (
    Corruption,
    InvalidId,
    InvalidInput,
    NotFound,
    StorageError,
    StorageUnavailable,
)
from mfm_dist.ids import ArtifactId
from mfm_dist.secrets import redact_url
from mfm_dist.settings import S3Credentials, truthy
from mfm_dist.stores.retry import BoundedRetries

T = TypeVar("T")

KIND_METADATA = "x-amz-meta-mfm-kind"
DEFAULT_ENDPOINT = "https://s3.amazonaws.com"
_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
}
_EXISTS_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
_MISSING_CODES = {"NoSuchKey", "NoSuchObject", "NotFound"}
_HEX = frozenset("0123456789abcdef")


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", 0) or 0
        return exc.code in _TRANSIENT_CODES or int(status) >= 500
    return isinstance(exc, (ServerError, urllib3.exceptions.HTTPError, OSError))


_CLIENT_FAULTS = (MinioException, urllib3.exceptions.HTTPError, OSError)
"""What the client raises for a failed request (the rest propagates as it is)."""


def _retryable(exc: Exception) -> bool:
    return isinstance(exc, _CLIENT_FAULTS) and _is_transient(exc)


def _simple_etag(etag: str | None) -> str | None:
    """The MD5 hex of a single-part upload's ETag; None for multipart or odd ETags."""
    if not etag:
        return None
    value = etag.strip('"').lower()
    if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


HEAD_FIRST_BYTES = 64 * 1024
"""Puts of at least this many bytes ask whether the object exists before uploading it; a
smaller put is one conditional request (re-sending a few KB costs less than a round trip)."""


class S3ArtifactStore(ArtifactStore):
    """Create-only, content-addressed objects in one bucket under one prefix."""

    def __init__(
        self,
        client: Minio,
        bucket: str,
        prefix: str = "",
        *,
        url: str = "",
        create_bucket: bool = False,
        retries: int = 4,
        backoff_s: float = 0.1,
        head_first_bytes: int = HEAD_FIRST_BYTES,
        http: urllib3.PoolManager | None = None,
    ) -> None:
        """`http`: the connection pool `client` was built with, when it is the store's to
        clear at `close` (`from_url` builds both); a client given without it is the
        caller's to close."""
        self._client = client
        self._head_first_bytes = head_first_bytes
        self._http = http
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self.url = redact_url(url) if url else f"s3://{bucket}/{self._prefix}"
        self._retries = max(retries, 0)
        self._retry = BoundedRetries(self._retries, backoff_s, max_backoff_s=2.0)
        if create_bucket:
            self._ensure_bucket()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 20.0,
        retries: int = 4,
        credentials: S3Credentials | None = None,
    ) -> S3ArtifactStore:
        """Build from `s3://bucket/prefix?endpoint=…&region=…&create_bucket=1`, signing with
        `credentials` (None: anonymous requests).

        `connect_timeout_s`, `read_timeout_s`, `retries` and `head_first_bytes` may also be
        given as query parameters (URL values win), so deployments tune them by
        configuration.
        """
        shown = redact_url(url)
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.hostname:
            raise InvalidInput("store_url_invalid", f"not an s3://bucket URL: {shown}")
        if parts.username is not None or parts.password is not None:
            raise InvalidInput(
                "store_url_invalid",
                f"S3 credentials must come from the settings, not the URL: {shown}",
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            connect_timeout_s = float(query.get("connect_timeout_s", connect_timeout_s))
            read_timeout_s = float(query.get("read_timeout_s", read_timeout_s))
            retries = int(query.get("retries", retries))
            head_first_bytes = int(query.get("head_first_bytes", HEAD_FIRST_BYTES))
        except ValueError:
            raise InvalidInput(
                "store_url_invalid", f"timeouts and retries must be numbers: {shown}"
            ) from None
        endpoint = urlsplit(query.get("endpoint") or DEFAULT_ENDPOINT)
        if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
            raise InvalidInput(
                "store_url_invalid", f"endpoint must be http(s)://host[:port]: {shown}"
            )
        creds = credentials or S3Credentials()
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            retries=urllib3.Retry(total=0, redirect=0),  # retries are ours, bounded
            maxsize=32,
        )
        try:
            client = Minio(
                endpoint.netloc,
                access_key=creds.access_key,
                secret_key=_reveal(creds.secret_key),
                session_token=_reveal(creds.session_token),
                secure=endpoint.scheme == "https",
                region=query.get("region") or None,
                http_client=http,
            )
        except ValueError:
            raise InvalidInput("store_url_invalid", f"invalid S3 endpoint in {shown}") from None
        return cls(
            client,
            parts.hostname,
            parts.path,
            url=url,
            create_bucket=truthy(query.get("create_bucket", "0")),
            retries=retries,
            head_first_bytes=head_first_bytes,
            http=http,
        )

    @property
    def bucket(self) -> str:
        return self._bucket

    def object_key(self, artifact_id: str) -> str:
        """`<prefix>/<id[:2]>/<id>`: where an artifact lives in the bucket."""
        tail = f"{artifact_id[:2]}/{artifact_id}"
        return f"{self._prefix}/{tail}" if self._prefix else tail

    def raw_client(self) -> Minio:
        """The underlying client (operations and tests; bypasses every check)."""
        return self._client

    # --- plumbing ------------------------------------------------------------------------------

    def _key(self, artifact_id: str) -> str:
        return self.object_key(artifact_id)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run an idempotent S3 request with bounded retries on transient faults."""
        try:
            return self._retry.call(fn, _retryable)
        except _CLIENT_FAULTS as exc:
            if not _is_transient(exc):
                raise
            raise StorageUnavailable(
                f"S3 endpoint of {self.url} unavailable during {what} after "
                f"{self._retries + 1} attempts ({type(exc).__name__})",
                code="s3_unavailable",
            ) from None

    def _failed(self, what: str, exc: S3Error) -> StorageError:
        if exc.code == "NoSuchBucket":
            return NotFound(f"bucket of {self.url} does not exist", code="s3_bucket_not_found")
        return StorageError("s3_request_failed", f"S3 {what} on {self.url} failed ({exc.code})")

    def _ensure_bucket(self) -> None:
        if self._call("bucket_exists", lambda: self._client.bucket_exists(self._bucket)):
            return
        try:
            self._call("make_bucket", lambda: self._client.make_bucket(self._bucket))
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._failed("make_bucket", exc) from None

    def _stat(self, artifact_id: str) -> Any | None:
        """Object info, or None when absent."""
        try:
            return self._call(
                "stat", lambda: self._client.stat_object(self._bucket, self._key(artifact_id))
            )
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                return None
            raise self._failed("stat", exc) from None

    def _read(self, artifact_id: str) -> bytes:
        def fetch() -> bytes:
            resp = self._client.get_object(self._bucket, self._key(artifact_id))
            try:
                return bytes(resp.read())
            finally:
                resp.close()
                resp.release_conn()

        try:
            return self._call("get", fetch)
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                raise NotFound(
                    f"artifact {artifact_id} not found", code="artifact_not_found"
                ) from None
            raise self._failed("get", exc) from None

    def _mismatch(self, artifact_id: str) -> Corruption:
        return Corruption(
            "artifact_content_address_mismatch",
            f"stored object for artifact {artifact_id} differs from its content",
            details={"artifact_id": artifact_id},
        )

    def _check_existing(self, artifact_id: str, info: Any, data: bytes) -> None:
        """An existing object must hold our bytes: size and single-part MD5 ETag (cheap)."""
        size = getattr(info, "size", None)
        if size is not None and int(size) != len(data):
            raise self._mismatch(artifact_id)
        md5 = _simple_etag(getattr(info, "etag", None))
        if md5 is not None and md5 != hashlib.md5(data, usedforsecurity=False).hexdigest():
            raise self._mismatch(artifact_id)

    # --- ArtifactStore -------------------------------------------------------------------------

    def exists(self, artifact_id: str) -> bool:
        try:
            aid = ArtifactId(artifact_id)
        except InvalidId:
            return False  # not an artifact id: nothing can be stored under it
        return self._stat(str(aid)) is not None

    def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[ArtifactId]:
        """One LIST request with `Prefix=<prefix>/<id[:2]>/<id prefix>` (paged by S3)."""
        if limit <= 0 or not (0 < len(prefix) <= 64 and set(prefix) <= _HEX):
            return []
        base = f"{self._prefix}/" if self._prefix else ""
        key_prefix = base + (f"{prefix[:2]}/{prefix}" if len(prefix) >= 2 else prefix)

        def listing() -> list[str]:
            names: list[str] = []
            for obj in self._client.list_objects(self._bucket, prefix=key_prefix, recursive=True):
                name = str(obj.object_name).rsplit("/", 1)[-1]
                if name.startswith(prefix) and len(name) == 64 and set(name) <= _HEX:
                    names.append(name)
                    if len(names) >= limit and len(prefix) >= 2:
                        break  # one shard is listed in key order: these are the first
            return names

        try:
            found = self._call("list", listing)
        except S3Error as exc:
            raise self._failed("list", exc) from None
        return [ArtifactId(n) for n in sorted(found)[:limit]]

    def put_raw(self, artifact_id: ArtifactId, kind: KindLike, data: bytes) -> str:
        aid = str(artifact_id)
        if len(data) >= self._head_first_bytes:
            info = self._stat(aid)
            if info is not None:
                self._check_existing(aid, info, data)
                return aid
        headers: dict[str, str | list[str] | tuple[str]] = {
            "Content-Type": "application/octet-stream",
            KIND_METADATA: quote(kind_label(kind), safe=":"),
            # Create-only: a concurrent writer that got there first makes this a 412.
            "If-None-Match": "*",
        }
        key = self._key(aid)
        try:
            # `_put_object` is minio's single-request PUT: it sends our headers unchanged
            # (the public `put_object` would turn If-None-Match into user metadata).
            self._call("put", lambda: self._client._put_object(self._bucket, key, data, headers))
        except S3Error as exc:
            if exc.code not in _EXISTS_CODES:
                raise self._failed("put", exc) from None
            self._require_ours(aid, data)
        return aid

    def _require_ours(self, artifact_id: str, data: bytes) -> None:
        """The object a conditional put found must hold `data`: checked by size and MD5
        ETag when the server gives a plain one, else by reading it back."""
        info = self._stat(artifact_id)
        if info is not None and _simple_etag(getattr(info, "etag", None)) is not None:
            self._check_existing(artifact_id, info, data)
        elif self._read(artifact_id) != data:
            raise self._mismatch(artifact_id)

    def get_raw(self, artifact_id: ArtifactId) -> bytes:
        return self._read(str(artifact_id))

    def close(self) -> None:
        if self._http is not None:
            self._http.clear()
