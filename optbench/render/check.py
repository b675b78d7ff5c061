"""Render `optbench check` findings: plain text for a log, Markdown for a PR comment, JUnit XML
for CI test reports, and GitHub Actions annotations (workflow commands) beside the text."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

from optbench.metrics import format_value, get_metric
from optbench.render.markdown import rows_table
from optbench.results.check import FAILING_MARKS, MARKS, Finding, Rule, counts, exit_code

FORMATS = ("text", "markdown", "junit", "github")
# Order of a report: what fails first, what is merely noteworthy next, the quiet rest last.
MARK_ORDER = {"!": 0, "+": 1, "x": 2, "-": 3, "~": 4}


@dataclass(frozen=True)
class Context:
    """What a report says about where its numbers come from."""

    suite: str
    baseline: Path
    rules: list[Rule]
    drift: list[str]  # environment versions that differ from the baseline's


def render(fmt: str, findings: list[Finding], ctx: Context) -> str:
    return {"text": text, "markdown": markdown, "junit": junit, "github": github}[fmt](findings, ctx)


def verdict(findings: list[Finding]) -> str:
    """'FAIL: 1 worse (+), 0 newly failing (!), ... -> exit 1' (or PASS ... exit 0)."""
    n = counts(findings)
    parts = ", ".join(f"{n[m]} {MARKS[m].split(' beyond')[0]} ({m})" for m in MARKS)
    code = exit_code(findings)
    return f"{'FAIL' if code else 'PASS'}: {parts} -> exit {code}"


def _values(f: Finding) -> tuple[str, str, str]:
    """(baseline, current, change) as text; bytes exact, since a gate counts every byte."""
    metric = get_metric(f.metric)
    old = format_value(metric, f.baseline, exact=True) if f.baseline is not None else ""
    new = format_value(metric, f.current, exact=True) if f.current is not None else ""
    if f.baseline is None or f.current is None:
        return old, new, ""
    delta = f.current - f.baseline
    if delta == 0:
        return old, new, "0"
    pct = f" ({f.change * 100:+.2f}%)" if f.change is not None else ""
    absolute = f"{delta:+,.0f} B" if metric.unit == "bytes" else f"{delta:+,.4g}"
    return old, new, absolute + pct


def _sorted(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: MARK_ORDER[f.mark])  # stable: suite order within


def _rules_line(ctx: Context) -> str:
    rules = "  ".join(f"{r.metric}:{r}" for r in ctx.rules) or "(none)"
    return f"rules: {rules}  (timing and loss are not gated unless a rule names them)"


def _legend() -> str:
    return "marks: " + " · ".join(f"{m} {what}" for m, what in MARKS.items())


# ----------------------------------------------------------------------------- text


def text(findings: list[Finding], ctx: Context) -> str:
    header = ["", "baseline", "current", "change", "rule", "cell · metric"]
    rows = []
    for f in _sorted(findings):
        old, new, change = _values(f)
        where = f"{f.cell_id} · {f.metric}" + (f": {f.note}" if f.note else "")
        rows.append([f.mark, old, new, change, str(f.rule) if f.rule else "", where])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = [f"optbench check · suite {ctx.suite} · baseline {ctx.baseline}", _rules_line(ctx)]
    if ctx.drift:
        lines.append("note: environment differs from the baseline's: " + ", ".join(ctx.drift))
    lines.append("")
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:4], widths[1:4])]
        lines.append("  ".join([*cells, row[4].ljust(widths[4]), row[5]]).rstrip())
    return "\n".join([*lines, "", _legend(), verdict(findings)]) + "\n"


# ----------------------------------------------------------------------------- markdown


def _md_table(findings: list[Finding]) -> list[str]:
    header = ["", "cell", "metric", "baseline", "current", "change", "rule", "note"]
    rows = []
    for f in findings:
        old, new, change = _values(f)
        rows.append([f"`{f.mark}`", f"`{f.cell_id}`", f"`{f.metric}`", old, new, change,
                     f"`{f.rule}`" if f.rule else "", f.note])
    return rows_table(header, rows, left={"", "cell", "metric", "note"}).splitlines()


def markdown(findings: list[Finding], ctx: Context) -> str:
    """A PR comment: the verdict, what needs attention in a table, the quiet rest folded."""
    failed = exit_code(findings) != 0
    n = counts(findings)
    title = "❌ failed" if failed else "✅ passed"
    lines = [f"### optbench check {title}: `{ctx.suite}`", "",
             f"Baseline `{ctx.baseline}` · rules " + ", ".join(f"`{r.metric}:{r}`" for r in ctx.rules)
             + " · " + ", ".join(f"{n[m]} `{m}`" for m in MARKS), ""]
    if ctx.drift:
        lines += [f"> Environment differs from the baseline's: {', '.join(ctx.drift)}", ""]
    loud = [f for f in _sorted(findings) if f.mark != "~"]
    quiet = [f for f in findings if f.mark == "~"]
    if loud:
        lines += [*_md_table(loud), ""]
    if quiet:
        lines += [f"<details><summary>{len(quiet)} within the rules (<code>~</code>)</summary>", "",
                  *_md_table(quiet), "", "</details>", ""]
    lines += ["Marks: " + ", ".join(f"`{m}` {what}" for m, what in MARKS.items()) + ".", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- junit


def junit(findings: list[Finding], ctx: Context) -> str:
    """One testcase per (cell, metric): `+`/`!` fail, `x` is skipped, `-`/`~` pass."""
    n = counts(findings)
    attrs = {"name": f"optbench check {ctx.suite}", "tests": str(len(findings)),
             "failures": str(n["+"] + n["!"]), "errors": "0", "skipped": str(n["x"])}
    root = ET.Element("testsuites", attrs)
    suite = ET.SubElement(root, "testsuite", attrs)
    for f in findings:
        case = ET.SubElement(suite, "testcase", {"classname": f"{ctx.suite}.{f.cell_id}", "name": f.metric})
        message = _message(f)
        if f.mark in FAILING_MARKS:
            ET.SubElement(case, "failure", {"message": message, "type": MARKS[f.mark]}).text = message
        elif f.mark == "x":
            ET.SubElement(case, "skipped", {"message": message})
        else:
            ET.SubElement(case, "system-out").text = message
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _message(f: Finding) -> str:
    old, new, change = _values(f)
    numbers = f"{old} -> {new} ({change}), rule {f.rule}" if old and new else ""
    text = "; ".join(p for p in (numbers, f.note) if p)
    return f"{f.mark} {MARKS[f.mark]}: {f.cell_id} {f.metric}" + (f": {text}" if text else "")


# ----------------------------------------------------------------------------- github


def github(findings: list[Finding], ctx: Context) -> str:
    """Workflow commands (error for + and !, notice for x and -) after the text report; the
    Markdown also goes to the job summary when the runner provides $GITHUB_STEP_SUMMARY."""
    lines = []
    try:
        baseline_text = Path(ctx.baseline).read_text(encoding="utf-8").splitlines()
    except OSError:
        baseline_text = []
    for f in _sorted(findings):
        if f.mark == "~":
            continue
        level = "error" if f.mark in FAILING_MARKS else "notice"
        title = _escape(f"optbench check {f.mark} {f.cell_id} {f.metric}", prop=True)
        line = _baseline_line(baseline_text, f)
        at = f",line={line}" if line else ""
        lines.append(f"::{level} file={_escape(str(ctx.baseline), prop=True)}{at},title={title}::"
                     f"{_escape(_message(f))}")
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(markdown(findings, ctx) + "\n")
    return text(findings, ctx) + "".join(line + "\n" for line in lines)


def _baseline_line(lines: list[str], f: Finding) -> int | None:
    """The line of the finding's metric in the baseline file (else its cell's), so an
    annotation points at the number that changed."""
    cell = next((i for i, line in enumerate(lines) if line.strip() == f'"{f.cell_id}": {{'), None)
    if cell is None:
        return None
    metric = next((i for i in range(cell, len(lines)) if lines[i].strip().startswith(f'"{f.metric}":')
                   or lines[i].strip() in ("},", "}") and lines[i].startswith("    }")), cell)
    return (metric if lines[metric].strip().startswith(f'"{f.metric}"') else cell) + 1


def _escape(value: str, prop: bool = False) -> str:
    """GitHub's workflow-command escaping (properties also escape ':' and ',')."""
    value = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return value.replace(":", "%3A").replace(",", "%2C") if prop else value
