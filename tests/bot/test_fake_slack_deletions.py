"""The fake Web API deletes as strictly as Slack: only the bot's own messages and files, only
ones that exist, and what is deleted can't be read, listed or updated any more."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.fakes.slack_api import FakeSlack

TOKEN = f"xoxb-1-{secrets.token_hex(8)}"


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    started = FakeSlack(token=TOKEN, channels=["C0ROTATE"], users=["U0BOB"]).start()
    yield started
    started.stop()


def error_of(call: object) -> str:
    with pytest.raises(SlackApiError) as caught:
        call()  # type: ignore[operator]
    return str(caught.value.response["error"])


def test_chat_delete_removes_the_bots_own_message_and_nothing_else(fake: FakeSlack) -> None:
    web = WebClient(token=TOKEN, base_url=fake.url)
    mine = web.chat_postMessage(channel="U0BOB", text="secret in a DM")
    kept = web.chat_postMessage(channel="U0BOB", text="stays")
    theirs = fake.post_as_user("U0BOB", "U0BOB", "a person's own message")

    assert error_of(lambda: web.chat_delete(channel="U0BOB", ts="1.000100")) == "message_not_found"
    assert error_of(lambda: web.chat_delete(channel="C0ROTATE", ts=mine["ts"])) == "message_not_found"
    assert error_of(lambda: web.chat_delete(channel="C0NOPE", ts=mine["ts"])) == "channel_not_found"
    assert error_of(lambda: web.chat_delete(channel="U0BOB", ts=theirs)) == "cant_delete_message"
    assert error_of(lambda: WebClient(token="xoxb-1-wrong", base_url=fake.url).chat_delete(
        channel="U0BOB", ts=mine["ts"])) == "invalid_auth"  # fmt: skip

    assert web.chat_delete(channel="U0BOB", ts=mine["ts"])["ok"]
    history = [m["text"] for m in web.conversations_history(channel="U0BOB")["messages"]]
    assert history == ["a person's own message", "stays"]
    assert error_of(lambda: web.chat_delete(channel="U0BOB", ts=mine["ts"])) == "message_not_found"
    assert error_of(lambda: web.chat_update(channel="U0BOB", ts=mine["ts"], text="x")) == "message_not_found"
    assert "secret in a DM" not in str(fake.present())
    assert fake.deleted()["messages"] == [mine["ts"]]
    assert kept["ok"]


def test_files_delete_removes_the_bots_own_file_and_its_bytes(fake: FakeSlack) -> None:
    web = WebClient(token=TOKEN, base_url=fake.url)
    uploaded = web.files_upload_v2(channels=["U0BOB"], content=b"\x89PNG secret", filename="qr.png")
    file_id = uploaded["file"]["id"]
    theirs = fake.upload_as_user("U0BOB", "mine.png", b"a person's file")
    assert web.files_info(file=file_id)["file"]["name"] == "qr.png"

    assert error_of(lambda: web.files_delete(file="F0NOPE")) == "file_not_found"
    assert error_of(lambda: web.files_delete(file=theirs)) == "cant_delete_file"
    assert web.files_delete(file=file_id)["ok"]

    assert error_of(lambda: web.files_delete(file=file_id)) == "file_not_found"
    assert error_of(lambda: web.files_info(file=file_id)) == "file_not_found"
    assert [u["id"] for u in fake.uploads()] == [theirs]
    assert b"\x89PNG secret" not in b"".join(f["data"] for f in fake.present()["files"])
    assert [c.method for c in fake.calls if c.method.startswith("files.delete")] == ["files.delete"] * 4
    assert fake.deleted()["files"] == [file_id]
