"""Secret values stay redacted, refs stay in their tenant, and the KEK loads safely."""

from __future__ import annotations

import base64
import logging
import os
import stat
from typing import TYPE_CHECKING

import pytest

from app.config import SecretsSettings, Settings
from app.secrets.kek import MasterKeyInvalid, MasterKeyMissing, kek_id, load_master_key
from app.secrets.values import SecretAccessDenied, SecretRef, SecretValue, ensure_ref_allowed
from app.tenancy.scope import TenantScope

if TYPE_CHECKING:
    from pathlib import Path

PLAINTEXT = "sk-live-0123456789abcdef"
REDACTED = "SecretValue('**********')"


def _scope(tenant_id: str) -> TenantScope:
    return TenantScope(tenant_id=tenant_id, subject="tester", roles=frozenset())


def _settings(tmp_path: Path, *, dev: bool, master_key: str | None = None) -> Settings:
    return Settings(
        dev=dev,
        data_dir=tmp_path / "data",
        secrets=SecretsSettings(master_key=master_key),
    )


# --- SecretValue ---------------------------------------------------------------------------


def test_secret_value_is_redacted_everywhere_it_could_be_printed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    value = SecretValue(PLAINTEXT)
    caplog.set_level(logging.INFO)
    logging.getLogger("test").info("using %s / %r", value, value)
    logging.getLogger("test").info("as dict %s", {"key": value})

    rendered = [repr(value), str(value), f"{value}", f"{value!r}", f"{value:>40}", str([value])]
    rendered.append(caplog.text)
    for text in rendered:
        assert PLAINTEXT not in text
    assert repr(value) == str(value) == f"{value}" == REDACTED
    assert REDACTED in caplog.text
    assert value.reveal() == PLAINTEXT


def test_secret_value_compares_by_content_and_is_unhashable() -> None:
    assert SecretValue(PLAINTEXT) == SecretValue(PLAINTEXT)
    assert SecretValue(PLAINTEXT) != SecretValue(PLAINTEXT + "x")
    assert SecretValue(PLAINTEXT) != PLAINTEXT
    with pytest.raises(TypeError):
        hash(SecretValue(PLAINTEXT))


# --- SecretRef -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tenant_id", "name"),
    [
        ("tenants/acme/openai", "acme", "openai"),
        ("tenants/acme-eu-2/anthropic.key_v2", "acme-eu-2", "anthropic.key_v2"),
        ("platform/openai-shared", None, "openai-shared"),
    ],
)
def test_secret_ref_parses_and_round_trips(text: str, tenant_id: str | None, name: str) -> None:
    ref = SecretRef.parse(text)
    assert (ref.tenant_id, ref.name) == (tenant_id, name)
    assert str(ref) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "acme/openai",
        "tenants/acme",
        "tenants/acme/",
        "tenants/Acme/openai",
        "tenants/a/openai",
        "tenants/" + "a" * 41 + "/openai",
        "tenants/acme/open/ai",
        "tenants/acme/..",
        "tenants/acme/open ai",
        "tenants/acme/" + "n" * 101,
        "platform/",
        "platform/a/b",
        "/tenants/acme/openai",
        "tenants/acme/openai\n",
    ],
)
def test_secret_ref_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="invalid secret ref"):
        SecretRef.parse(text)


def test_secret_ref_error_does_not_echo_the_text() -> None:
    with pytest.raises(ValueError, match="invalid secret ref") as caught:
        SecretRef.parse(PLAINTEXT + " oops")
    assert PLAINTEXT not in str(caught.value)


def test_secret_ref_built_directly_is_validated() -> None:
    with pytest.raises(ValueError, match="invalid secret ref"):
        SecretRef(tenant_id="../etc", name="passwd")


def test_ensure_ref_allowed_accepts_own_tenant_only() -> None:
    ensure_ref_allowed(SecretRef.parse("tenants/acme/openai"), scope=_scope("acme"))
    with pytest.raises(SecretAccessDenied):
        ensure_ref_allowed(SecretRef.parse("tenants/globex/openai"), scope=_scope("acme"))


def test_ensure_ref_allowed_platform_refs_need_opt_in() -> None:
    ref = SecretRef.parse("platform/openai-shared")
    with pytest.raises(SecretAccessDenied):
        ensure_ref_allowed(ref, scope=_scope("acme"))
    with pytest.raises(SecretAccessDenied):
        ensure_ref_allowed(ref, scope=_scope("acme"), platform_refs=frozenset({"platform/other"}))
    ensure_ref_allowed(
        ref, scope=_scope("acme"), platform_refs=frozenset({"platform/openai-shared"})
    )


def test_platform_opt_in_cannot_name_another_tenants_ref() -> None:
    ref = SecretRef.parse("tenants/globex/openai")
    with pytest.raises(SecretAccessDenied):
        ensure_ref_allowed(ref, scope=_scope("acme"), platform_refs=frozenset({str(ref)}))


# --- load_master_key -----------------------------------------------------------------------


def test_dev_generates_a_0600_key_file_and_reuses_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path, dev=True)
    key = load_master_key(settings)

    path = settings.master_key_path
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert base64.b64decode(path.read_text()) == key
    assert load_master_key(settings) == key
    assert kek_id(key).startswith("local:")
    assert len(kek_id(key)) == len("local:") + 16


def test_outside_dev_a_missing_key_is_refused_and_not_generated(tmp_path: Path) -> None:
    settings = _settings(tmp_path, dev=False)
    with pytest.raises(MasterKeyMissing, match="BULKHEAD_SECRETS__MASTER_KEY"):
        load_master_key(settings)
    assert not settings.master_key_path.exists()


def test_key_from_setting_is_used_without_a_file(tmp_path: Path) -> None:
    key = os.urandom(32)
    settings = _settings(tmp_path, dev=False, master_key=base64.b64encode(key).decode())
    assert load_master_key(settings) == key
    assert not settings.master_key_path.exists()


@pytest.mark.parametrize(
    "text",
    ["not base64!!", base64.b64encode(b"short").decode(), base64.b64encode(bytes(33)).decode()],
)
def test_malformed_key_setting_is_refused_without_echoing_it(tmp_path: Path, text: str) -> None:
    with pytest.raises(MasterKeyInvalid) as caught:
        load_master_key(_settings(tmp_path, dev=True, master_key=text))
    assert text not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [(base64.b64encode(bytes(16)), "16 bytes"), (b"\xff\xfe binary", "not valid base64")],
)
def test_malformed_key_file_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    settings = _settings(tmp_path, dev=False)
    settings.master_key_path.parent.mkdir(parents=True)
    settings.master_key_path.write_bytes(content)
    settings.master_key_path.chmod(0o600)
    with pytest.raises(MasterKeyInvalid, match=message):
        load_master_key(settings)


def test_group_readable_key_file_is_refused_outside_dev_and_warned_in_dev(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = os.urandom(32)
    settings = _settings(tmp_path, dev=False)
    settings.master_key_path.parent.mkdir(parents=True)
    settings.master_key_path.write_text(base64.b64encode(key).decode())
    settings.master_key_path.chmod(0o640)

    with pytest.raises(MasterKeyInvalid, match="chmod 600"):
        load_master_key(settings)

    caplog.set_level(logging.WARNING, logger="app.secrets.kek")
    assert load_master_key(_settings(tmp_path, dev=True)) == key
    assert "accessible by group/others" in caplog.text
