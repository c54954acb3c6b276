"""Pure helpers for the URLs kubemr uses to name data.

Everything in kubemr names data by URL (`s3://bucket/key`, `file:///abs/path`,
`https://host/path`); plain paths from a manifest or the command line become
`file://` URLs once, at the edge, with `to_url`. These helpers never touch the
network or the disk.

URLs are taken literally: kubemr does not percent-encode or decode `file://`
and `s3://` URLs, so `file:///data/my file.txt` names the file `/data/my file.txt`
and `s3://b/a%20b` names the key `a%20b`. `http(s)://` URLs are sent as written.
"""

from __future__ import annotations

import os
import re

from kubemr.errors import StorageError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(url: str) -> str:
    """The lower-case scheme of `url` (`"s3"`, `"file"`, ...), or `""` for a plain path."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else ""


def to_url(path_or_url: str, base_dir: str) -> str:
    """Turn a plain path into an absolute `file://` URL; return URLs unchanged.

    A relative path is taken relative to `base_dir` (the manifest's directory,
    or the working directory); `~` and `~user` are expanded. A trailing `/`
    is kept, because it marks a prefix (see `is_prefix`).
    """
    if scheme(path_or_url):
        return path_or_url
    if not path_or_url:
        raise StorageError("An empty string is not a path or URL; give a path, or s3:// URL.")
    path = os.path.expanduser(path_or_url)
    absolute = os.path.normpath(os.path.join(os.path.abspath(base_dir), path))
    if path_or_url.endswith("/") and absolute != "/":
        absolute += "/"
    return "file://" + absolute


def join(url: str, *parts: str) -> str:
    """Append path components to `url` with exactly one `/` between each.

    A part may hold several components (`"map/part-0"`) and may end with `/`
    when the result should name a prefix. Parts that are empty, absolute, or
    contain `.` or `..` components raise StorageError, so a join can never
    climb out of `url`.
    """
    components: list[str] = []
    for part in parts:
        if part.startswith("/"):
            raise StorageError(
                f"Cannot join the absolute path {part!r} onto {url}; give a relative name."
            )
        segments = part.removesuffix("/").split("/")
        for segment in segments:
            if segment in ("", ".", ".."):
                raise StorageError(
                    f"Cannot join {part!r} onto {url}: path components must be "
                    "non-empty and must not be '.' or '..'."
                )
        components.extend(segments)
    if not components:
        return url
    joined = url + ("" if url.endswith("/") else "/") + "/".join(components)
    if parts[-1].endswith("/"):
        joined += "/"
    return joined


def is_prefix(url: str) -> bool:
    """Whether `url` names a prefix (a directory) rather than one object: it ends with `/`."""
    return url.endswith("/")


def split_bucket(url: str) -> tuple[str, str]:
    """Split `s3://bucket/key` into `("bucket", "key")`; the key may be empty."""
    if scheme(url) != "s3":
        raise StorageError(f"{url} is not an s3:// URL.")
    rest = url[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{url} names no bucket; write s3://BUCKET/KEY.")
    return bucket, key
