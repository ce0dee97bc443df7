"""Markdown tables: write them for REPORT.md, and read them back (tests, other tools)."""


def _cell(value):
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(headers, rows):
    """A GitHub-flavoured markdown table; numbers are right-aligned."""
    def numeric(col):  # empty cells (e.g. a reference row) do not decide the alignment
        cells = [r[col] for r in rows if str(r[col]).strip()]
        return cells and all(isinstance(v, (int, float)) or _looks_numeric(v) for v in cells)

    align = ["---:" if numeric(i) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _looks_numeric(text):
    text = str(text).strip().rstrip("%").replace(",", "")
    try:
        float(text)
        return True
    except ValueError:
        return False


def _split_row(line):
    cells, current, escaped = [], "", False
    for ch in line.strip()[1:-1]:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "|":
            cells.append(current.strip())
            current = ""
        else:
            current += ch
    cells.append(current.strip())
    return cells


def parse_tables(text):
    """Every markdown table in `text` as a list of row dicts (header -> cell text), in order.
    Raises ValueError on a table whose rows do not have the header's number of cells."""
    tables, lines, i = [], text.splitlines(), 0
    while i < len(lines) - 1:
        if lines[i].lstrip().startswith("|") and set(lines[i + 1].replace("|", "").strip()) <= set("-: ") \
                and "-" in lines[i + 1]:
            headers = _split_row(lines[i])
            rows, i = [], i + 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                cells = _split_row(lines[i])
                if len(cells) != len(headers):
                    raise ValueError(f"table row has {len(cells)} cells, header has {len(headers)}: {lines[i]!r}")
                rows.append(dict(zip(headers, cells)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables
