"""The store and what is read back and judged: compare's selection, check's rules and marks."""
