"""The apply diff and the YAML line map behind `bulkhead tenants apply`."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.tenancy.diff import manifest_diff
from app.tenancy.manifest import ManifestError, load_manifest
from app.tenancy.sourcemap import YamlSourceMap


def test_diff_reports_leaf_changes_additions_and_removals() -> None:
    old = {"limits": {"rpm": 600}, "llm": {"chain": [{"provider": "openai"}]}, "gone": 1}
    new = {
        "limits": {"rpm": 100},
        "llm": {"chain": [{"provider": "openai"}, {"provider": "local"}]},
    }
    rendered = [c.render() for c in manifest_diff(old, new)]
    assert rendered == [
        "- gone: 1",
        "~ limits.rpm: 600 -> 100",
        '+ llm.chain[1].provider: "local"',
    ]


def test_diff_is_generic_over_fields_it_has_never_seen() -> None:
    # A field added to the manifest model later shows up without changes to the diff.
    old = {"id": "acme"}
    new = {"id": "acme", "privacy": {"future_field": {"nested": [1, 2]}}}
    assert [c.render() for c in manifest_diff(old, new)] == [
        "+ privacy.future_field.nested[0]: 1",
        "+ privacy.future_field.nested[1]: 2",
    ]


def test_no_change_no_diff() -> None:
    same = {"id": "acme", "llm": {"chain": []}}
    assert manifest_diff(same, same) == []


def test_source_map_lines() -> None:
    lines = YamlSourceMap.parse("id: a\nllm:\n  chain:\n    - provider: openai\n      model: x\n")
    assert lines.line(["id"]) == 1
    assert lines.line(["llm", "chain", 0, "model"]) == 5
    assert lines.line(["llm", "chain", 0, "secret"]) == 4  # missing: its parent's line


def test_load_manifest_errors_name_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(
        "id: acme\nname: Acme\nnetwork:\n  allowed_cidrs:\n    - 10.0.0.0/8\n    - nope\n"
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value).startswith(f"{path}:6: network/allowed_cidrs/1: ")
