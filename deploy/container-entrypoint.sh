#!/bin/sh
# The container's entry point: one image, two ways to reach Slack.
#   SLACK_APP_TOKEN set  -> Socket Mode (no inbound port needed), /healthz on $PORT
#   SLACK_APP_TOKEN empty -> HTTP mode: Slack posts to :$PORT/slack/events (publish it: -p)
# Any arguments replace this choice: `docker run IMAGE doctor`, `... audit verify`.
set -eu
if [ "$#" -gt 0 ]; then
    exec python3 -I -m bot "$@"
fi
port=${PORT:-3000}
if [ -n "${SLACK_APP_TOKEN:-}" ]; then
    exec python3 -I -m bot serve --address 0.0.0.0 --port "$port"
fi
exec python3 -I -m bot serve --http --address 0.0.0.0 --port "$port"
