"""Measured results as Markdown, from the files the measuring commands wrote (`s3prl-adapters render`):
the docs' tables are rendered from these, never typed (tests/test_docs.py renders them again)."""

import json

from s3prl_adapters.errors import UserError


def render_file(path: str) -> str:
    """A run_benchmarks.sh results.json (the results table, Δ table and notes), a `bench --json` output (the
    cost table), a `bench --serving --json` output (the serving table), or the downstream configs folder
    (the shipped learning-rate search: chosen settings per method and task)."""
    import os

    if os.path.isdir(path):
        from s3prl_adapters.tools.search_record import summary_markdown

        return summary_markdown(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable JSON file ({e})") from None
    if isinstance(data, dict) and "runs" in data and "cells" in data:
        from s3prl_adapters.tools.report import report_markdown

        return report_markdown(data["runs"], data.get("wall_seconds"), missing=data.get("missing") or (),
                               qbe=data.get("qbe"))
    if isinstance(data, dict) and "meta" in data and "results" in data:
        from s3prl_adapters.tools.bench import markdown_table, serving_table

        rows = data["results"]
        return serving_table(rows, data["meta"]) if rows and "row" in rows[0] else markdown_table(rows, data["meta"])
    raise UserError(f"{path}: neither a run_benchmarks.sh results.json nor a bench --json output")


# ---- the docs' rendered blocks ------------------------------------------------------------------------

BEGIN, END = "<!-- BEGIN rendered: ", "<!-- END rendered -->"


def render_spec(spec: str, root: str) -> str:
    """What a docs block holds: `s3prl-adapters render FILE.json [--table-only]` rendered, or a file (the
    output of another measuring command, e.g. scripts/diagnose_e_adapters.py's summary.md) verbatim."""
    import os

    words = spec.split()
    if words[:2] == ["s3prl-adapters", "render"]:
        text = render_file(os.path.join(root, words[2]))
        if "--table-only" in words:  # the results table alone: its lines up to the first blank one
            text = text.split("\n\n", 1)[0].rstrip("\n") + "\n"
        return text
    with open(os.path.join(root, words[0])) as f:
        return f.read()


def rendered_blocks(text: str):
    """(spec, start, end) of every rendered block of a Markdown text: text[start:end] is its body."""
    pos = 0
    while True:
        begin = text.find(BEGIN, pos)
        if begin < 0:
            return
        spec_end = text.index("-->", begin)
        spec = text[begin + len(BEGIN):spec_end].strip()
        start = text.index("\n", spec_end) + 1
        end = text.index(END, start)
        yield spec, start, end
        pos = end + len(END)


def refresh(path: str, root: str) -> bool:
    """Render every block of one Markdown file again; True when something changed."""
    with open(path) as f:
        text = f.read()
    out, last = [], 0
    for spec, start, end in rendered_blocks(text):
        out += [text[last:start], render_spec(spec, root)]
        last = end
    new = "".join(out) + text[last:]
    if new != text:
        with open(path, "w") as f:
            f.write(new)
    return new != text
