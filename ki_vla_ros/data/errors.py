"""Typed dataset errors: one line naming the file and what is wrong with it.

`DatasetError` — the dataset cannot be used as configured (no metadata, nothing usable, …).
`EpisodeError` — one episode's files are broken (an unreadable parquet / mp4 / bag, frames missing
against ``meta/episodes``): with ``on_error: skip`` in the dataset config the reader skips that
episode and counts it in the `LoadReport` (``assets/data_report.json``); by default it is raised.
Both are `ValueError`s, so every command that reports bad input in one line reports them too.
"""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class EpisodeError(DatasetError):
    """A broken episode (skipped with ``on_error: skip``)."""
