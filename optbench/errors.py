"""User-facing errors: the CLI prints their message on one line and exits 2."""

from __future__ import annotations


class OptbenchError(Exception):
    """Bad input (suite file, key, value, data source): one clear line, never a traceback."""


def did_you_mean(name: str, known: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def informative_line(text: str | None) -> str:
    """The line of an error text worth showing: a traceback's last line (the exception),
    otherwise the first non-blank line; '' when there is no text."""
    if not isinstance(text, str):
        return ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def one_line(text: str, limit: int = 400) -> str:
    """Text for the promised single error line: line breaks and other unprintable characters
    (a newline in a key, U+0085, a lone surrogate) shown escaped, and long text cut."""
    flat = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"



def require_utf8(value: str, what: str, why: str) -> None:
    """One line when `value` (a path or name typed as undecodable bytes, which Python reads as
    lone surrogates) cannot be UTF-8 text where it must be: '<what> <value>: not UTF-8 text<why>'."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = value.encode("utf-8", "backslashreplace").decode()
        raise OptbenchError(f"{what} {shown}: not UTF-8 text{why}") from None
