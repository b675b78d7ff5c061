"""Every output format: Markdown, PNG figures, Rich tables, JUnit / GitHub annotations."""
