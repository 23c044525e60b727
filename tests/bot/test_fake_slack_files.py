"""The fake Web API's files v2 upload refuses what Slack refuses, and records each step."""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.fakes.slack_api import UPLOAD_METHOD, FakeSlack

TOKEN = f"xoxb-1-{secrets.token_hex(8)}"


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    started = FakeSlack(token=TOKEN, channels=["C0ROTATE"], users=["U0BOB"]).start()
    yield started
    started.stop()


def client(fake: FakeSlack, token: str = TOKEN) -> WebClient:
    return WebClient(token=token, base_url=fake.url)


def post_bytes(url: str, data: bytes) -> int:
    """Step 2, as slack_sdk does it: the bytes POSTed to the upload URL."""
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=5) as answer:
        return int(answer.status)


def error_of(call: object) -> str:
    with pytest.raises(SlackApiError) as caught:
        call()  # type: ignore[operator]
    return str(caught.value.response["error"])


def test_the_three_steps_share_a_file_with_its_bytes(fake: FakeSlack) -> None:
    response = client(fake).files_upload_v2(channels=["U0BOB"], content=b"\x89PNG data", filename="qr.png", title="QR")
    assert response["file"]["title"] == "QR"
    assert [c.method for c in fake.calls] == [
        "files.getUploadURLExternal",
        UPLOAD_METHOD,
        "files.completeUploadExternal",
    ]
    (upload,) = fake.uploads()
    assert (upload["data"], upload["filename"], upload["shared_to"]) == (b"\x89PNG data", "qr.png", ["U0BOB"])


def test_what_slack_refuses_the_fake_refuses(fake: FakeSlack) -> None:
    web = client(fake)
    assert error_of(lambda: web.files_getUploadURLExternal(filename="", length=3)) == "invalid_arguments"
    assert error_of(lambda: web.files_getUploadURLExternal(filename="a.png", length=0)) == "invalid_arguments"
    assert error_of(lambda: client(fake, "xoxb-1-wrong").files_getUploadURLExternal(filename="a", length=3)) == (
        "invalid_auth"
    )
    issued = web.files_getUploadURLExternal(filename="a.png", length=3)
    done = [{"id": issued["file_id"], "title": "a"}]
    # completing before the bytes arrived, or with an id never issued
    assert error_of(lambda: web.files_completeUploadExternal(files=done, channel_id="C0ROTATE")) == "file_not_found"
    assert error_of(lambda: web.files_completeUploadExternal(files=[{"id": "F0NOPE"}])) == "file_not_found"
    assert post_bytes(issued["upload_url"], b"abc") == 200
    assert error_of(lambda: web.files_completeUploadExternal(files=done, channel_id="C0NOWHERE")) == (
        "channel_not_found"
    )
    web.files_completeUploadExternal(files=done, channel_id="C0ROTATE")
    # each file is completed once
    assert error_of(lambda: web.files_completeUploadExternal(files=done, channel_id="C0ROTATE")) == "file_not_found"


def test_an_upload_url_takes_bytes_once_and_a_short_upload_is_not_completed(fake: FakeSlack) -> None:
    web = client(fake)
    issued = web.files_getUploadURLExternal(filename="a.png", length=10)
    assert post_bytes(issued["upload_url"], b"abc") == 200
    files = [{"id": issued["file_id"]}]
    with pytest.raises(urllib.error.HTTPError):
        post_bytes(issued["upload_url"], b"abcdefghij")
    with pytest.raises(urllib.error.HTTPError):
        post_bytes(issued["upload_url"].replace(issued["file_id"], "F0NOPE"), b"abc")
    assert error_of(lambda: web.files_completeUploadExternal(files=files, channel_id="C0ROTATE")) == "file_not_found"
    assert fake.uploads() == []
