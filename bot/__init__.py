"""The Slack bot: settings, app factory, state store, audit log, engine clients."""
