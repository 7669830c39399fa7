"""A small, strict reader of unified git diffs: which files a diff touches and how.

Detectors only need paths (old and new, renames, deletions, modes) and the added and
removed lines per file. Hunk line counts decide where a hunk ends, so an added line that
looks like a header ("+++ b/x" as content) is still read as content.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@(.*)$")
_ESCAPES = {
    "n": "\n",
    "t": "\t",
    '"': '"',
    "\\": "\\",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "r": "\r",
    "v": "\v",
}


@dataclass
class FileDiff:
    """One file's part of a diff."""

    old_path: str | None = None
    new_path: str | None = None
    status: str = "modified"  # modified | added | deleted | renamed | copied
    new_mode: str | None = None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    context: list[str] = field(default_factory=list)
    hunk_headers: list[str] = field(default_factory=list)
    binary: bool = False

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path this entry touches (old and new), without duplicates."""
        out = [p for p in (self.old_path, self.new_path) if p]
        return tuple(dict.fromkeys(out))

    @property
    def path(self) -> str:
        """The path the file has after the change (its old path when deleted)."""
        return self.new_path or self.old_path or ""


def normalize_path(path: str) -> str:
    """A repo-relative POSIX path: no leading './' or '/', no '..' resolution beyond root."""
    p = posixpath.normpath(path.replace("\\", "/")).lstrip("/")
    return "" if p == "." else p


def _unquote(token: str) -> str:
    """Undo git's C-style quoting of unusual paths ("a/sp\\303\\251cial")."""
    if not (len(token) >= 2 and token[0] == '"' and token[-1] == '"'):
        return token
    body, out, i = token[1:-1], bytearray(), 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in "01234567" and i + 3 < len(body) + 1 and body[i + 1 : i + 4].isdigit():
                out.append(int(body[i + 1 : i + 4], 8) & 0xFF)
                i += 4
                continue
            out += _ESCAPES.get(nxt, nxt).encode()
            i += 2
            continue
        out += ch.encode()
        i += 1
    return out.decode("utf-8", errors="replace")


def _strip_prefix(path: str) -> str | None:
    path = _unquote(path.strip())
    if path == "/dev/null":
        return None
    if path[:2] in ("a/", "b/", "i/", "w/", "c/", "o/"):
        path = path[2:]
    return normalize_path(path)


def _split_git_header(rest: str) -> tuple[str | None, str | None]:
    """Paths from `diff --git a/X b/Y`; best effort (the ---/+++ lines override it)."""
    rest = rest.strip()
    if rest.startswith('"'):
        end = rest.find('"', 1)
        while end != -1 and rest[end - 1] == "\\":
            end = rest.find('"', end + 1)
        return _strip_prefix(rest[: end + 1]), _strip_prefix(rest[end + 1 :])
    if ' "' in rest:
        left, right = rest.split(' "', 1)
        return _strip_prefix(left), _strip_prefix('"' + right)
    # Unquoted paths with spaces are ambiguous; git writes the same path twice when the
    # file was not renamed, so try the midpoint first.
    mid = len(rest) // 2
    if rest[mid] == " " and rest[:mid][2:] == rest[mid + 1 :][2:]:
        return _strip_prefix(rest[:mid]), _strip_prefix(rest[mid + 1 :])
    parts = rest.split(" b/", 1)
    if len(parts) == 2:
        return _strip_prefix(parts[0]), _strip_prefix("b/" + parts[1])
    return _strip_prefix(rest), None


def parse_diff(diff: str) -> list[FileDiff]:
    """Every file entry of a unified (git or plain) diff, in order."""
    files: list[FileDiff] = []
    cur: FileDiff | None = None
    lines = diff.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("diff --git "):
            cur = FileDiff()
            cur.old_path, cur.new_path = _split_git_header(line[len("diff --git ") :])
            files.append(cur)
            continue
        if line.startswith("--- ") and i < len(lines) and lines[i].startswith("+++ "):
            if cur is None or cur.added or cur.removed or cur.hunk_headers:
                cur = FileDiff()  # a plain (non-git) diff: ---/+++ starts a new file
                files.append(cur)
            old, new = (
                _strip_prefix(line[4:].split("\t")[0]),
                _strip_prefix(lines[i][4:].split("\t")[0]),
            )
            i += 1
            cur.old_path, cur.new_path = old, new
            if old is None and new is not None:
                cur.status = "added"
            elif new is None and old is not None:
                cur.status = "deleted"
            continue
        if cur is None:
            continue
        m = _HUNK.match(line)
        if m:
            old_left = int(m.group(1)) if m.group(1) is not None else 1
            new_left = int(m.group(2)) if m.group(2) is not None else 1
            cur.hunk_headers.append(m.group(3).strip())
            while i < len(lines) and (old_left > 0 or new_left > 0):
                body = lines[i]
                i += 1
                tag, text = body[:1], body[1:]
                if tag == "+":
                    cur.added.append(text)
                    new_left -= 1
                elif tag == "-":
                    cur.removed.append(text)
                    old_left -= 1
                elif tag == "\\":
                    continue  # "\ No newline at end of file"
                else:  # context (a blank line is context whose leading space was lost)
                    cur.context.append(text)
                    old_left -= 1
                    new_left -= 1
            continue
        _read_extended_header(cur, line)
    return files


def _read_extended_header(cur: FileDiff, line: str) -> None:
    if line.startswith(("rename from ", "copy from ")):
        cur.old_path = normalize_path(_unquote(line.split(" ", 2)[2]))
        cur.status = "renamed" if line.startswith("rename") else "copied"
    elif line.startswith(("rename to ", "copy to ")):
        cur.new_path = normalize_path(_unquote(line.split(" ", 2)[2]))
    elif line.startswith("deleted file mode"):
        cur.status = "deleted"
        cur.new_path = None
    elif line.startswith("new file mode"):
        cur.status = "added"
        cur.new_mode = line.rsplit(" ", 1)[-1]
        cur.old_path = None
    elif line.startswith("new mode "):
        cur.new_mode = line.rsplit(" ", 1)[-1]
    elif line.startswith(("Binary files ", "GIT binary patch")):
        cur.binary = True


def touched_paths(files: list[FileDiff]) -> list[str]:
    """Every path any entry touches, in first-seen order."""
    seen: dict[str, None] = {}
    for f in files:
        for p in f.paths:
            seen.setdefault(p, None)
    return list(seen)
