"""Suite YAML -> validated, typed suites and cells (schema, suite, loader, schedules)."""
