"""Metadata filters: the two accepted forms, and everything that must be refused with a 422."""

from __future__ import annotations

from typing import Any

import pytest

from app.problems import ValidationFailed
from app.vectors.filters import (
    MAX_FILTER_KEYS,
    MAX_IN_VALUES,
    MAX_VALUE_CHARS,
    MetadataMatch,
    check_metadata_key,
    is_reserved,
    parse_filter,
)


def _refused(raw: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        parse_filter(raw)
    assert info.value.status == 422
    assert info.value.code == "validation_error"
    return info.value


# --- accepted forms ------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, {}])
def test_no_filter_means_no_conditions(raw: dict[str, Any] | None) -> None:
    assert parse_filter(raw) == ()


@pytest.mark.parametrize("value", ["eng", "", 7, 0, -3, True, False, "x" * MAX_VALUE_CHARS])
def test_scalar_values_become_single_value_matches(value: str | int | bool) -> None:
    assert parse_filter({"team": value}) == (MetadataMatch("team", (value,)),)


def test_in_form_keeps_values_in_order_and_keys_are_anded() -> None:
    result = parse_filter({"team": {"in": ["eng", "ops", 3, True]}, "year": 2024})
    assert result == (
        MetadataMatch("team", ("eng", "ops", 3, True)),
        MetadataMatch("year", (2024,)),
    )


def test_limits_are_inclusive() -> None:
    raw = {f"k{n}": n for n in range(MAX_FILTER_KEYS)}
    assert len(parse_filter(raw)) == MAX_FILTER_KEYS
    values = list(range(MAX_IN_VALUES))
    assert parse_filter({"k": {"in": values}}) == (MetadataMatch("k", tuple(values)),)


@pytest.mark.parametrize("key", ["a", "Team", "team_name", "team-name", "a1", "A" + "b" * 63])
def test_well_formed_keys_are_accepted(key: str) -> None:
    check_metadata_key(key, where="filter")
    assert parse_filter({key: "v"})[0].key == key


# --- reserved keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["tenant_id", "_bulkhead_acl", "_BULKHEAD_x", "_bulkhead", "_BulkHead_tenant"]
)
def test_reserved_keys_are_refused(key: str) -> None:
    assert is_reserved(key)
    error = _refused({key: "other-tenant"})
    assert error.errors == [{"key": f"filter.{key}", "message": "reserved key"}]
    assert key in error.detail


@pytest.mark.parametrize("key", ["tenant", "tenant_ids", "bulkhead", "my_bulkhead_x", "team"])
def test_lookalike_keys_are_not_reserved(key: str) -> None:
    assert not is_reserved(key)


def test_reserved_key_is_refused_even_among_valid_ones() -> None:
    _refused({"team": "eng", "tenant_id": {"in": ["a", "b"]}})


def test_check_metadata_key_names_the_caller_location() -> None:
    with pytest.raises(ValidationFailed) as info:
        check_metadata_key("_bulkhead_acl", where="documents[2].metadata")
    assert info.value.errors == [{"key": "documents[2].metadata", "message": "reserved key"}]
    assert info.value.detail.startswith("documents[2].metadata:")


# --- malformed keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["a.b", "has space", "1abc", "A" * 65, "", "-lead", "_under", "naïve", "k\n", "tenant_id\n"],
)
def test_malformed_keys_are_refused(key: str) -> None:
    error = _refused({key: "v"})
    assert error.errors == [{"key": f"filter.{key}", "message": "invalid key"}]


# --- operators -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "condition",
    [
        {"$or": [{"a": 1}]},
        {"in": ["a"], "nin": []},
        {"nin": ["a"]},
        {"$ne": "a"},
        {"eq": "a"},
        {},
        {"in": "eng"},
        {"in": {"a": 1}},
        {"IN": ["a"]},
    ],
)
def test_other_operators_and_shapes_are_refused(condition: dict[str, Any]) -> None:
    error = _refused({"team": condition})
    assert error.errors == [{"key": "filter.team", "message": "unknown operator"}]


def test_top_level_or_is_refused_as_a_reserved_looking_key() -> None:
    # `$or` at the top level is just a key, and not a valid one.
    _refused({"$or": [{"team": "eng"}, {"tenant_id": "other"}]})


def test_empty_in_is_refused() -> None:
    error = _refused({"team": {"in": []}})
    assert "filter.team.in" in error.detail


def test_too_many_in_values_are_refused() -> None:
    _refused({"team": {"in": list(range(MAX_IN_VALUES + 1))}})


def test_too_many_keys_are_refused() -> None:
    error = _refused({f"k{n}": n for n in range(MAX_FILTER_KEYS + 1)})
    assert str(MAX_FILTER_KEYS) in error.detail


# --- values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [1.5, 0.0, None, ["eng"], ("eng",), {"nested": {"x": 1}}, b"eng", "x" * 501]
)
def test_bad_scalar_values_are_refused(value: Any) -> None:
    if isinstance(value, dict):
        _refused({"team": value})  # a dict is read as an operator, and refused as one
        return
    error = _refused({"team": value})
    assert error.errors == [{"key": "filter.team", "message": "invalid value"}]


@pytest.mark.parametrize("value", [1.5, None, ["eng"], {"x": 1}, "x" * (MAX_VALUE_CHARS + 1)])
def test_bad_values_inside_in_are_refused(value: Any) -> None:
    error = _refused({"team": {"in": ["ok", value]}})
    assert error.errors == [{"key": "filter.team.in", "message": "invalid value"}]
