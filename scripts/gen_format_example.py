"""Write the worked example into docs/format.md (between its markers), or check it is current.

    python scripts/gen_format_example.py          # rewrite the section
    python scripts/gen_format_example.py --check  # exit 1 if docs/format.md is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

from meterchain.contract.worked_example import render_markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "format.md"
BEGIN = "<!-- BEGIN GENERATED EXAMPLE (scripts/gen_format_example.py) -->"
END = "<!-- END GENERATED EXAMPLE -->"


def updated(text: str) -> str:
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{DOC} lacks the generated-example markers")
    return f"{head}{BEGIN}\n{render_markdown()}\n{END}{tail}"


def main() -> int:
    text = DOC.read_text()
    new = updated(text)
    if "--check" in sys.argv:
        if new != text:
            print(f"{DOC} is out of date: run python scripts/gen_format_example.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
