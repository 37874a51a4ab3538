"""The model and the CRD accept exactly the same documents (issue 13), checked on documents
generated from the CRD's own schema.

Each node of the schema yields mostly values it allows (patterns through ``from_regex``,
numbers around their bounds, enums, optional fields present or not, list items around
``minItems``), sometimes a near miss (a bound crossed, a control character, a required
field dropped, an unknown field, null) and sometimes a value of another JSON type. Every
document is judged by ``parse_batch`` (what local mode and the operator use) and by
``tests/crd_validator.py`` (the API server's stand-in); the two verdicts must be equal.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sierra_operator.core.model import API_VERSION, COMMAND_PATTERN, KIND, SpecError, parse_batch
from tests.crd_validator import crd_errors, spec_schema

pytestmark = pytest.mark.unit

EXAMPLES = 1500
ODDS = 40
SCHEMA = spec_schema()

# Text with what breaks naive checks: control characters, line breaks of all kinds, a BOM,
# brackets (Rich markup), dots and slashes (paths), non-ASCII. No lone surrogates: JSON
# from the API server cannot hold one (the model's refusal of them is tested elsewhere).
CHARACTERS = st.one_of(
    st.sampled_from(list("ab0-._/ \t\n\r\x00\x0b\x0c\x1b\x7f\x85\u2028\ufeff[]:é")),
    st.characters(codec="utf-8", exclude_categories=["Cs"]),
)
TEXT = st.text(CHARACTERS, max_size=8)
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["a", "name", ""]), st.integers(0, 3), max_size=2),
)
SPECIAL_STRINGS: dict[str, list[str]] = {
    "commandsFile": [
        "p/b/commands.txt",
        ".",
        "..",
        "../x",
        "a/..",
        "a/../b",
        "a/..b",
        "..a/b",
        "/abs",
        "a//..",
        "a\n..",
        "x" * 4097,
    ],
    COMMAND_PATTERN: ["", " ", "\t", "\n", " \n", "a\x00", "a\n", "a\r", "\x85", "a\tb", "\u2028"],
}


def sometimes(valid: st.SearchStrategy[Any], wrong: st.SearchStrategy[Any]) -> Any:
    """Mostly ``valid``, one time in :data:`ODDS` ``wrong``: a document has dozens of values,
    and about one in ten documents should be valid to check both verdicts."""
    # Not 0 nor a bound: hypothesis draws those far more often than 1 / ODDS.
    return st.integers(0, ODDS - 1).flatmap(lambda k: wrong if k == ODDS // 2 + 3 else valid)


def strings(node: dict[str, Any], name: str) -> st.SearchStrategy[Any]:
    good: list[st.SearchStrategy[Any]] = []
    bad: list[st.SearchStrategy[Any]] = [TEXT]
    if "enum" in node:
        good.append(st.sampled_from(node["enum"]))
        bad.append(st.sampled_from([e.lower() for e in node["enum"]]))
    if "pattern" in node:
        good.append(st.from_regex(node["pattern"], fullmatch=True))
        bad.append(st.sampled_from(SPECIAL_STRINGS.get(node["pattern"], ["", "a\n"])))
    if name in SPECIAL_STRINGS:
        good.append(st.sampled_from(SPECIAL_STRINGS[name]))
        good.append(st.text(st.sampled_from("./ab"), min_size=1, max_size=8))
        bad.append(st.text(st.sampled_from("./ab\n"), max_size=8))
    if not good:
        good.append(st.sampled_from(["x", "localhost:5001/x", "--flag", "a b"]))
        bad.append(st.just(""))
    return sometimes(st.one_of(good), st.one_of(bad))


def integers(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    low, high = node.get("minimum", -(2**63)), node.get("maximum", 2**63 - 1)
    good = st.one_of(
        st.integers(low, min(high, low + 5)),
        st.sampled_from([low, high]),
        st.integers(low, min(high, low + 5)).map(float),
    )
    bad = st.one_of(
        st.sampled_from([low - 1, high + 1, 2**63, -(2**63) - 1, low + 0.5, 1e300]),
        st.sampled_from([float("inf"), float("nan"), True, False, str(low)]),
    )
    return sometimes(good, bad)


def arrays(node: dict[str, Any], name: str) -> st.SearchStrategy[Any]:
    low = node.get("minItems", 0)
    items = value(node.get("items", {}), name)
    good = st.lists(items, min_size=low, max_size=low + 2)
    bad = st.lists(items, max_size=max(low - 1, 0))
    if "maxItems" in node:
        over = items.map(lambda item: [copy.deepcopy(item) for _ in range(node["maxItems"] + 1)])
        bad = st.one_of(bad, over)
    return sometimes(good, bad)


def objects(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "additionalProperties" in node:
        keys = st.one_of(st.sampled_from(["cpu", "memory", "A", "nvidia.com/gpu", ""]), TEXT)
        return st.dictionaries(keys, value(node["additionalProperties"], ""), max_size=3)
    props = node.get("properties", {})
    required = set(node.get("required", []))
    good = st.fixed_dictionaries(
        {k: value(v, k) for k, v in props.items() if k in required},
        optional={k: value(v, k) for k, v in props.items() if k not in required},
    )
    dropped = good.flatmap(
        lambda d: st.sampled_from([None, *d]).map(lambda k: {x: v for x, v in d.items() if x != k})
    )
    extra = good.map(lambda d: {**d, "unknownField": 1})
    # A camelCase field under its Python name (sierra_root): as unknown to the API server.
    renamed = good.flatmap(
        lambda d: st.sampled_from([None, *(k for k in d if k.lower() != k)]).map(
            lambda k: d if k is None else python_name(d, k)
        )
    )
    return sometimes(good, st.one_of(dropped, extra, renamed))


def python_name(fields: dict[str, Any], key: str) -> dict[str, Any]:
    """``fields`` with ``key`` (camelCase) under its snake_case name instead."""
    out = {k: v for k, v in fields.items() if k != key}
    out[re.sub("([A-Z])", r"_\1", key).lower()] = fields[key]
    return out


def value(node: dict[str, Any], name: str) -> st.SearchStrategy[Any]:
    """Values for one schema node: mostly of its type, sometimes of another."""
    kind = node.get("type")
    if kind == "object":
        valid = objects(node)
    elif kind == "array":
        valid = arrays(node, name)
    elif kind == "string":
        valid = strings(node, name)
    elif kind == "integer":
        valid = integers(node)
    elif kind == "boolean":
        valid = sometimes(st.booleans(), st.sampled_from(["true", "yes", 1, 0]))
    else:
        return JUNK
    return sometimes(valid, JUNK)


NAMES = sometimes(
    st.one_of(
        st.from_regex(r"[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?", fullmatch=True),
        st.sampled_from(["demo", "a" * 63]),
    ),
    st.sampled_from(["a.b", "Demo", "a" * 64, "-a", "", "a_b", "a\n"]),
)
SOURCES = ("experiments", "commandsFile", "sierra")


def one_source(spec: Any) -> st.SearchStrategy[Any]:
    """Mostly a spec with one source of experiments (left alone, three optional sources make
    one in three specs valid), sometimes none or two."""
    if not isinstance(spec, dict) or not any(k in spec for k in SOURCES):
        return st.just(spec)
    kept = st.sampled_from([k for k in SOURCES if k in spec])
    single = kept.map(lambda k: {x: v for x, v in spec.items() if x == k or x not in SOURCES})
    return sometimes(single, st.just(spec))


MISSING = object()
METADATA = st.fixed_dictionaries(
    {
        "name": sometimes(NAMES, JUNK),
        "namespace": sometimes(st.just(MISSING), st.sampled_from(["default", 1])),
        "labels": sometimes(st.just(MISSING), st.sampled_from([{"app": "x"}, {"app": 1}])),
        "generation": sometimes(st.just(MISSING), st.sampled_from([3, 2**63, -1, True, 1.0])),
        "lables": sometimes(st.just(MISSING), st.just({})),
        "generate_name": sometimes(st.just(MISSING), st.just("x-")),
    }
)
DOCUMENTS = st.fixed_dictionaries(
    {
        "apiVersion": sometimes(st.just(API_VERSION), st.sampled_from(["v1", "", None, MISSING])),
        "kind": sometimes(st.just(KIND), st.sampled_from(["Batch", "sierrabatch", 1, MISSING])),
        "metadata": sometimes(METADATA, JUNK),
        "spec": value(SCHEMA["properties"]["spec"], "spec").flatmap(one_source),
        "extra": sometimes(st.just(MISSING), JUNK),
    }
)


def without_missing(document: Any) -> Any:
    """The document with every MISSING field left out."""
    if isinstance(document, dict):
        return {k: without_missing(v) for k, v in document.items() if v is not MISSING}
    return document


def model_accepts(document: dict[str, Any]) -> tuple[bool, str]:
    try:
        parse_batch(document)
    except SpecError as exc:
        return False, str(exc)
    return True, ""


def test_model_and_crd_accept_exactly_the_same_documents(capsys):
    counts = {"cases": 0, "accepted": 0, "rejected": 0}

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(DOCUMENTS)
    def check(document: dict[str, Any]) -> None:
        document = without_missing(document)
        by_crd = crd_errors(copy.deepcopy(document))
        by_model, message = model_accepts(copy.deepcopy(document))
        assert by_model == (not by_crd), (
            f"model {'accepts' if by_model else 'rejects'} ({message}), CRD "
            f"{'rejects (' + '; '.join(by_crd) + ')' if by_crd else 'accepts'}: {document!r}"
        )
        counts["cases"] += 1
        counts["accepted" if by_model else "rejected"] += 1

    check()
    with capsys.disabled():
        print(f"\nmodel vs CRD: {counts}")
    assert counts["accepted"] >= EXAMPLES // 20, counts
    assert counts["rejected"] >= EXAMPLES // 20, counts
