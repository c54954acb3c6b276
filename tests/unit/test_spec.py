"""The MapReduceJob manifest: defaults, validation and its error messages.

Covers `kubemr.spec.parse_manifest` and `load_manifest`: a good manifest gets
its defaults; every bad one raises `SpecError` with one sentence that names
the offending field; and no input whatsoever makes the parser raise anything
other than `SpecError`.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobs_support import assert_one_sentence, json_scalars, json_values, spec_bodies

from kubemr.errors import SpecError
from kubemr.spec import (
    API_VERSION,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_SPLIT_SIZE,
    DEFAULT_TASK_TIMEOUT,
    KIND,
    MAX_FILES_BYTES,
    METADATA_FIELDS,
    JobSpec,
    StorageSpec,
    load_manifest,
    parse_manifest,
    scheme_of,
)

DROP = object()
"""A value in `manifest(...)` overrides that removes the field."""


def manifest(metadata: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A minimal valid manifest with `spec` fields overridden (DROP removes one)."""
    body: dict[str, Any] = {"inputs": ["/data/in/"], "map": "cat"}
    for key, value in spec.items():
        if value is DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"generateName": "wc-"} if metadata is None else metadata,
        "spec": body,
    }


def unknown(fields: dict[str, Any]) -> dict[str, Any]:
    """Spec overrides with arbitrary field names, for `manifest(**unknown({...}))`."""
    return fields


def spec_error(doc: Any) -> str:
    """The message of the SpecError `doc` raises, checked to read as one sentence."""
    with pytest.raises(SpecError) as info:
        parse_manifest(doc)
    message = str(info.value)
    assert_one_sentence(message)
    return message


# Good manifests


def test_minimal_manifest_gets_defaults() -> None:
    spec = parse_manifest(manifest())
    assert spec == JobSpec(
        name=None,
        generate_name="wc-",
        namespace=None,
        inputs=("/data/in/",),
        map="cat",
        combine=None,
        reduce=None,
        partitions=1,
        replicas=1,
        files={},
        env={},
        output=None,
        storage=StorageSpec(),
        image=None,
        template=None,
        split_size=DEFAULT_SPLIT_SIZE,
        max_attempts=DEFAULT_MAX_ATTEMPTS,
        task_timeout=DEFAULT_TASK_TIMEOUT,
        separator="\t",
        key_fields=1,
        keep_intermediate=False,
        ttl_seconds_after_finished=None,
    )


def test_full_manifest_is_read_field_by_field() -> None:
    doc = manifest(
        metadata={"name": "wordcount", "namespace": "team-a", "labels": {"a": "b"}},
        replicas=4,
        inputs=["s3://corpus/books/", "https://example.org/a.txt", "customers-shard-17"],
        map="./map.sh",
        combine="./reduce.sh",
        reduce="./reduce.sh",
        partitions=8,
        files={"map.sh": "#!/bin/sh\ntr ' ' '\\n'\n", "reduce.sh": "uniq -c\n"},
        env={"LANG": "C", "DEPTH": 3, "RATIO": 0.5},
        output="s3://results/wordcount/",
        storage={"endpoint": "http://minio:9000", "region": "eu-west-1", "secretName": "aws"},
        image="registry.example/kubemr:1",
        template={"spec": {"nodeSelector": {"pool": "batch"}}},
        splitSize="64Mi",
        maxAttempts=5,
        taskTimeoutSeconds=600,
        separator=",",
        keyFields=2,
        keepIntermediate=True,
        ttlSecondsAfterFinished=0,
    )
    spec = parse_manifest(doc)
    assert spec.name == "wordcount"
    assert spec.generate_name is None
    assert spec.namespace == "team-a"
    assert spec.inputs == ("s3://corpus/books/", "https://example.org/a.txt", "customers-shard-17")
    assert (spec.map, spec.combine, spec.reduce) == ("./map.sh", "./reduce.sh", "./reduce.sh")
    assert (spec.partitions, spec.replicas) == (8, 4)
    assert spec.files == {"map.sh": "#!/bin/sh\ntr ' ' '\\n'\n", "reduce.sh": "uniq -c\n"}
    assert spec.env == {"LANG": "C", "DEPTH": "3", "RATIO": "0.5"}
    assert spec.output == "s3://results/wordcount/"
    assert spec.storage == StorageSpec("http://minio:9000", "eu-west-1", "aws")
    assert spec.image == "registry.example/kubemr:1"
    assert spec.template == {"spec": {"nodeSelector": {"pool": "batch"}}}
    assert spec.split_size == 64 * 1024**2
    assert (spec.max_attempts, spec.task_timeout) == (5, 600)
    assert (spec.separator, spec.key_fields) == (",", 2)
    assert spec.keep_intermediate is True
    assert spec.ttl_seconds_after_finished == 0


def test_image_only_manifest_needs_no_commands() -> None:
    """The original kubemr's minimal manifest: commands come from the image's KUBEMR_* env."""
    spec = parse_manifest(manifest(map=DROP, image="wrapper:1", replicas=2))
    assert spec.map is None and spec.reduce is None
    # Without a map command in the manifest, the image may bring a reducer, so these stand.
    spec = parse_manifest(manifest(map=DROP, image="wrapper:1", partitions=3, combine="c"))
    assert spec.partitions == 3 and spec.combine == "c"


def test_status_is_ignored() -> None:
    doc = manifest()
    doc["status"] = {"phase": "Mapping"}
    assert parse_manifest(doc).map == "cat"


def test_metadata_may_be_missing_or_null() -> None:
    doc = manifest()
    del doc["metadata"]
    assert parse_manifest(doc).name is None
    doc["metadata"] = None
    assert parse_manifest(doc).name is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1024, 1024),
        ("64Mi", 64 * 1024**2),
        ("64mi", 64 * 1024**2),
        ("1G", 10**9),
        ("1Gi", 1024**3),
        ("2k", 2000),
        ("2Ki", 2048),
        ("100MB", 100 * 1000**2),
        (" 8 Mi ", 8 * 1024**2),
        ("4096", 4096),
        ("64Gi", 64 * 1024**3),
    ],
)
def test_split_size_quantities(value: Any, expected: int) -> None:
    assert parse_manifest(manifest(splitSize=value)).split_size == expected


@pytest.mark.parametrize("separator", [",", " ", "|", "\x01", ":"])
def test_separators(separator: str) -> None:
    assert parse_manifest(manifest(separator=separator)).separator == separator


@pytest.mark.parametrize(
    "inputs",
    [
        ["s3://bucket/prefix/"],
        ["S3://bucket/key"],
        ["file:///data/x.txt"],
        ["http://example.org/a"],
        ["/abs/path", "relative/path", "opaque shard 7", "user@host:thing"],
    ],
)
def test_good_inputs(inputs: list[str]) -> None:
    assert parse_manifest(manifest(inputs=inputs)).inputs == tuple(inputs)


@pytest.mark.parametrize(
    ("output", "scheme"),
    [("s3://bucket/out/", "s3"), ("file:///tmp/out", "file"), ("out/dir", None), ("/abs", None)],
)
def test_good_outputs(output: str, scheme: str | None) -> None:
    assert parse_manifest(manifest(output=output)).output == output
    assert scheme_of(output) == scheme


def test_files_at_the_size_limit_are_accepted() -> None:
    text = "x" * (MAX_FILES_BYTES - len("big.txt"))
    assert parse_manifest(manifest(files={"big.txt": text})).files["big.txt"] == text


def test_parse_does_not_change_the_manifest() -> None:
    doc = manifest(files={"a": "b"}, env={"X": 1}, template={"spec": {}})
    before = copy.deepcopy(doc)
    parse_manifest(doc)
    assert doc == before


# Bad manifests: each error names the field


BAD_SPECS: list[tuple[str, dict[str, Any], list[str]]] = [
    # inputs
    ("missing inputs", {"inputs": DROP}, ["spec.inputs", "missing"]),
    ("null inputs", {"inputs": None}, ["spec.inputs", "missing"]),
    ("empty inputs", {"inputs": []}, ["spec.inputs", "empty"]),
    ("string inputs", {"inputs": "s3://b/k"}, ["spec.inputs", "list", "[s3://b/k]"]),
    ("multi-line string inputs", {"inputs": "a\nb"}, ["spec.inputs", "list"]),
    ("mapping inputs", {"inputs": {"a": 1}}, ["spec.inputs", "list", "mapping"]),
    ("number in inputs", {"inputs": ["/a", 7]}, ["spec.inputs[1]", "string", "7"]),
    ("blank input", {"inputs": ["/a", "  "]}, ["spec.inputs[1]", "empty"]),
    ("newline in input", {"inputs": ["a\nb"]}, ["spec.inputs[0]", "newline"]),
    ("NUL in input", {"inputs": ["a\x00b"]}, ["spec.inputs[0]", "NUL"]),
    ("unknown scheme", {"inputs": ["/a", "gs://bucket/x"]}, ["spec.inputs[1]", "gs://"]),
    ("ftp scheme", {"inputs": ["ftp://host/x"]}, ["spec.inputs[0]", "ftp://", "s3://"]),
    # commands
    ("map not a string", {"map": ["cat"]}, ["spec.map", "shell command", "list"]),
    ("empty map", {"map": "  "}, ["spec.map", "empty"]),
    ("NUL in reduce", {"reduce": "cat\x00"}, ["spec.reduce", "NUL"]),
    ("reduce a number", {"reduce": 3}, ["spec.reduce", "the number 3"]),
    ("combine without reduce", {"combine": "sort"}, ["spec.combine", "spec.reduce"]),
    ("partitions without reduce", {"partitions": 4}, ["spec.partitions", "spec.reduce"]),
    # integers
    ("zero partitions", {"reduce": "cat", "partitions": 0}, ["spec.partitions", "1 to", "got 0"]),
    ("negative partitions", {"reduce": "cat", "partitions": -2}, ["spec.partitions", "got -2"]),
    ("huge partitions", {"reduce": "cat", "partitions": 10**6}, ["spec.partitions", "10000"]),
    ("bool partitions", {"reduce": "cat", "partitions": True}, ["spec.partitions", "boolean"]),
    ("float partitions", {"reduce": "cat", "partitions": 2.5}, ["spec.partitions", "2.5"]),
    ("string partitions", {"reduce": "cat", "partitions": "4"}, ["spec.partitions", "'4'"]),
    ("zero replicas", {"replicas": 0}, ["spec.replicas", "got 0"]),
    ("huge replicas", {"replicas": 5000}, ["spec.replicas", "1000"]),
    ("bool replicas", {"replicas": False}, ["spec.replicas", "boolean false"]),
    ("zero maxAttempts", {"maxAttempts": 0}, ["spec.maxAttempts", "got 0"]),
    ("huge maxAttempts", {"maxAttempts": 101}, ["spec.maxAttempts", "100"]),
    ("bool maxAttempts", {"maxAttempts": True}, ["spec.maxAttempts", "boolean true"]),
    ("zero timeout", {"taskTimeoutSeconds": 0}, ["spec.taskTimeoutSeconds", "got 0"]),
    ("negative timeout", {"taskTimeoutSeconds": -1}, ["spec.taskTimeoutSeconds"]),
    ("huge timeout", {"taskTimeoutSeconds": 10**9}, ["spec.taskTimeoutSeconds"]),
    ("string timeout", {"taskTimeoutSeconds": "1h"}, ["spec.taskTimeoutSeconds", "'1h'"]),
    ("zero keyFields", {"keyFields": 0}, ["spec.keyFields"]),
    ("unknown codec", {"mapOutputCompression": "lz4"}, ["spec.mapOutputCompression", "'lz4'"]),
    ("bool codec", {"mapOutputCompression": True}, ["spec.mapOutputCompression"]),
    (
        "unknown results codec",
        {"outputCompression": "bzip2"},
        ["spec.outputCompression", "'bzip2'"],
    ),
    (
        "partitionFields beyond keyFields",
        {"keyFields": 2, "partitionFields": 3},
        ["spec.partitionFields must be at most spec.keyFields (2), got 3"],
    ),
    ("zero linesPerMap", {"linesPerMap": 0}, ["spec.linesPerMap", "got 0"]),
    ("string linesPerMap", {"linesPerMap": "10"}, ["spec.linesPerMap", "'10'"]),
    ("bool results codec", {"outputCompression": False}, ["spec.outputCompression"]),
    ("negative ttl", {"ttlSecondsAfterFinished": -5}, ["spec.ttlSecondsAfterFinished"]),
    ("string ttl", {"ttlSecondsAfterFinished": "1d"}, ["spec.ttlSecondsAfterFinished"]),
    # splitSize
    ("bad splitSize unit", {"splitSize": "64 parsecs"}, ["spec.splitSize", "64Mi"]),
    ("splitSize word", {"splitSize": "big"}, ["spec.splitSize"]),
    ("negative splitSize", {"splitSize": -1}, ["spec.splitSize", "1Ki"]),
    ("tiny splitSize", {"splitSize": 10}, ["spec.splitSize", "1Ki", "10 bytes"]),
    ("tiny splitSize string", {"splitSize": "1k"}, ["spec.splitSize", "1000 bytes"]),
    ("huge splitSize", {"splitSize": "1Ti"}, ["spec.splitSize", "64Gi"]),
    ("bool splitSize", {"splitSize": True}, ["spec.splitSize"]),
    ("float splitSize", {"splitSize": 1.5e6}, ["spec.splitSize"]),
    ("list splitSize", {"splitSize": [64]}, ["spec.splitSize", "list"]),
    ("overlong digits splitSize", {"splitSize": "9" * 5000}, ["spec.splitSize"]),
    # files
    ("files a list", {"files": ["map.sh"]}, ["spec.files", "mapping"]),
    ("files key with slash", {"files": {"bin/map.sh": "x"}}, ["spec.files", "bin/map.sh"]),
    ("files key dotdot", {"files": {"..": "x"}}, ["spec.files", "'..'"]),
    ("files key dot", {"files": {".": "x"}}, ["spec.files", "'.'"]),
    ("files key traversal", {"files": {"../etc": "x"}}, ["spec.files", "../etc"]),
    ("files key empty", {"files": {"": "x"}}, ["spec.files", "''"]),
    ("files key newline", {"files": {"map.sh\n": "x"}}, ["spec.files", "map.sh"]),
    ("files key a number", {"files": {3: "x"}}, ["spec.files", "3"]),
    ("files value a number", {"files": {"n": 3}}, ["spec.files.n", "text"]),
    ("files value a mapping", {"files": {"n": {"a": 1}}}, ["spec.files.n", "text", "mapping"]),
    ("files value binary", {"files": {"n": b"\x00\x01"}}, ["spec.files.n", "text"]),
    ("files value NUL", {"files": {"n": "a\x00b"}}, ["spec.files.n", "NUL"]),
    ("files too big", {"files": {"big": "x" * MAX_FILES_BYTES}}, ["spec.files", "bytes"]),
    (
        "files too big together",
        {"files": {f"f{i}": "y" * (MAX_FILES_BYTES // 4) for i in range(5)}},
        ["spec.files", "storage"],
    ),
    # env
    ("env a list", {"env": ["A=1"]}, ["spec.env", "mapping"]),
    ("env reserved", {"env": {"KUBEMR_INPUT": "x"}}, ["spec.env", "KUBEMR_INPUT", "reserved"]),
    ("env reserved map", {"env": {"KUBEMR_MAP": "x"}}, ["spec.env", "KUBEMR_MAP"]),
    ("env bad name", {"env": {"1ABC": "x"}}, ["spec.env", "1ABC"]),
    ("env name with =", {"env": {"A=B": "x"}}, ["spec.env", "A=B"]),
    ("env name newline", {"env": {"A\n": "x"}}, ["spec.env", "not a valid"]),
    ("env bool value", {"env": {"A": True}}, ["spec.env.A", "string"]),
    ("env NUL", {"env": {"A": "x\0y"}}, ["spec.env.A", "NUL"]),
    ("env null", {"env": {"A": None}}, ["spec.env.A", "got null"]),
    ("env list value", {"env": {"A": [1]}}, ["spec.env.A", "list"]),
    ("env null value", {"env": {"A": None}}, ["spec.env.A"]),
    # output
    ("output dotdot", {"output": "out/../../etc"}, ["spec.output", ".."]),
    ("output s3 dotdot", {"output": "s3://b/x/../y"}, ["spec.output", ".."]),
    ("output http", {"output": "http://example.org/out"}, ["spec.output", "http://"]),
    ("output https", {"output": "https://example.org/out"}, ["spec.output", "https://"]),
    ("output empty", {"output": " "}, ["spec.output", "empty"]),
    ("output no bucket", {"output": "s3:///prefix/"}, ["spec.output", "bucket"]),
    ("output a number", {"output": 5}, ["spec.output", "string"]),
    # storage
    ("storage a string", {"storage": "minio"}, ["spec.storage", "mapping"]),
    ("storage unknown field", {"storage": {"endpiont": "x"}}, ["spec.storage.endpoint"]),
    ("storage endpoint scheme", {"storage": {"endpoint": "minio:9000"}}, ["storage.endpoint"]),
    ("storage endpoint s3", {"storage": {"endpoint": "s3://x"}}, ["spec.storage.endpoint"]),
    ("storage bad secret", {"storage": {"secretName": "My_Secret"}}, ["storage.secretName"]),
    ("storage secret nl", {"storage": {"secretName": "aws\n"}}, ["storage.secretName"]),
    ("storage region number", {"storage": {"region": 1}}, ["spec.storage.region", "string"]),
    # others
    ("image empty", {"image": " "}, ["spec.image", "empty"]),
    ("image a number", {"image": 1}, ["spec.image", "string"]),
    ("template a list", {"template": []}, ["spec.template", "PodTemplateSpec"]),
    ("separator empty", {"separator": ""}, ["spec.separator", "''"]),
    ("separator two chars", {"separator": "::"}, ["spec.separator", "'::'"]),
    ("separator newline", {"separator": "\n"}, ["spec.separator", "newline"]),
    ("separator multibyte", {"separator": "é"}, ["spec.separator", "one-byte"]),
    ("separator a number", {"separator": 1}, ["spec.separator", "string"]),
    ("keepIntermediate string", {"keepIntermediate": "yes"}, ["spec.keepIntermediate"]),
    ("keepIntermediate int", {"keepIntermediate": 1}, ["spec.keepIntermediate", "true or false"]),
]


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [pytest.param(o, n, id=name) for name, o, n in BAD_SPECS],
)
def test_bad_spec_names_the_field(overrides: dict[str, Any], needles: list[str]) -> None:
    message = spec_error(manifest(**overrides))
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


@pytest.mark.parametrize(
    ("field", "typo"),
    [("partitions", "partitons"), ("replicas", "replica"), ("taskTimeoutSeconds", "taskTimeout")],
)
def test_unknown_spec_field_suggests_the_right_one(field: str, typo: str) -> None:
    message = spec_error(manifest(**unknown({typo: 1})))
    assert f"spec.{typo} is not a known field" in message
    assert message.endswith(f"; did you mean spec.{field}?")


def test_unknown_field_without_a_close_match_lists_the_known_ones() -> None:
    message = spec_error(manifest(zzzzzz=1))
    assert "spec.zzzzzz" in message
    assert "known fields:" in message and "inputs" in message
    assert message.endswith(".") and not message.endswith("..")


def test_unknown_field_name_with_a_newline_stays_one_line() -> None:
    message = spec_error(manifest(**unknown({"parti\ntions": 1})))
    assert message == "spec.'parti\\ntions' is not a known field; did you mean spec.partitions?"
    message = spec_error(manifest(**unknown({"x" * 500: 1})))
    assert "not a known field" in message and "\n" not in message
    assert "x" * 100 not in message  # the name is clipped; the known fields follow it


def test_unknown_metadata_and_top_level_fields() -> None:
    message = spec_error(manifest(metadata={"nmae": "wc"}))
    assert message == "metadata.nmae is not a known field; did you mean metadata.name?"
    doc = manifest()
    doc["sepc"] = {}
    message = spec_error(doc)
    assert message == "sepc is not a known field; did you mean spec?"


@pytest.mark.parametrize(
    ("metadata", "needle"),
    [
        ({"name": "WordCount"}, "metadata.name"),
        ({"name": "word_count"}, "metadata.name"),
        ({"name": "-wc"}, "metadata.name"),
        ({"name": "wc-"}, "metadata.name"),
        ({"name": ""}, "metadata.name"),
        ({"name": "a" * 64}, "metadata.name"),
        ({"name": "wc\n"}, "metadata.name"),
        ({"name": 12}, "metadata.name"),
        ({"generateName": ""}, "metadata.generateName"),
        ({"generateName": "Word-"}, "metadata.generateName"),
        ({"generateName": "-"}, "metadata.generateName"),
        ({"generateName": "---"}, "metadata.generateName"),
        ({"generateName": "-wc-"}, "metadata.generateName"),
        ({"generateName": "a" * 59}, "metadata.generateName"),
        ({"generateName": ["wc-"]}, "metadata.generateName"),
        ({"namespace": "Team A"}, "metadata.namespace"),
    ],
)
def test_bad_metadata(metadata: dict[str, Any], needle: str) -> None:
    assert needle in spec_error(manifest(metadata=metadata))


@pytest.mark.parametrize("name", ["wc", "a" * 63, "word-count-2", "0abc"])
def test_good_names(name: str) -> None:
    assert parse_manifest(manifest(metadata={"name": name})).name == name


@pytest.mark.parametrize("prefix", ["wc-", "wc", "a" * 58, "word-count-"])
def test_good_generate_names(prefix: str) -> None:
    assert parse_manifest(manifest(metadata={"generateName": prefix})).generate_name == prefix


@pytest.mark.parametrize("metadata", [[], "wc", 0, ["name"]])
def test_metadata_must_be_a_mapping(metadata: Any) -> None:
    assert "metadata" in spec_error(manifest(metadata=metadata))


def test_top_level_shape() -> None:
    assert "apiVersion" in spec_error({**manifest(), "apiVersion": "v1"})
    assert "apiVersion" in spec_error({k: v for k, v in manifest().items() if k != "apiVersion"})
    assert "kind" in spec_error({**manifest(), "kind": "Job"})
    assert "spec is missing" in spec_error({**manifest(), "spec": None})
    assert "spec must be a mapping" in spec_error({**manifest(), "spec": ["inputs"]})
    assert "mapping" in spec_error(["apiVersion"])
    assert "mapping" in spec_error("kind: MapReduceJob")


# load_manifest


def test_load_manifest_reads_one_document() -> None:
    text = """
apiVersion: kubemr.io/v1alpha1
kind: MapReduceJob
metadata: {name: wc}
spec:
  inputs: [/data/]
  map: cat
  splitSize: 64Mi
"""
    assert parse_manifest(load_manifest(text)).split_size == 64 * 1024**2


def test_load_manifest_skips_empty_documents() -> None:
    text = "---\napiVersion: kubemr.io/v1alpha1\nkind: MapReduceJob\nspec: {}\n---\n"
    assert load_manifest(text)["kind"] == "MapReduceJob"


def load_error(text: str, source: str = "job.yaml") -> str:
    with pytest.raises(SpecError) as info:
        load_manifest(text, source)
    message = str(info.value)
    assert_one_sentence(message)
    assert source in message
    return message


def test_load_manifest_refuses_several_documents() -> None:
    message = load_error("kind: A\n---\nkind: B\n")
    assert "2 YAML documents" in message


def test_load_manifest_refuses_invalid_yaml_with_a_line_number() -> None:
    message = load_error("spec:\n  inputs: [a, b\n  map: cat\n")
    assert "not valid YAML" in message and "line" in message


@pytest.mark.parametrize("text", ["", "   \n", "---\n", "# only a comment\n"])
def test_load_manifest_refuses_empty_text(text: str) -> None:
    assert "empty" in load_error(text)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_load_manifest_refuses_non_mappings(text: str) -> None:
    assert "mapping" in load_error(text)


def test_load_manifest_refuses_tabs_and_unhashable_keys() -> None:
    load_error("spec:\n\tinputs: [a]\n")
    load_error("? [a, b]\n: c\n")


def test_load_manifest_refuses_unreadable_values() -> None:
    assert "cannot be read" in load_error("spec:\n  replicas: " + "9" * 5000 + "\n")
    assert "month" in load_error("metadata:\n  creationTimestamp: 2024-13-45\n")


def test_load_manifest_refuses_absurd_nesting() -> None:
    assert "nests too deeply" in load_error("spec: " + "[" * 600 + "]" * 600 + "\n")


# Nothing but SpecError, whatever the input

manifests = st.fixed_dictionaries(
    {
        "apiVersion": st.just(API_VERSION) | json_scalars,
        "kind": st.just(KIND) | json_scalars,
        "spec": spec_bodies | json_values,
    },
    optional={
        "metadata": st.dictionaries(st.sampled_from(METADATA_FIELDS), json_scalars, max_size=3)
        | json_values,
        "extra": json_values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(manifests, json_values))
def test_parse_manifest_raises_only_spec_error(doc: Any) -> None:
    try:
        spec = parse_manifest(doc)
    except SpecError as exc:
        assert_one_sentence(str(exc))
    else:
        assert isinstance(spec, JobSpec)
        assert spec.inputs and all(isinstance(i, str) and i.strip() for i in spec.inputs)
        assert spec.partitions >= 1 and spec.replicas >= 1 and spec.max_attempts >= 1


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_load_manifest_raises_only_spec_error(text: str) -> None:
    try:
        doc = load_manifest(text)
    except SpecError as exc:
        assert_one_sentence(str(exc))
    else:
        assert isinstance(doc, dict)


# Hostile documents


def billion_laughs(levels: int) -> str:
    """A few lines of YAML whose aliases expand to 9**levels strings."""
    lines = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return (
        "apiVersion: kubemr.io/v1alpha1\nkind: MapReduceJob\nspec:\n  inputs: [a]\n  map: cat\n"
        "  template:\n    metadata:\n      annotations: {}\n  env: {}\nmetadata:\n  labels:\n"
        + "\n".join("  " + line for line in lines)
        + "\n"
    )


def test_load_manifest_refuses_alias_bombs() -> None:
    with pytest.raises(SpecError) as info:
        load_manifest(billion_laughs(8))
    assert "expands to more than" in str(info.value)
    assert_one_sentence(str(info.value))


def test_the_value_budget_fits_the_largest_input_list() -> None:
    from kubemr import spec

    doc = manifest(inputs=[f"s3://b/{i}" for i in range(spec.MAX_INPUTS)], files={"a": "b"})
    assert spec._values(doc, spec.MAX_VALUES) <= spec.MAX_VALUES


@pytest.mark.parametrize("key", ["labels", "annotations"])
def test_labels_and_annotations_are_maps_of_strings(key: str) -> None:
    message = spec_error(manifest(metadata={"name": "a", key: {"a": ["lol"]}}))
    assert f"metadata.{key}" in message


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("-k2,2nr -k1,1", ("-k2,2nr", "-k1,1")),
        ("-r -k1", ("-k1,2r",)),
        ("-n -k 2,2 -k1,1r", ("-k2,2n", "-k1,1r")),
        ("-k1.2,1.3", ("-k1.2,1.3",)),
        ("", ()),
    ],
)
def test_key_comparators_become_gnu_sort_keys_within_the_key(
    text: str, keys: tuple[str, ...]
) -> None:
    spec = parse_manifest(manifest(reduce="cat", keyFields=2, keyComparator=text))
    assert spec.key_comparator == keys
