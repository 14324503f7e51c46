"""Where the project's files live, independent of the current directory or Hydra's output dir."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
CONF_DIR = PROJECT_ROOT / "conf"


@contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `final`; rename onto it only if the block succeeds.

    Why: a crash mid-write must never leave a half-written file where a good one is expected.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give the final file the usual umask
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(final: str | os.PathLike, text: str) -> Path:
    """Write text to `final` atomically (temp file + rename)."""
    with atomic_path(final) as tmp:
        tmp.write_text(text)
    return Path(final)
