"""AWS Secrets Manager backend through boto3 (synchronous, so run in worker threads).

A ref `tenants/acme/openai` is the secret `<prefix>tenants/acme/openai`. Bulkhead's version
number n is kept in the AWS version id itself (the client request token, a UUID derived from
the name and n), and the latest number as the tag `bulkhead-version`. Labels would do too,
but moto drops custom labels from a version that loses AWSCURRENT. AWS keeps about 100
versions of a secret; older numbers then answer "not found".
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3
import botocore.config
import botocore.exceptions

from app.secrets.backend import GuardedBackend, SecretNotFound, SecretsBackendUnavailable
from app.secrets.values import SecretRef, SecretValue

if TYPE_CHECKING:
    from collections.abc import Callable

    from app.config import AwsSecretsSettings
    from app.tenancy.scope import TenantScope

_VERSION_TAG = "bulkhead-version"
_VERSION_NAMESPACE = uuid.UUID("5f0c2f7e-6a4e-4c1e-9a57-2b8f5c1d0b11")
_NOT_FOUND = {"ResourceNotFoundException"}
# Deleted-but-recoverable secrets answer InvalidRequestException; to a reader they are gone.
_GONE = {"InvalidRequestException"}


class AwsSecretsBackend(GuardedBackend):
    """`SecretsBackend` over AWS Secrets Manager.

    Args:
        settings: Region, endpoint override and name prefix.
        client: A boto3 `secretsmanager` client to use instead of building one.
    """

    name = "aws"

    def __init__(self, settings: AwsSecretsSettings, *, client: Any = None) -> None:
        self._prefix = settings.prefix
        self._client = client or boto3.session.Session().client(
            "secretsmanager",
            region_name=settings.region,
            endpoint_url=settings.endpoint_url,
            config=botocore.config.Config(
                connect_timeout=3, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"}
            ),
        )
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="bulkhead-aws")

    async def _read(
        self, ref: SecretRef, *, scope: TenantScope, version: int | None
    ) -> SecretValue:
        """The current (or the given) version of `ref`.

        Raises:
            SecretNotFound: No such secret, or no such version.
            SecretsBackendUnavailable: AWS is unreachable or refuses our credentials.
        """
        name = self._name(ref)
        selector = (
            {"VersionStage": "AWSCURRENT"}
            if version is None
            else {"VersionId": _version_id(name, version)}
        )
        response = await self._call(
            lambda c: c.get_secret_value(SecretId=name, **selector),
            ref=ref,
            gone_is_missing=True,
        )
        return SecretValue(response["SecretString"])

    async def _write(self, ref: SecretRef, value: SecretValue, *, scope: TenantScope) -> int:
        """Store a new version of `ref` (creating the secret on first use).

        Concurrent writers of one ref may race on the number; Bulkhead's CLI is the only
        writer in practice.

        Raises:
            SecretsBackendUnavailable: AWS is unreachable or refuses our credentials.
        """
        version: int = await self._call(lambda c: self._put(c, ref, value.reveal()), ref=ref)
        return version

    def _put(self, client: Any, ref: SecretRef, text: str) -> int:
        name = self._name(ref)
        try:
            described = client.describe_secret(SecretId=name)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) not in _NOT_FOUND:
                raise
            client.create_secret(
                Name=name,
                SecretString=text,
                ClientRequestToken=_version_id(name, 1),
                Tags=[{"Key": _VERSION_TAG, "Value": "1"}],
            )
            return 1
        tags = {tag["Key"]: tag["Value"] for tag in described.get("Tags", [])}
        version = int(tags.get(_VERSION_TAG, "0")) + 1
        client.put_secret_value(
            SecretId=name, SecretString=text, ClientRequestToken=_version_id(name, version)
        )
        client.tag_resource(SecretId=name, Tags=[{"Key": _VERSION_TAG, "Value": str(version)}])
        return version

    async def _remove(self, ref: SecretRef, *, scope: TenantScope) -> bool:
        """Delete `ref` at once (no recovery window).

        Raises:
            SecretsBackendUnavailable: AWS is unreachable or refuses our credentials.
        """
        name = self._name(ref)
        try:
            # A forced delete of a missing secret succeeds on AWS, so ask first.
            await self._call(lambda c: c.describe_secret(SecretId=name), ref=ref)
        except SecretNotFound:
            return False
        await self._call(
            lambda c: c.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True), ref=ref
        )
        return True

    async def list(self, *, scope: TenantScope) -> list[tuple[SecretRef, int]]:
        """The tenant's refs with their latest versions.

        Raises:
            SecretsBackendUnavailable: AWS is unreachable or refuses our credentials.
        """
        prefix = f"{self._prefix}tenants/{scope.tenant_id}/"

        def list_all(client: Any) -> list[dict[str, Any]]:
            paginator = client.get_paginator("list_secrets")
            pages = paginator.paginate(Filters=[{"Key": "name", "Values": [prefix]}])
            return [item for page in pages for item in page["SecretList"]]

        items = await self._call(list_all, ref=None)
        result: list[tuple[SecretRef, int]] = []
        for item in items:
            name = item["Name"]
            if not name.startswith(prefix) or item.get("DeletedDate"):
                continue
            tags = {tag["Key"]: tag["Value"] for tag in item.get("Tags", [])}
            ref = SecretRef(tenant_id=scope.tenant_id, name=name[len(prefix) :])
            result.append((ref, int(tags.get(_VERSION_TAG, "1"))))
        return sorted(result, key=lambda pair: str(pair[0]))

    async def health(self) -> bool:
        """Whether Secrets Manager answers with our credentials."""
        try:
            await self._call(lambda c: c.list_secrets(MaxResults=1), ref=None)
        except SecretsBackendUnavailable:
            return False
        return True

    async def close(self) -> None:
        """Stop the worker threads and close the client's connections."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def _name(self, ref: SecretRef) -> str:
        return f"{self._prefix}{ref}"

    async def _call(
        self,
        operation: Callable[[Any], Any],
        *,
        ref: SecretRef | None,
        gone_is_missing: bool = False,
    ) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, operation, self._client)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code in _NOT_FOUND or (gone_is_missing and code in _GONE):
                raise SecretNotFound(f"no secret stored under '{ref}'") from None
            if code.startswith("Validation") or code == "InvalidParameterException":
                raise ValueError(f"secrets manager refused the request: {code}") from None
            raise SecretsBackendUnavailable(f"secrets manager error: {code}") from None
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise SecretsBackendUnavailable(
                f"secrets manager unreachable: {type(exc).__name__}"
            ) from None


def _version_id(name: str, version: int) -> str:
    return str(uuid.uuid5(_VERSION_NAMESPACE, f"{name}#{version}"))


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))
