"""What a person's action in Slack does: commands, buttons, modals, Block Kit builders."""
