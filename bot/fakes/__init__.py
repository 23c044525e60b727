"""Fakes of the bot's edges, shipped with the product (house rule: each edge ships a fake).

* ``slack_api``: a local stand-in for Slack's Web API that answers like Slack
  and records every call;
* ``slack_signing``: Slack's side of the HTTP hop, requests signed as Slack
  signs them;
* ``socket_mode``: Slack's side of Socket Mode, a loopback websocket endpoint
  (``apps.connections.open``, ``hello``, envelopes and their acknowledgements,
  ``disconnect`` and the reconnect);
* ``panel``: a reference MyOsicam panel (PHP, its schema, a MariaDB database,
  ``.env``) for the engine to rotate.

``python -m bot demo`` plays a whole rotation on them; the tests use the same
pieces. None of them is imported by the bot when it serves Slack.
"""
