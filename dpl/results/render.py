"""A protocol table (``dpl.results.tables.Grid``) as text, Markdown, CSV or JSON."""
import csv
import io
import json

FORMATS = ("text", "markdown", "csv", "json")


def column_header(column):
    group, name = column
    return f"{group} {name}".strip()


def render_table(grid, fmt):
    """Text or Markdown: the title, what the spread is, the table, then what is missing or ignored."""
    from tabulate import tabulate

    headers = grid.index_names + [column_header(c) for c in grid.columns]
    body = [list(index) + [c.text() if c else "-" for c in cells] for index, cells in grid.rows]
    table = tabulate(body, headers=headers, tablefmt="pipe" if fmt == "markdown" else "simple",
                     disable_numparse=True)
    heading = f"## {grid.title}" if fmt == "markdown" else grid.title
    lines = [heading, "", f"mean ± {grid.spread_name} over seeds; (n/m): n of m expected present", "", table]
    for label, items in (("Missing", grid.missing), ("Ignored (not a run folder)", grid.ignored)):
        if items:
            lines += ["", f"{label}:"] + [f"- {item}" for item in items]
    return "\n".join(lines) + "\n"


def _blank(x):
    return "" if x is None else x


def render_csv(grid):
    """Long form: one line per (row, column) cell, with the per-seed values."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(grid.index_names + ["group", "column", "mean", grid.spread_name, "n", "expected", "values"])
    for index, cells in grid.rows:
        for (group, name), cell in zip(grid.columns, cells):
            if cell is None:
                writer.writerow(list(index) + [group, name, "", "", "", "", ""])
                continue
            values = ";".join(f"seed{s}={v}" for s, v in (cell.values or {}).items())
            writer.writerow(list(index) + [group, name, repr(cell.mean), _blank(cell.spread), _blank(cell.n),
                                           _blank(cell.expected), values])
    return buf.getvalue()


def render_json(grid):
    rows = []
    for index, cells in grid.rows:
        row = dict(zip(grid.index_names, index))
        row["cells"] = [
            dict(group=g, column=c, **({} if cell is None else {
                "mean": cell.mean, grid.spread_name: cell.spread, "n": cell.n, "expected": cell.expected,
                "values": cell.values}))
            for (g, c), cell in zip(grid.columns, cells)
        ]
        rows.append(row)
    doc = {"title": grid.title, "spread": grid.spread_name, "rows": rows, "missing": grid.missing,
           "ignored": grid.ignored}
    return json.dumps(doc, indent=2) + "\n"


def render(grid, fmt):
    """``grid`` in one of ``FORMATS``."""
    if fmt == "csv":
        return render_csv(grid)
    if fmt == "json":
        return render_json(grid)
    return render_table(grid, fmt)
