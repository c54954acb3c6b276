"""Where data lives: one `Storage` per URL scheme, and the URL helpers.

    storage_for("s3://bucket/key")           -> S3Storage (boto3)
    storage_for("file:///data/in.txt")       -> LocalStorage
    storage_for("https://example.org/a.txt") -> HttpStorage (read-only)

Plain paths are turned into `file://` URLs with `to_url` first, once, where
they enter kubemr (manifest, command line). Backends are created once per
scheme and configuration and then shared, so every caller reuses one S3
client (and its connection pool).
"""

from __future__ import annotations

import threading

from kubemr.errors import StorageError
from kubemr.storage.base import ObjectInfo, Storage, StorageConfig
from kubemr.storage.urls import is_prefix, join, scheme, split_bucket, to_url

__all__ = [
    "SCHEMES",
    "ObjectInfo",
    "Storage",
    "StorageConfig",
    "clear_cache",
    "is_prefix",
    "join",
    "scheme",
    "split_bucket",
    "storage_for",
    "to_url",
]

SCHEMES = ("s3", "file", "http", "https")
"""The URL schemes kubemr can read (and, except http(s), write)."""

_cache: dict[tuple[str, StorageConfig | None], Storage] = {}
_lock = threading.Lock()


def storage_for(url: str, config: StorageConfig | None = None) -> Storage:
    """The shared backend for `url`'s scheme; `config` matters only for s3://."""
    kind = scheme(url)
    if kind not in SCHEMES:
        supported = ", ".join(f"{name}://" for name in SCHEMES[:-1]) + f" and {SCHEMES[-1]}://"
        if not kind:
            raise StorageError(
                f"{url} is not a URL; kubemr storage takes {supported} URLs "
                "(plain paths become file:// URLs)."
            )
        raise StorageError(
            f"{url} uses the unsupported scheme {kind}://; kubemr supports {supported}."
        )
    key = (
        "http" if kind == "https" else kind,
        (config or StorageConfig()) if kind == "s3" else None,
    )
    with _lock:
        found = _cache.get(key)
        if found is None:
            found = _cache[key] = _create(key[0], config)
        return found


def clear_cache() -> None:
    """Forget every backend, so the next `storage_for` builds new ones (and new S3 clients).

    Only needed when the AWS environment changes within one process, as in tests.
    """
    with _lock:
        _cache.clear()


def _create(kind: str, config: StorageConfig | None) -> Storage:
    # Imported here so that using file:// never imports boto3.
    if kind == "s3":
        from kubemr.storage.s3 import S3Storage

        return S3Storage(config)
    if kind == "http":
        from kubemr.storage.http import HttpStorage

        return HttpStorage()
    from kubemr.storage.local import LocalStorage

    return LocalStorage()
