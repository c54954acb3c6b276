"""A manifest read from a file and made concrete for where it runs.

What `kubemr run`, `kubemr submit` and the operator share: reading the YAML
file (`read_manifest`), turning a path input into a URL against the
manifest's directory (`resolve_input`, with the rule that a path must exist
and a string meant as-is is written `opaque:TEXT`), and the checks only a
cluster needs on top of validation (`cluster_spec`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kubemr.errors import InputError, SpecError
from kubemr.spec import JobSpec, is_path, load_manifest, parse_manifest, scheme_of
from kubemr.storage import to_url
from kubemr.storage.local import file_path


def read_manifest(path: str) -> dict[str, Any]:
    """The manifest in the YAML file `path`, parsed (not yet validated: `parse_manifest`)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError as exc:
        raise SpecError(
            f"{path} does not exist; give the path of a MapReduceJob manifest."
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read {path}: {exc}.") from exc
    return load_manifest(text, path)


def resolve_input(item: str, base: str) -> str:
    """A path (absolute, relative to the manifest's directory, or ~) becomes file://; URLs and
    `opaque:TEXT` stay as they are. A path that does not exist is refused here, with the rule."""
    if not is_path(item):
        return item
    url = to_url(item, base)
    path = file_path(url)
    if not os.path.lexists(path.rstrip("/") or "/"):
        where = "" if item.startswith(("/", "~")) else f" (no {path})"
        raise InputError(
            f"input {item} does not exist{where}; check the path (relative paths are taken from "
            f"the manifest's directory), or write opaque:{item} to hand the string to the map "
            "command as-is."
        )
    return url


def resolve_archive(where: str, base: str) -> str:
    """Where an archive of spec.archives is: its path made a file:// URL as `resolve_input`
    does (one that is not a file is refused); URLs stay as they are."""
    if not is_path(where):
        return where
    url = to_url(where, base)
    if not os.path.isfile(file_path(url)):
        raise InputError(
            f"archive {where} is not a file (relative paths are taken from the manifest's "
            "directory); check the path."
        )
    return url


def cluster_spec(mrj: Mapping[str, Any]) -> JobSpec:
    """Validate a MapReduceJob the way `kubemr validate` does, plus what only a cluster needs."""
    spec = parse_manifest(mrj)
    if not spec.output:
        raise SpecError("spec.output is required on a cluster; give an s3://bucket/prefix/ URL.")
    if not spec.output.startswith("s3://"):
        raise SpecError(
            f"spec.output must be an s3:// URL on a cluster (pods cannot write your disk), "
            f"got {spec.output!r}."
        )
    for i, (where, _) in enumerate(spec.archives):
        if is_path(where) or scheme_of(where) == "file":
            raise SpecError(
                f"spec.archives[{i}] is a local path ({where}); pods cannot read your disk: "
                "give an s3:// or http(s):// URL, or submit with `kubemr submit --upload` to "
                "copy it to S3 first."
            )
    for i, item in enumerate(spec.inputs):
        if is_path(item) or scheme_of(item) == "file":
            raise SpecError(
                f"spec.inputs[{i}] is a local path ({item}); pods cannot read your disk: give an "
                "s3:// URL, or submit with `kubemr submit --upload` to copy it to S3 first (a "
                f"string meant for the map command as-is is written opaque:{item})."
            )
    return spec
