"""Body reading within limits: refused while streaming, before the body is held in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from app.config import LimitSettings
from app.problems import PayloadTooLarge, ValidationFailed
from app.retrieval.uploads import read_bounded_body, read_upload

LIMITS = LimitSettings(
    max_upload_bytes=64 * 1024, max_file_bytes=16 * 1024, max_files_per_request=3
)


class CountingBody:
    """An endless request body (bounded at `chunks` chunks) that counts what was read."""

    def __init__(self, prefix: bytes = b"", chunk: bytes = b"x" * 1024, chunks: int = 10_000):
        self.prefix, self.chunk, self.chunks, self.read = prefix, chunk, chunks, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.prefix:
            self.read += 1
            yield self.prefix
        for _ in range(self.chunks):
            self.read += 1
            yield self.chunk


def multipart(files: list[tuple[str, bytes]], data: dict[str, str] | None = None) -> httpx.Request:
    return httpx.Request(
        "POST",
        "http://test/v1/documents",
        files=[("file", (name, body, "text/plain")) for name, body in files],
        data=data or {},
    )


def boundary(request: httpx.Request) -> str:
    return request.headers["content-type"].split("boundary=", 1)[1]


async def chunks_of(body: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_json_body_stops_at_the_limit_without_content_length() -> None:
    body = CountingBody()
    with pytest.raises(PayloadTooLarge):
        await read_bounded_body({}, body.__aiter__(), limit=8 * 1024)
    assert body.read == 9  # the chunk that crossed the limit, not one more


async def test_announced_length_over_the_limit_is_refused_before_reading() -> None:
    body = CountingBody()
    with pytest.raises(PayloadTooLarge):
        await read_bounded_body({"content-length": str(10**9)}, body.__aiter__(), limit=1024)
    with pytest.raises(PayloadTooLarge):
        await read_upload(
            {"content-length": str(10**9)}, body.__aiter__(), boundary="b", limits=LIMITS
        )
    assert body.read == 0


async def test_a_file_over_max_file_bytes_stops_the_upload_mid_stream() -> None:
    prefix = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\n"
    )
    body = CountingBody(prefix=prefix)
    with pytest.raises(PayloadTooLarge):
        await read_upload({}, body.__aiter__(), boundary="b", limits=LIMITS)
    assert body.read <= 1 + 16 + 1  # header, 16 KiB of file, the chunk that crossed


async def test_the_whole_upload_is_bounded_too() -> None:
    limits = LIMITS.model_copy(update={"max_file_bytes": 10**9})
    prefix = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n\r\n'
    body = CountingBody(prefix=prefix)
    with pytest.raises(PayloadTooLarge):
        await read_upload({}, body.__aiter__(), boundary="b", limits=limits)
    assert body.read <= 1 + 64 + 1


async def test_one_file_too_many_is_refused_at_its_header() -> None:
    request = multipart([(f"f{i}.txt", b"hello") for i in range(4)])
    with pytest.raises(PayloadTooLarge, match="at most 3 files"):
        await read_upload({}, chunks_of(request.read()), boundary=boundary(request), limits=LIMITS)


async def test_files_and_fields_come_back_in_order() -> None:
    request = multipart(
        [("a.txt", b"alpha"), ("dir/b.md", b"# Beta")], data={"metadata": '{"k": 1}'}
    )
    form = await read_upload(
        {}, chunks_of(request.read(), size=7), boundary=boundary(request), limits=LIMITS
    )
    assert [(f.filename, f.content_type, f.data) for f in form.files] == [
        ("a.txt", "text/plain", b"alpha"),
        ("dir/b.md", "text/plain", b"# Beta"),
    ]
    assert dict(form.fields) == {"metadata": ['{"k": 1}']}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tenant": "x"}, "unknown form field 'tenant'"),
        ({"metadata": "x" * (65 * 1024)}, "over 65536 bytes"),
    ],
)
async def test_unknown_or_oversized_fields_are_refused(data: dict[str, str], message: str) -> None:
    request = multipart([("a.txt", b"alpha")], data=data)
    limits = LIMITS.model_copy(update={"max_file_bytes": 2**20, "max_upload_bytes": 2**20})
    with pytest.raises(ValidationFailed, match=message):
        await read_upload({}, chunks_of(request.read()), boundary=boundary(request), limits=limits)


async def test_truncated_multipart_is_a_validation_error() -> None:
    body = multipart([("a.txt", b"alpha")]).read()
    request = multipart([("a.txt", b"alpha")])
    with pytest.raises(ValidationFailed, match="malformed multipart"):
        await read_upload(
            {}, chunks_of(body[: len(body) // 2]), boundary=boundary(request), limits=LIMITS
        )
