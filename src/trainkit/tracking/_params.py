"""What a tracker is told about a run besides its metrics: flattened params, the git commit.

No tracker is imported here; the limits are handed in by the tracker's module.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

_NAME_UNSAFE = re.compile(r"[^/\w.\- ]")  # what MLflow accepts in a param or metric name, on every platform
_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")  # SHA-1 or SHA-256 object names


def safe_name(name: str, limit: int) -> str:
    """A name the tracker accepts: unsafe characters replaced, too long ones cut with a hash (still unique)."""
    name = _NAME_UNSAFE.sub("_", name)
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}~{digest}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def shorten(text: str, limit: int) -> str:
    """`text`, or its start with a note saying it was cut (a tracker's limit is never an error)."""
    if len(text) <= limit:
        return text
    note = f"... [{len(text)} characters, shortened by trainkit; the full value is in config.yaml]"
    if limit < 2 * len(note):
        note = "..."
    return text[: max(limit - len(note), 0)] + note[:limit]


def flat_params(config: dict[str, Any], key_limit: int, value_limit: int) -> dict[str, str]:
    """The resolved config as dotted keys -> text (lists and null as JSON: `[16, 32]`, `null`)."""
    flat: dict[str, str] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, dotted + ".")
            else:
                flat[safe_name(dotted, key_limit)] = shorten(_text(value), value_limit)

    walk(config, "")
    return flat


def git_commit(folder: str | Path) -> str | None:
    """The commit checked out in the git work tree holding `folder` (None outside one).

    Read from .git's files rather than by starting `git`: no subprocess at start-up, and no
    failure where git is not installed. Handles linked worktrees, submodules (a `.git` file
    naming the real folder), loose and packed refs, and a detached HEAD."""
    try:
        start = Path(folder).resolve()
        for candidate in (start, *start.parents):
            dotgit = candidate / ".git"
            if dotgit.is_dir():
                return _head(dotgit)
            if dotgit.is_file():
                text = dotgit.read_text(encoding="utf-8").strip()
                if not text.startswith("gitdir:"):
                    return None
                return _head((candidate / text[len("gitdir:") :].strip()).resolve())
    except (OSError, ValueError):
        return None
    return None


def _head(gitdir: Path) -> str | None:
    head = (gitdir / "HEAD").read_text(encoding="utf-8").strip()
    if not head.startswith("ref:"):
        return head if _SHA.fullmatch(head) else None  # detached
    ref = head[len("ref:") :].strip()
    common = gitdir
    if (gitdir / "commondir").is_file():  # a linked worktree: branches live in the main .git
        common = (gitdir / (gitdir / "commondir").read_text(encoding="utf-8").strip()).resolve()
    for base in (gitdir, common):
        loose = base / ref
        if loose.is_file():
            sha = loose.read_text(encoding="utf-8").strip()
            return sha if _SHA.fullmatch(sha) else None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref and _SHA.fullmatch(parts[0]):
                return parts[0]
    return None  # a branch without commits yet
