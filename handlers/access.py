"""Who may request, approve and see rotations: ``AccessPolicy`` over Slack's members.

Entries are user ids, ``T…/U…`` users or ``S…`` user groups; a ``Directory`` (``bot.app``
implements it over Slack's API) lists groups' and channels' members.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from handlers.rotation_request import Person


class Directory(Protocol):
    """Slack user-group membership (cached by ``bot``).

    Members are user ids, unique across an Enterprise Grid organisation, so
    membership is the user id alone (a member's clicks carry their home team,
    which need not be the bot's workspace). ``group_members`` raises
    ``DirectoryUnavailable`` when it cannot vouch for a group's members.
    """

    def group_members(self, group_id: str) -> frozenset[str]: ...

    def channel_members(self, channel_id: str) -> frozenset[str]:
        """The user ids in a conversation (``conversations.members``); raises
        ``DirectoryUnavailable`` when it cannot vouch for them."""
        ...


def is_listed(entries: Sequence[str], person: Person, directory: Directory) -> bool:
    """``person`` is one of ``entries``: a user id, a ``T…/U…`` user, or a member of an ``S…`` group."""
    for entry in entries:
        if entry.startswith("S"):
            if person.user_id in directory.group_members(entry):
                return True
        elif entry.rsplit("/", 1)[-1] == person.user_id:
            return True
    return False


#: ``where`` for a surface that is in no channel: App Home, a modal, a Home-tab click
NO_CHANNEL: str | None = None


@dataclass(frozen=True)
class AccessPolicy:
    """Who may request and approve, how many approvals, for how long a request waits.

    Entries are Slack user ids (``U…``/``W…``), user-group ids (``S…``) or a
    team-qualified user ``T…/U…`` (matched by its user id: user ids are unique
    across an organisation). An empty ``requesters`` means anyone in an
    allowed channel; an empty ``channels`` means any channel.

    This is the one access rule of every surface: slash commands, the App Home
    tab (what it shows and its buttons), the request modal (when it opens and
    again when it is submitted), clicks and ``/rotate-status``. ``where`` is the
    channel a slash command was typed in: Slack only lets people type where they
    are members, so an allowed channel is proof enough. Every other surface (App
    Home, modals, button clicks) is checked with ``NO_CHANNEL``: then, with
    ``channels`` set, the person must be a member of one of them, asked of Slack.
    Without that, the Home tab would show and accept what the commands refuse to
    someone outside the rotations channel.
    """

    approvers: tuple[str, ...]
    requesters: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    approvals_required: int = 1
    expiry_s: float = 30 * 60
    max_pending_per_user: int = 5

    def in_scope(self, person: Person, directory: Directory, where: str | None = NO_CHANNEL) -> bool:
        """The channel half of the rule: acting in an allowed channel, or (on a surface
        without one) being a member of an allowed channel."""
        if not self.channels:
            return True
        if where:
            return where in self.channels
        return any(person.user_id in directory.channel_members(c) for c in self.channels)

    def may_request(
        self, person: Person, directory: Directory, where: str | None = NO_CHANNEL
    ) -> bool:
        listed = not self.requesters or is_listed(self.requesters, person, directory)
        return listed and self.in_scope(person, directory, where)

    def may_approve(
        self, person: Person, directory: Directory, where: str | None = NO_CHANNEL
    ) -> bool:
        return is_listed(self.approvers, person, directory) and self.in_scope(
            person, directory, where
        )

    def may_see(self, person: Person, directory: Directory, where: str | None = NO_CHANNEL) -> bool:
        """Pending requests, their ids and reasons: for those who may request or approve."""
        return self.may_approve(person, directory, where) or self.may_request(
            person, directory, where
        )

    def channel_allowed(self, channel_id: str) -> bool:
        return not self.channels or channel_id in self.channels

    @property
    def approver_mentions(self) -> str:
        return mention_list(self.approvers)

    def approvers_for(self, requester: Person) -> tuple[str, bool]:
        """Who may approve ``requester``'s request, as mentions, and whether to add
        "(not @requester)": people are listed without the requester; a user group is
        named as it is, and may hold the requester, so only then is the note needed."""
        others = [e for e in self.approvers if e.rsplit("/", 1)[-1] != requester.user_id]
        return mention_list(others), any(e.startswith("S") for e in others)

    @property
    def requester_mentions(self) -> str:
        return mention_list(self.requesters)


def mention(entry: str) -> str:
    """``S…`` -> a user-group mention, anything else -> a user mention."""
    if entry.startswith("S"):
        return f"<!subteam^{entry}>"
    return f"<@{entry.rsplit('/', 1)[-1]}>"


def mention_list(entries: Sequence[str]) -> str:
    mentions = [mention(e) for e in entries]
    if len(mentions) <= 1:
        return "".join(mentions)
    return ", ".join(mentions[:-1]) + " or " + mentions[-1]
