"""Atomic files: every output is written to <path>.tmp, flushed to disk, then renamed over <path>.

A reader (a resumed run, a second shell drawing curves, a crashed job's next attempt) therefore sees either the
previous complete file or the new complete one, never half of either. A failed write (disk full, quota) removes
the partial file, which would otherwise keep the disk full, and stops with one line naming the path and the free
space; the previous file at `path` is untouched.
"""

import json
import os
import shutil
from contextlib import contextmanager

from .errors import UserError


class WriteError(UserError):
    """An output could not be written (exit code 1)."""


@contextmanager
def open_atomic(path, mode="w"):
    """`with open_atomic(path, "wb") as f:` writes <path>.tmp and renames it to <path> when the block ends."""
    tmp = path + ".tmp"
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a short write as "unexpected pos"
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, RuntimeError) and "unexpected pos" not in str(e) and "write" not in str(e).lower():
            raise
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "the write was cut short"
        raise WriteError(f"could not write {path} ({reason}); {free / 2**20:.0f} MiB free on its disk; the "
                         f"partial {os.path.basename(tmp)} was removed") from None
    os.replace(tmp, path)


def write_text(text, path):
    with open_atomic(path, "w") as f:
        f.write(text)
    return path


def write_json(obj, path, indent=1):
    return write_text(json.dumps(obj, indent=indent), path)


def save_figure(fig, path, **savefig_kw):
    """A matplotlib Figure as PNG (the format is named: the temporary name has no .png suffix)."""
    with open_atomic(path, "wb") as f:
        fig.savefig(f, format="png", **savefig_kw)
    return path
