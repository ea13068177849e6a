"""One error for a document that failed validation: every problem found, listed, not just the first.

The registry, the rescue stations and the routing file are all checked whole before use, so an
operator fixing one sees every bad line at once; the message shows the first ``shown_max``.
"""

from __future__ import annotations

from pathlib import Path


class DocumentError(ValueError):
    """``what`` names the kind of document in the message; ``problems`` lists everything found."""

    what = "document"
    shown_max = 20

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        limit = self.shown_max
        shown = "\n  ".join(problems[:limit])
        more = f"\n  … and {len(problems) - limit} more" if len(problems) > limit else ""
        super().__init__(f"{self.what} {path}: {len(problems)} problem(s)\n  {shown}{more}")
        self.path = path
        self.problems = problems
