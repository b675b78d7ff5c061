"""What each CLI command does: the only layer that composes config, engine, results and render."""
