"""The local cache (converted models, fetched releases) and writing into it so no reader sees a half-made file."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path


def cache_dir() -> Path:
    """Folder where converted models are cached (``TUNEBOOK_CACHE`` or ``~/.cache/tunebook``)."""
    return Path(os.environ.get("TUNEBOOK_CACHE", Path.home() / ".cache" / "tunebook"))


def staging_path(target: Path) -> Path:
    """Where this process and thread build ``target`` before it is renamed into place (never shared with another
    writer: two server workers, two threads of one, or two torchrun ranks may build the same thing at once)."""
    return target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.partial")


def write_atomically(path: Path, text: str) -> None:
    """Write a cache file so that another process or thread never reads it half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = staging_path(path)
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def move_into_place(partial: Path, target: Path, replace: bool = False) -> Path:
    """Rename a folder finished under a per-process name to ``target``, so no process ever sees it half-made; a copy
    another process put there first is kept unless ``replace``."""
    if replace and target.exists():
        stale = Path(tempfile.mkdtemp(prefix=f"{target.name}.", suffix=".stale", dir=target.parent))
        target.rename(stale)  # onto an empty folder of its own: a rename, so readers never see it half-deleted
        shutil.rmtree(stale, ignore_errors=True)
    try:
        partial.rename(target)
    except OSError:  # another process finished the same folder first
        shutil.rmtree(partial)
    return target
