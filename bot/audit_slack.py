"""Read the audit anchors back from Slack: the ``audit #SEQ DIGEST`` in each closing summary.

The closing summary is both a reply in the request's thread and part of the
final card, so ``conversations.history`` finds most anchors on the cards; a
thread whose card shows none is read with ``conversations.replies``. Reading
is bounded (pages and threads), newest first: the newest anchor pins the
longest stretch of the chain. The bot needs ``channels:history`` (and
``groups:history`` for private channels) for this.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.audit import Anchor, anchors_in
from bot.errors import BotError

PAGE = 200


def _texts(node: Any) -> Iterator[str]:
    """Every string under a ``text`` key of a message (its fallback and its blocks)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "text" and isinstance(value, str):
                yield value
            else:
                yield from _texts(value)
    elif isinstance(node, list):
        for item in node:
            yield from _texts(item)


def _message_anchors(message: dict[str, Any], where: str) -> list[Anchor]:
    found: list[Anchor] = []
    for text in _texts(message):
        found.extend(anchors_in(text, where))
    return found


def anchors_from_slack(
    client: WebClient, channels: Sequence[str], *, max_pages: int = 5, max_threads: int = 50
) -> list[Anchor]:
    """The anchors in ``channels``' recent messages and threads; a clear error if Slack refuses."""
    anchors: list[Anchor] = []
    threads_read = 0
    try:
        for channel in channels:
            cursor: str | None = None
            for _ in range(max_pages):
                page = client.conversations_history(channel=channel, limit=PAGE, cursor=cursor)
                for message in page.get("messages") or []:
                    where = f"Slack {channel} message {message.get('ts')}"
                    found = _message_anchors(message, where)
                    anchors.extend(found)
                    if found or not message.get("reply_count") or threads_read >= max_threads:
                        continue
                    threads_read += 1
                    replies = client.conversations_replies(
                        channel=channel, ts=str(message.get("ts")), limit=PAGE
                    )
                    for reply in replies.get("messages") or []:
                        anchors.extend(
                            _message_anchors(reply, f"Slack {channel} thread {message.get('ts')}")
                        )
                cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
                if not cursor:
                    break
    except SlackApiError as exc:
        error = exc.response.get("error") if exc.response is not None else "error"
        raise BotError(f"could not read the anchors from Slack: {error}") from None
    except SlackClientError as exc:
        raise BotError(f"could not reach Slack to read the anchors: {type(exc).__name__}") from None
    unique = {(a.seq, a.digest): a for a in anchors}
    return sorted(unique.values(), key=lambda a: a.seq)
