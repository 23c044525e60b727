"""Block Kit payloads checked the way Slack checks them, for the fake Web API.

Slack refuses a whole message or view when one block breaks a rule; the bot
then gets ``invalid_blocks`` (messages) or ``invalid_arguments`` (views) and
the card never appears. slack_sdk's own models carry most of Slack's rules
(``Block.parse`` builds the model, ``to_dict()`` runs every ``validate_json``
validator down the tree: 300 characters of confirm text, 75 of button text,
2000 of button value, 3000 of section text, 24 of a modal title...). What the
models let through and Slack does not is added here: unknown block or element
types (the models skip them with a warning), unknown fields, empty texts,
context texts over 3000 characters, duplicate block ids, too many blocks.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk.models.basic_objects import JsonObject
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_MESSAGE_TEXT = 40_000
MAX_TEXT_OBJECT = 3000
MAX_CONTEXT_ELEMENTS = 10

# The models log "Unknown block detected and skipped"; the fake reports it instead.
_QUIET = logging.getLogger("slack_sdk.models")


def block_errors(blocks: Any, *, limit: int = MAX_MESSAGE_BLOCKS) -> list[str]:
    """Every reason Slack would refuse ``blocks`` (a list of block dicts); [] when valid."""
    if not isinstance(blocks, list):
        return ["blocks must be an array of blocks"]
    errors = []
    if not 0 < len(blocks) <= limit:
        errors.append(f"must have between 1 and {limit} blocks, not {len(blocks)}")
    seen_ids: set[str] = set()
    for i, raw in enumerate(blocks):
        where = f"/blocks/{i}"
        if not isinstance(raw, dict):
            errors.append(f"{where}: a block must be an object")
            continue
        block_id = raw.get("block_id")
        if isinstance(block_id, str):
            if block_id in seen_ids:
                errors.append(f"{where}: duplicate block_id {block_id!r}")
            seen_ids.add(block_id)
        errors += [f"{where}{e}" for e in _one_block(raw)]
    return errors


def view_errors(view: Any) -> list[str]:
    """Every reason Slack would refuse a modal ``view``; [] when valid."""
    if not isinstance(view, dict):
        return ["view must be an object"]
    errors = block_errors(view.get("blocks"), limit=MAX_VIEW_BLOCKS)
    # The blocks are checked above; the model gets one stand-in so its count rule passes.
    without_blocks = {k: v for k, v in view.items() if k != "blocks"}
    try:
        model = View(**{**without_blocks, "blocks": [{"type": "divider"}]})
        model.to_dict()
    except Exception as exc:  # the models raise TypeError, ValueError or their own error
        return [*errors, f"/view: {exc}"]
    errors += [f"/view{e}" for e in _unknown_fields(model, without_blocks, "")]
    return errors


def _one_block(raw: dict[str, Any]) -> list[str]:
    try:
        previous = _QUIET.level
        _QUIET.setLevel(logging.ERROR)
        try:
            model = Block.parse(raw)
        finally:
            _QUIET.setLevel(previous)
        if model is None:
            return [f": unknown block type {raw.get('type')!r}"]
        model.to_dict()
    except Exception as exc:
        return [f": {exc}"]
    errors = _unknown_fields(model, raw, "")
    errors += _text_rules(raw, "")
    if raw.get("type") == "context":
        elements = raw.get("elements") or []
        if not 0 < len(elements) <= MAX_CONTEXT_ELEMENTS:
            errors.append(f"/elements: must have 1 to {MAX_CONTEXT_ELEMENTS} elements")
    if raw.get("type") == "actions":
        ids = [e.get("action_id") for e in raw.get("elements") or [] if isinstance(e, dict)]
        if len([i for i in ids if i]) != len({i for i in ids if i}):
            errors.append("/elements: duplicate action_id")
    return errors


def _unknown_fields(model: Any, raw: Any, where: str, *, listed: bool = False) -> list[str]:
    """Fields the model does not know (Slack refuses them), and list items it could not parse."""
    if isinstance(raw, list):
        if not isinstance(model, list | tuple):
            return []
        errors = []
        for i, item in enumerate(raw):
            sub = model[i] if i < len(model) else None
            errors += _unknown_fields(sub, item, f"{where}/{i}", listed=True)
        return errors
    if not isinstance(raw, dict):
        return []
    if not isinstance(model, JsonObject):
        # An element the models skipped (they return None for a type they do not know).
        unknown = listed and model is None and "type" in raw
        return [f"{where}: unknown element type {raw.get('type')!r}"] if unknown else []
    known = set(model.attributes) | set(model.to_dict()) | {"type"}
    errors = [f"{where}: invalid additional property {key!r}" for key in raw if key not in known]
    for key, value in raw.items():
        if isinstance(value, dict | list) and key in known:
            errors += _unknown_fields(getattr(model, key, None), value, f"{where}/{key}")
    return errors


def _text_rules(node: Any, where: str) -> list[str]:
    """Every text object holds 1 to 3000 characters."""
    errors: list[str] = []
    if isinstance(node, list):
        for i, item in enumerate(node):
            errors += _text_rules(item, f"{where}/{i}")
    elif isinstance(node, dict):
        if node.get("type") in ("plain_text", "mrkdwn") and "text" in node:
            text = node.get("text")
            if not isinstance(text, str) or not text:
                errors.append(f"{where}/text: must be more than 0 characters")
            elif len(text) > MAX_TEXT_OBJECT:
                errors.append(f"{where}/text: must be at most {MAX_TEXT_OBJECT} characters")
        for key, value in node.items():
            if isinstance(value, dict | list):
                errors += _text_rules(value, f"{where}/{key}")
    return errors
