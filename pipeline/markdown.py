"""Text that inputs control (task names, notes), made safe for the markdown and CSV this
package writes: a `|` would split a table cell, `<img onerror=...>` would be HTML to a
renderer, and a CSV cell starting with `=` is a formula to a spreadsheet."""

from __future__ import annotations

import html

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def md_text(value: object) -> str:
    """`value` as markdown text: HTML escaped, `|` escaped, on one line."""
    return html.escape(" ".join(str(value).split()), quote=False).replace("|", "\\|")


def csv_text(value: str) -> str:
    """A text cell a spreadsheet will not run as a formula (a leading `'`; `csv_value` undoes it);
    one character alone (the table's `-` for no budget) is no formula."""
    return f"'{value}" if len(value) > 1 and value.startswith(FORMULA_STARTS) else value


def csv_value(cell: str) -> str:
    """A text cell as `csv_text` was given it."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else cell
