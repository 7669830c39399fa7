"""Artifacts stay what was approved: stored read-only, re-hashed before every use.

An approval binds to a candidate's content hash, which covers each artifact's
`sha256_tree`. Anything that loads an artifact (a deploy, a rollback, a reconcile, the
critic's evaluation) re-hashes the folder first and refuses it on a mismatch; folders in
the artifact store are made read-only (files 0444, folders 0555) against accidents. The
re-hash is the check: the owner of the files (and root) can still change modes.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from upgate.hashing import sha256_tree

log = logging.getLogger(__name__)


def freeze_tree(root: Path) -> None:
    """Make a stored artifact read-only: files 0444, folders 0555 (bottom-up)."""
    for current, dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(current) / name
            if not path.is_symlink():
                path.chmod(0o444)
        for name in dirs:
            path = Path(current) / name
            if not path.is_symlink():
                path.chmod(0o555)
    root.chmod(0o555)


def tree_problem(root: Path, expected_sha256: str) -> str | None:
    """Why the folder is not the artifact with that hash, or None when it is."""
    if not root.is_dir() or root.is_symlink():
        return f"{root} is not a folder"
    for path in root.rglob("*"):
        if path.is_symlink():
            return f"{path} is a symbolic link; an artifact holds plain files only"
        if not (path.is_dir() or stat.S_ISREG(path.lstat().st_mode)):
            return f"{path} is not a plain file"
    actual = sha256_tree(root)
    if actual != expected_sha256:
        return (f"{root} has content hash {actual[:16]}, not the approved "
                f"{expected_sha256[:16]}: it was changed after it was hashed")
    return None
