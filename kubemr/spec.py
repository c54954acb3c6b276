"""The MapReduceJob manifest: parse, apply defaults, validate.

One function, `parse_manifest`, turns the YAML a user wrote (the same file
`kubectl create -f` takes) into a frozen `JobSpec`, or raises `SpecError`
with one sentence naming the field, what is expected and what was found.
It is pure: it reads no files and no environment, so the CLI, the shim and
the operator judge a manifest the same way.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kubemr.errors import SpecError

API_VERSION = "kubemr.io/v1alpha1"
KIND = "MapReduceJob"

DEFAULT_SPLIT_SIZE = 32 * 1024 * 1024
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_TASK_TIMEOUT = 3600

MAX_REPLICAS = 1000
MAX_PARTITIONS = 10000
MAX_ATTEMPTS = 100
MAX_TASK_TIMEOUT = 7 * 24 * 3600
MIN_SPLIT_SIZE = 1024
MAX_SPLIT_SIZE = 64 * 1024**3
MAX_FILES_BYTES = 900 * 1024  # a ConfigMap holds at most 1 MiB, with metadata
MAX_INPUTS = 100000
#: Values a manifest may hold once YAML aliases are expanded (a "billion laughs" document
#: is a few lines of YAML that expands to gigabytes when written out as JSON).
MAX_VALUES = 1_000_000

SPEC_FIELDS = (
    "replicas",
    "inputs",
    "map",
    "combine",
    "reduce",
    "partitions",
    "files",
    "archives",
    "env",
    "output",
    "storage",
    "image",
    "mode",
    "template",
    "splitSize",
    "linesPerMap",
    "maxAttempts",
    "taskTimeoutSeconds",
    "separator",
    "keyFields",
    "partitionFields",
    "keyComparator",
    "keepIntermediate",
    "mapOutputCompression",
    "outputCompression",
    "ttlSecondsAfterFinished",
)
STORAGE_FIELDS = ("endpoint", "region", "secretName")
METADATA_FIELDS = (
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "ownerReferences",
    "finalizers",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_FILE_KEY = re.compile(r"^[-._a-zA-Z0-9]+\Z")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_QUANTITY = re.compile(r"^\s*([0-9]{1,20})\s*([KMGT]i?|[kmgt]i?|)[Bb]?\s*\Z")
_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}

KNOWN_SCHEMES = ("s3", "file", "http", "https")
# An input written `opaque:TEXT` hands TEXT to the map command as-is; every other
# input that is not a URL is a path, which must exist (so a mistyped path is an error).
OPAQUE = "opaque:"
#: How a worker pod runs the user's commands: in the kubemr image itself (`wrapper`), or in
#: any image with /bin/sh next to a kubemr sidecar that moves the data (`sidecar`).
WRAPPER, SIDECAR = "wrapper", "sidecar"
MODES = (WRAPPER, SIDECAR)
AUTO = "auto"
#: spec.mapOutputCompression: `auto` is zstd where map outputs go to object storage, none on a
#: local disk (see kubemr.shuffle).
MAP_OUTPUT_CODECS = (AUTO, "zstd", "none")
#: spec.outputCompression: how results are written (`part-r-00000.gz`, `.zst`), as Hadoop's
#: mapreduce.output.fileoutputformat.compress with GzipCodec or ZStandardCodec.
OUTPUT_CODECS = ("none", "gzip", "zstd")
OUTPUT_SCHEMES = ("s3", "file")


@dataclass(frozen=True)
class StorageSpec:
    """`spec.storage`: where S3 is and which Secret holds its credentials (cluster)."""

    endpoint: str | None = None
    region: str | None = None
    secret_name: str | None = None


@dataclass(frozen=True)
class JobSpec:
    """A validated MapReduceJob, with defaults applied."""

    name: str | None
    generate_name: str | None
    namespace: str | None
    inputs: tuple[str, ...]
    map: str | None
    combine: str | None
    reduce: str | None
    partitions: int
    replicas: int
    files: Mapping[str, str] = field(default_factory=dict)
    #: spec.archives: (where, name) of each archive, unpacked into the directory `name`.
    archives: tuple[tuple[str, str], ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    output: str | None = None
    storage: StorageSpec = field(default_factory=StorageSpec)
    image: str | None = None
    mode: str = WRAPPER
    template: Mapping[str, Any] | None = None
    split_size: int = DEFAULT_SPLIT_SIZE
    lines_per_map: int | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    task_timeout: int = DEFAULT_TASK_TIMEOUT
    separator: str = "\t"
    key_fields: int = 1
    partition_fields: int | None = None
    #: spec.keyComparator as GNU sort keys (`-k2,2nr`), or () to compare keys bytewise.
    key_comparator: tuple[str, ...] = ()
    keep_intermediate: bool = False
    map_output_compression: str = AUTO
    output_compression: str = "none"
    ttl_seconds_after_finished: int | None = None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key
        self.line = line


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (where PyYAML keeps the
    last one in silence), as kubectl's strict decoding does."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            except TypeError:  # unhashable: the base class says so
                pass
        return super().construct_mapping(node, deep)


def load_manifest(text: str, source: str = "the manifest") -> dict[str, Any]:
    """Parse YAML text into the manifest mapping; one document only."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except _DuplicateKey as exc:
        raise SpecError(
            f"{source} gives the key {exc.key!r} twice in one mapping (line {exc.line}); keep one."
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "it is not valid YAML"
        raise SpecError(f"{source} is not valid YAML{where}: {problem}.") from exc
    except ValueError as exc:  # a malformed timestamp, an integer too long to convert
        reason = str(exc).split(":")[0].rstrip(".")
        raise SpecError(f"{source} holds a value that cannot be read: {reason}.") from exc
    except RecursionError as exc:
        raise SpecError(f"{source} nests too deeply to be a MapReduceJob manifest.") from exc
    if not docs:
        raise SpecError(f"{source} is empty; expected a MapReduceJob manifest.")
    if len(docs) > 1:
        raise SpecError(
            f"{source} holds {len(docs)} YAML documents; put one MapReduceJob per file."
        )
    doc = docs[0]
    if not isinstance(doc, dict):
        raise SpecError(f"{source} must be a mapping (apiVersion, kind, metadata, spec).")
    if _values(doc, MAX_VALUES) > MAX_VALUES:
        raise SpecError(
            f"{source} expands to more than {MAX_VALUES} values; YAML aliases (*name) repeat "
            "their anchor's whole value each time they are used."
        )
    return doc


def _values(doc: Any, limit: int) -> int:
    """How many values `doc` holds with every alias expanded, counting no further than `limit`."""
    seen = 0
    stack = [doc]
    while stack and seen <= limit:
        value = stack.pop()
        seen += 1
        if isinstance(value, dict):
            stack.extend(value.values())
            seen += len(value)
        elif isinstance(value, list):
            stack.extend(value)
    return seen


def parse_manifest(doc: Mapping[str, Any]) -> JobSpec:
    """Validate a manifest mapping and return its `JobSpec`."""
    if not isinstance(doc, Mapping):
        raise SpecError("the manifest must be a mapping with apiVersion, kind, metadata and spec.")
    for key, want in (("apiVersion", API_VERSION), ("kind", KIND)):
        if key not in doc:
            raise SpecError(f"{key} is missing; write `{key}: {want}`.")
        if doc[key] != want:
            raise SpecError(f"{key} must be {want!r}, got {_describe(doc[key])}.")
    _unknown(doc, ("apiVersion", "kind", "metadata", "spec", "status"), "")
    meta = doc.get("metadata")
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        raise SpecError("metadata must be a mapping.")
    _unknown(meta, METADATA_FIELDS, "metadata.")
    name = _opt_str(meta, "name", "metadata.")
    generate_name = _opt_str(meta, "generateName", "metadata.")
    namespace = _opt_str(meta, "namespace", "metadata.")
    if name is not None:
        _dns_label(name, "metadata.name", 63)
    if generate_name is not None and (
        not generate_name
        or len(generate_name) > 58
        or not _DNS_LABEL.match(generate_name.rstrip("-"))
    ):
        raise SpecError(
            "metadata.generateName must be a DNS label prefix of at most 58 characters "
            f"(lowercase letters, digits and '-'), got {generate_name!r}."
        )
    if namespace is not None:
        _dns_label(namespace, "metadata.namespace", 63)
    for key in ("labels", "annotations"):
        _string_map(meta.get(key), f"metadata.{key}")
    spec = doc.get("spec")
    if spec is None:
        raise SpecError("spec is missing; a MapReduceJob needs at least spec.inputs and spec.map.")
    if not isinstance(spec, Mapping):
        raise SpecError("spec must be a mapping.")
    return parse_spec(spec, name=name, generate_name=generate_name, namespace=namespace)


def parse_spec(
    spec: Mapping[str, Any],
    *,
    name: str | None = None,
    generate_name: str | None = None,
    namespace: str | None = None,
) -> JobSpec:
    """Validate the `spec` mapping of a MapReduceJob."""
    _unknown(spec, SPEC_FIELDS, "spec.")
    inputs = _inputs(spec.get("inputs"))
    map_cmd = _command(spec, "map")
    combine = _command(spec, "combine")
    reduce = _command(spec, "reduce")
    if combine is not None and reduce is None and map_cmd is not None:
        raise SpecError(
            "spec.combine needs spec.reduce: a combiner only runs before a reduce step."
        )
    partitions = _int(spec, "partitions", 1, 1, MAX_PARTITIONS)
    if "partitions" in spec and reduce is None and map_cmd is not None:
        raise SpecError(
            "spec.partitions is set but spec.reduce is not; a map-only job has no partitions "
            "(remove spec.partitions or add spec.reduce)."
        )
    replicas = _int(spec, "replicas", 1, 1, MAX_REPLICAS)
    files = _files(spec.get("files"))
    archives = _archives(spec.get("archives"), files)
    env = _env(spec.get("env"))
    output = _opt_str(spec, "output", "spec.")
    if output is not None:
        _output(output)
    storage = _storage(spec.get("storage"))
    image = _opt_str(spec, "image", "spec.")
    if image is not None and not image.strip():
        raise SpecError("spec.image must not be empty.")
    mode = _opt_str(spec, "mode", "spec.") or WRAPPER
    if mode not in MODES:
        raise SpecError(
            f"spec.mode must be {WRAPPER!r} (commands run in the kubemr image) or {SIDECAR!r} "
            f"(commands run in spec.image, which needs only /bin/sh), got {mode!r}."
        )
    template = _template(spec.get("template"))
    split_size = _size(spec.get("splitSize"))
    lines_per_map = _int(spec, "linesPerMap", 0, 1, 10**9) or None
    max_attempts = _int(spec, "maxAttempts", DEFAULT_MAX_ATTEMPTS, 1, MAX_ATTEMPTS)
    task_timeout = _int(spec, "taskTimeoutSeconds", DEFAULT_TASK_TIMEOUT, 1, MAX_TASK_TIMEOUT)
    separator = _opt_str(spec, "separator", "spec.")
    if separator is None:
        separator = "\t"
    if len(separator.encode()) != 1 or separator == "\n":
        raise SpecError(
            "spec.separator must be a single one-byte character other than newline, "
            f"got {separator!r}."
        )
    key_fields = _int(spec, "keyFields", 1, 1, 100)
    partition_fields = _int(spec, "partitionFields", 0, 1, 100) or None
    comparator = _comparator(_opt_str(spec, "keyComparator", "spec."), key_fields)
    if partition_fields is not None and partition_fields > key_fields:
        raise SpecError(
            f"spec.partitionFields must be at most spec.keyFields ({key_fields}), got "
            f"{partition_fields}: records are partitioned on the first fields of their key."
        )
    keep = spec.get("keepIntermediate", False)
    if not isinstance(keep, bool):
        raise SpecError(f"spec.keepIntermediate must be true or false, got {keep!r}.")
    compression = _opt_str(spec, "mapOutputCompression", "spec.")
    if compression is None:
        compression = AUTO
    if compression not in MAP_OUTPUT_CODECS:
        raise SpecError(
            "spec.mapOutputCompression must be 'auto' (zstd on object storage, none on a local "
            f"disk), 'zstd' or 'none', got {compression!r}."
        )
    results_codec = _opt_str(spec, "outputCompression", "spec.") or "none"
    if results_codec not in OUTPUT_CODECS:
        raise SpecError(
            "spec.outputCompression must be 'none' (the default), 'gzip' or 'zstd' (results "
            f"written as part-r-00000.gz or .zst), got {results_codec!r}."
        )
    ttl: int | None = None
    if spec.get("ttlSecondsAfterFinished") is not None:
        ttl = _int(spec, "ttlSecondsAfterFinished", 0, 0, 365 * 24 * 3600)
    return JobSpec(
        name=name,
        generate_name=generate_name,
        namespace=namespace,
        inputs=inputs,
        map=map_cmd,
        combine=combine,
        reduce=reduce,
        partitions=partitions,
        replicas=replicas,
        files=files,
        archives=archives,
        env=env,
        output=output,
        storage=storage,
        image=image,
        mode=mode,
        template=template,
        split_size=split_size,
        lines_per_map=lines_per_map,
        max_attempts=max_attempts,
        task_timeout=task_timeout,
        separator=separator,
        key_fields=key_fields,
        partition_fields=partition_fields,
        key_comparator=comparator,
        keep_intermediate=keep,
        map_output_compression=compression,
        output_compression=results_codec,
        ttl_seconds_after_finished=ttl,
    )


def opaque_text(item: str) -> str | None:
    """TEXT of an input written `opaque:TEXT`, or None for a URL or path."""
    return item[len(OPAQUE) :] if item.startswith(OPAQUE) else None


def is_path(item: str) -> bool:
    """Whether an input names a path (which must exist): neither a URL nor `opaque:TEXT`."""
    return opaque_text(item) is None and scheme_of(item) is None


def scheme_of(url: str) -> str | None:
    """The lower-case scheme of `scheme://...`, or None for anything else."""
    m = _SCHEME.match(url)
    return m.group(1).lower() if m else None


def _unknown(obj: Mapping[str, Any], known: tuple[str, ...], prefix: str) -> None:
    for key in obj:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            name = str(key)
            if not isinstance(key, str) or not name.isprintable() or len(name) > 40:
                name = repr(key) if len(repr(key)) <= 40 else repr(key)[:37] + "..."
            tip = (
                f"; did you mean {prefix}{hint[0]}?"
                if hint
                else f"; known fields: {', '.join(known)}."
            )
            raise SpecError(f"{prefix}{name} is not a known field{tip}")


def _opt_str(obj: Mapping[str, Any], key: str, prefix: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SpecError(f"{prefix}{key} must be a string, got {_describe(value)}.")
    return value


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {value!r}".lower()
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {text!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _dns_label(value: str, where: str, limit: int) -> None:
    if len(value) > limit or not _DNS_LABEL.match(value):
        raise SpecError(
            f"{where} must be a DNS label of at most {limit} characters (lowercase letters, digits "
            f"and '-', starting and ending with a letter or digit), got {value!r}."
        )


def _int(obj: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(
            f"spec.{key} must be an integer from {low} to {high}, got {_describe(value)}."
        )
    if not low <= value <= high:
        raise SpecError(f"spec.{key} must be an integer from {low} to {high}, got {value}.")
    return value


_KEY = re.compile(r"^(\d+)(\.\d+)?([nr]*)(?:,(\d+)(\.\d+)?([nr]*))?$")


def _comparator(text: str | None, key_fields: int) -> tuple[str, ...]:
    """spec.keyComparator (Hadoop's mapreduce.partition.keycomparator.options, `-k1,1
    -k2,2nr`) as GNU sort keys on the key's fields, global -n/-r given to every key that has
    no options of its own; None or "" compares keys bytewise."""
    if not text or not text.strip():
        return ()
    usage = (
        "spec.keyComparator takes -kSTART[,END] keys (fields of the key, optionally .CHAR) "
        "with the options n (numeric) and r (reverse), and -n or -r for every key, as in "
        "`-k2,2nr -k1,1`"
    )
    tokens = text.split()
    specs: list[str] = []
    flags = ""
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "-k" and i + 1 < len(tokens):
            i += 1
            specs.append(tokens[i])
        elif token.startswith("-k") and len(token) > 2:
            specs.append(token[2:])
        elif re.fullmatch(r"-[nr]+", token):
            flags += token[1:]
        else:
            raise SpecError(f"{usage}; {token!r} is not one of them.")
        i += 1
    if not specs:
        raise SpecError(f"{usage}; {text!r} gives no key.")
    keys = []
    for spec_text in specs:
        m = _KEY.match(spec_text)
        if m is None:
            raise SpecError(f"{usage}; -k{spec_text} is not one of them.")
        start, start_char, start_opts, end, end_char, end_opts = m.groups()
        last = int(end) if end is not None else key_fields  # Hadoop: to the key's end
        if int(start) < 1 or last < int(start) or last > key_fields:
            raise SpecError(
                f"spec.keyComparator key -k{spec_text} must lie within the key's "
                f"{key_fields} field(s) (spec.keyFields), from field 1 on."
            )
        opts = "".join(sorted(set(start_opts + (end_opts or "")))) or "".join(sorted(set(flags)))
        keys.append(f"-k{start}{start_char or ''},{last}{end_char or ''}{opts}")
    return tuple(keys)


def _size(value: Any) -> int:
    if value is None:
        return DEFAULT_SPLIT_SIZE
    if isinstance(value, bool):
        raise SpecError(f"spec.splitSize must be a size in bytes such as 64Mi, got {value!r}.")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _QUANTITY.match(value)):
        size = int(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise SpecError(
            "spec.splitSize must be a size in bytes such as 67108864 or 64Mi, "
            f"got {_describe(value)}."
        )
    if not MIN_SPLIT_SIZE <= size <= MAX_SPLIT_SIZE:
        raise SpecError(
            f"spec.splitSize must be between 1Ki and 64Gi, got {value!r} ({size} bytes)."
        )
    return size


def _inputs(value: Any) -> tuple[str, ...]:
    if value is None:
        raise SpecError(
            "spec.inputs is missing; list at least one input (a path, s3://, http(s):// URL, "
            "or opaque:TEXT to hand TEXT to the map command)."
        )
    if isinstance(value, str):
        if not value.isprintable() or len(value) > 200:
            raise SpecError(f"spec.inputs must be a list of strings, got {_describe(value)}.")
        raise SpecError(
            "spec.inputs must be a list of strings; write it as `inputs: [" + value + "]`."
        )
    if not isinstance(value, list):
        raise SpecError(f"spec.inputs must be a list of strings, got {_describe(value)}.")
    if not value:
        raise SpecError("spec.inputs is empty; list at least one input.")
    if len(value) > MAX_INPUTS:
        raise SpecError(f"spec.inputs has {len(value)} entries; at most {MAX_INPUTS} are allowed.")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise SpecError(f"spec.inputs[{i}] must be a string, got {_describe(item)}.")
        if not item.strip():
            raise SpecError(f"spec.inputs[{i}] is empty; remove it or give an input.")
        if "\n" in item or "\x00" in item:
            raise SpecError(
                f"spec.inputs[{i}] contains a newline or NUL byte; inputs are one line each."
            )
        scheme = scheme_of(item)
        if scheme is not None and scheme not in KNOWN_SCHEMES:
            raise SpecError(
                f"spec.inputs[{i}] has the unknown scheme {scheme}://; use s3://, http(s)://, "
                "file:// or a path, or write opaque:TEXT to hand TEXT to the map command as-is."
            )
        out.append(item)
    return tuple(out)


def _command(spec: Mapping[str, Any], key: str) -> str | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SpecError(
            f"spec.{key} must be a shell command string (run with sh -c), got {_describe(value)}."
        )
    if not value.strip():
        raise SpecError(f"spec.{key} is empty; give a shell command or remove the field.")
    if "\x00" in value:
        raise SpecError(f"spec.{key} contains a NUL byte.")
    return value


#: What an archive may be (Hadoop's -archives, mrjob's --archives), by its name's ending.
ARCHIVE_EXTENSIONS = (".tar.gz", ".tgz", ".tar", ".zip")
MAX_ARCHIVES = 32


def archive_name(where: str) -> str:
    """The directory an archive is unpacked into, when its entry gives no `#name`: its file
    name without the extension (`s3://b/model-v2.tar.gz` -> `model-v2`)."""
    base = where.rstrip("/").rsplit("/", 1)[-1]
    for ext in ARCHIVE_EXTENSIONS:
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def _archives(value: Any, files: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_ARCHIVES:
        raise SpecError(
            f"spec.archives must be a list of at most {MAX_ARCHIVES} archive URLs or paths "
            f"(.tar.gz, .tgz, .tar, .zip), got {_describe(value)}."
        )
    out: list[tuple[str, str]] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise SpecError(f"spec.archives[{i}] must be a URL or a path, got {_describe(item)}.")
        where, _, name = item.partition("#")
        scheme = scheme_of(where)
        if scheme is not None and scheme not in ("s3", "http", "https", "file"):
            raise SpecError(
                f"spec.archives[{i}] ({item}) must be an s3://, http(s)://, file:// URL or a path."
            )
        if not where.lower().endswith(ARCHIVE_EXTENSIONS):
            raise SpecError(
                f"spec.archives[{i}] ({item}) must end with .tar.gz, .tgz, .tar or .zip: that "
                "is how its format is known."
            )
        name = name or archive_name(where)
        if not _FILE_KEY.match(name) or name in (".", ".."):
            raise SpecError(
                f"spec.archives[{i}] unpacks into {name!r}, which is not a plain file name; "
                "write URL#name with letters, digits, '-', '_' and '.' only."
            )
        if name in files or name in {n for _, n in out}:
            raise SpecError(
                f"spec.archives[{i}] unpacks into {name!r}, which another archive or a file of "
                "spec.files takes already; give it another name with URL#name."
            )
        out.append((where, name))
    return tuple(out)


def _files(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(
            f"spec.files must be a mapping of file name to text, got {_describe(value)}."
        )
    total = 0
    out: dict[str, str] = {}
    for key, text in value.items():
        if not isinstance(key, str) or not _FILE_KEY.match(key) or key in (".", ".."):
            raise SpecError(
                f"spec.files key {key!r} is not a plain file name; use letters, digits, '-', '_' "
                "and '.' only (no '/' or '..')."
            )
        if not isinstance(text, str):
            raise SpecError(f"spec.files.{key} must be text, got {_describe(text)}.")
        if "\x00" in text:
            raise SpecError(f"spec.files.{key} contains a NUL byte; files must be text.")
        total += len(key) + len(text.encode())
        out[key] = text
    if total > MAX_FILES_BYTES:
        raise SpecError(
            f"spec.files holds {total} bytes, more than the {MAX_FILES_BYTES} a job can ship; "
            "put large files in storage and read them from there."
        )
    return out


def _env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"spec.env must be a mapping of NAME: value, got {_describe(value)}.")
    out: dict[str, str] = {}
    for key, text in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise SpecError(f"spec.env name {key!r} is not a valid environment variable name.")
        if key.startswith("KUBEMR_"):
            raise SpecError(
                f"spec.env name {key} is reserved; KUBEMR_* variables are set by kubemr."
            )
        if isinstance(text, bool) or not isinstance(text, (str, int, float)):
            raise SpecError(f"spec.env.{key} must be a string, got {_describe(text)}.")
        if "\0" in str(text):
            raise SpecError(
                f"spec.env.{key} holds a NUL character, which no environment variable can "
                "hold; remove it."
            )
        out[key] = str(text)
    return out


#: Pod fields a template may not set: they would let a job's pods reach the node (host
#: namespaces, init containers that escape the locked-down worker container).
FORBIDDEN_POD_FIELDS = (
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "hostUsers",
    "initContainers",
    "ephemeralContainers",
)
_POD_LISTS = ("containers", "volumes", "tolerations", "imagePullSecrets", "hostAliases")
_CONTAINER_LISTS = ("env", "envFrom", "volumeMounts")


def _template(value: Any) -> dict[str, Any] | None:
    """A PodTemplateSpec to merge into the worker pods: shapes checked, host access refused."""
    if value is None:
        return None
    where = "spec.template"
    if not isinstance(value, Mapping):
        raise SpecError(f"{where} must be a PodTemplateSpec mapping, got {_describe(value)}.")
    _unknown(value, ("metadata", "spec"), f"{where}.")
    meta = value.get("metadata")
    if meta is not None:
        if not isinstance(meta, Mapping):
            raise SpecError(f"{where}.metadata must be a mapping, got {_describe(meta)}.")
        for key in ("labels", "annotations"):
            items = meta.get(key)
            _string_map(items, f"{where}.metadata.{key}")
    pod = value.get("spec")
    if pod is not None:
        if not isinstance(pod, Mapping):
            raise SpecError(f"{where}.spec must be a PodSpec mapping, got {_describe(pod)}.")
        for key in FORBIDDEN_POD_FIELDS:
            if key in pod:
                raise SpecError(
                    f"{where}.spec.{key} is not allowed: worker pods never get host access or "
                    "extra containers."
                )
        for key in _POD_LISTS:
            _list_of_mappings(pod.get(key), f"{where}.spec.{key}")
        for i, volume in enumerate(pod.get("volumes") or []):
            if "hostPath" in volume:
                raise SpecError(
                    f"{where}.spec.volumes[{i}] is a hostPath volume; worker pods may not mount "
                    "the node's files."
                )
        for i, container in enumerate(pod.get("containers") or []):
            for key in _CONTAINER_LISTS:
                _list_of_mappings(container.get(key), f"{where}.spec.containers[{i}].{key}")
    return dict(value)


def _string_map(value: Any, where: str) -> None:
    if value is not None and (
        not isinstance(value, Mapping)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ):
        raise SpecError(f"{where} must be a mapping of strings to strings.")


def _list_of_mappings(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise SpecError(f"{where} must be a list of mappings, got {_describe(value)}.")


def _output(value: str) -> None:
    if not value.strip():
        raise SpecError("spec.output is empty; give a directory, file:// or s3:// URL.")
    scheme = scheme_of(value)
    if scheme is not None and scheme not in OUTPUT_SCHEMES:
        raise SpecError(
            f"spec.output has the scheme {scheme}://, which cannot be written; use s3://, file:// "
            "or a directory path."
        )
    path = value.split("://", 1)[-1]
    if ".." in path.split("/"):
        raise SpecError(f"spec.output must not contain '..', got {value!r}.")
    if scheme == "s3" and not path.split("/", 1)[0]:
        raise SpecError(f"spec.output {value!r} names no bucket; write s3://bucket/prefix/.")


def _storage(value: Any) -> StorageSpec:
    if value is None:
        return StorageSpec()
    if not isinstance(value, Mapping):
        raise SpecError(f"spec.storage must be a mapping, got {_describe(value)}.")
    _unknown(value, STORAGE_FIELDS, "spec.storage.")
    endpoint = _opt_str(value, "endpoint", "spec.storage.")
    if endpoint is not None and scheme_of(endpoint) not in ("http", "https"):
        raise SpecError(
            f"spec.storage.endpoint must be an http:// or https:// URL, got {endpoint!r}."
        )
    secret = _opt_str(value, "secretName", "spec.storage.")
    if secret is not None and (
        len(secret) > 253 or not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?\Z", secret)
    ):
        raise SpecError(
            "spec.storage.secretName must be a Secret name (a lowercase DNS subdomain), "
            f"got {secret!r}."
        )
    return StorageSpec(
        endpoint=endpoint,
        region=_opt_str(value, "region", "spec.storage."),
        secret_name=secret,
    )
