"""The markdown table the benches print."""

from __future__ import annotations

from collections.abc import Sequence

from rlhf_plugins._engine.console import table_lines


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print ``rows`` under ``header`` as a markdown table, columns padded to align."""
    for line in table_lines(header, rows, markdown=True):
        print(line)
