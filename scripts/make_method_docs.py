"""Write the registries' tables (post-processing, weight maps, losses) into docs/methods.md.

    python scripts/make_method_docs.py          # rewrite the sections
    python scripts/make_method_docs.py --check  # exit 1 when one is out of date

Each table sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` (:data:`TABLES`)
and is its registry's ``markdown_table()``; ``tests/core/test_methods.py`` and
``tests/engine/test_loss_methods.py`` fail while the file and a registry disagree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_cellfocus.core import methods, weight_methods
from napari_cellfocus.engine import loss_methods

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
#: Marker name -> the function that makes its table.
TABLES = {
    methods.DOCS_MARKER: methods.markdown_table,
    "weight-registry": weight_methods.markdown_table,
    "loss-registry": loss_methods.markdown_table,
}


def render(text: str) -> str:
    """``text`` with every table of :data:`TABLES` rewritten."""
    for marker, table in TABLES.items():
        text = methods.replace_docs_section(text, table(), marker)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    text = DOC.read_text(encoding="utf-8")
    new = render(text)
    if new == text:
        print(f"{DOC} is up to date.")
        return 0
    if args.check:
        print(f"{DOC}: a registry table is out of date; run {Path(__file__).name}.")
        return 1
    DOC.write_text(new, encoding="utf-8")
    print(f"{DOC}: registry tables rewritten.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
