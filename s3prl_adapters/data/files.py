"""Listing a corpus's files at real size (148k files in VoxCeleb1 dev): at most one walk per start.

The corpus preflight walks a folder and keeps the result for the next reader in the same start
(the ASV recipe's length cache needs the same listing for its key); a kept walk is handed out once,
so a later call, e.g. after the files changed, walks afresh."""

import os
from typing import Dict, List, Tuple

FileStat = Tuple[str, int, int]
"""(path, size in bytes, mtime in ns)"""

_kept: Dict[str, List[FileStat]] = {}


def _walk(root: str) -> List[FileStat]:
    found, stack = [], [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    st = entry.stat()
                    found.append((entry.path, st.st_size, st.st_mtime_ns))
    found.sort()
    return found


def scan_tree(root: str, keep: bool = False) -> List[FileStat]:
    """Every file under `root` as (path, size, mtime_ns), sorted by path. `keep=True` leaves the
    listing for the next caller in this start."""
    root = os.path.abspath(root)
    scan = _kept.pop(root, None)
    if scan is None:
        scan = _walk(root)
    if keep:
        _kept[root] = scan
    return scan


def forget_scans() -> None:
    """Drop kept listings (the preflight calls it as a start begins)."""
    _kept.clear()
