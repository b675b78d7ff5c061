"""User-facing errors: the CLI prints their message on one line and exits 2."""


class OptbenchError(Exception):
    """Bad input (suite file, key, value, data source): one clear line, never a traceback."""


def did_you_mean(name: str, known: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
