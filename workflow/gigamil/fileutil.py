"""Safe file writing: atomic replacement, a clear error on a full disk, and the clean-up of
temporaries (``<name>.tmp-<pid>``, ``<name>.old-<pid>``) left by processes that were killed."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from gigamil.errors import GigamilError

log = logging.getLogger(__name__)

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk (or an exceeded quota)."""
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


def no_space_error(path: str | Path, exc: BaseException) -> GigamilError:
    """The one-line error of a full disk while writing ``path``."""
    return GigamilError(
        f"no space left on device: {path} ({exc.strerror or exc}); free space there "
        "(or point results/ to a larger disk) and rerun"
    )


def temp_path(path: str | Path, kind: str = "tmp") -> Path:
    """``<path>.<kind>-<pid>``: this process's temporary next to ``path``."""
    path = Path(path)
    return path.with_name(f"{path.name}.{kind}-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete ``<path>.tmp-<pid>`` / ``<path>.old-<pid>`` (files or directories) of processes that
    no longer exist, and this process's own; a live process's temporaries are left alone.
    Returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(re.escape(path.name) + r"\.(?:tmp|old)-(\d+)")
    removed = []
    for item in path.parent.iterdir():
        m = pattern.fullmatch(item.name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and pid_alive(pid):
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
        log.info("removed %s (left by process %d, which no longer runs)", item, pid)
        removed.append(item)
    return removed


@contextlib.contextmanager
def scratch_folder(path: str | Path) -> Iterator[Path]:
    """A new folder ``<path>.tmp-<pid>``, deleted on leaving the block. The folders of killed
    processes (SIGKILL, a node failure: no clean-up ran) are deleted first
    (:func:`remove_stale_temporaries`): e.g. the heatmap's scratch folder, ``.drawing``."""
    remove_stale_temporaries(path)
    tmp = temp_path(path)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_file(path: Path, data: bytes | memoryview) -> None:
    _write_chunks(path, (data,))


def _write_chunks(path: Path, chunks: Iterable[bytes | memoryview]) -> None:
    with open(path, "wb") as fh:
        for data in chunks:
            fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path.tmp-<pid>`` and rename it over ``path``. On any failure the
    temporary is removed; a full disk raises :class:`GigamilError` ``no space left on device:
    <path>``. Stale temporaries of ``path`` (killed processes) are removed first."""
    return _replace_atomically(Path(path), lambda tmp: _write_file(tmp, data))


def atomic_write_chunks(path: str | Path, chunks: Iterable[bytes | memoryview]) -> Path:
    """:func:`atomic_write_bytes` of the bytes ``chunks`` yields, each written as it comes (a
    generator of a large file's parts: the file is never held in memory whole, e.g. the
    patches.geojson of a slide of 10^5 patches); an error raised by ``chunks`` leaves no file."""
    return _replace_atomically(Path(path), lambda tmp: _write_chunks(tmp, chunks))


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` to ``path.tmp-<pid>``, then rename it over ``path`` (see
    :func:`atomic_write_bytes`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_no_space(exc):
            raise no_space_error(path, exc) from exc
        raise
    return path


def atomic_write_csv(table: Any, path: str | Path, **to_csv: Any) -> Path:
    """``table.to_csv(path, index=False, **to_csv)`` (a pandas DataFrame; ``index=True`` keeps
    the index) through :func:`atomic_write_bytes`: a job killed while writing leaves the
    earlier file or none, never one cut short, which a reader takes for a table of fewer rows
    (a prediction CSV: of fewer slides, its cut row a slide without patches)."""
    text = table.to_csv(**{"index": False, **to_csv})
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | Path, array: Any) -> Path:
    """``np.save(path, array)`` through :func:`atomic_write_bytes`: a job killed while writing
    leaves the earlier file or none, never a cut ``.npy`` (e.g. an attention file of
    ``gigamil predict``, which a cut write would leave looking complete to a later run)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getbuffer())


def zarr_attributes(path: str | Path) -> dict[str, Any] | None:
    """The attributes in ``path/zarr.json`` (a zarr v3 group's), or None when ``path`` is not a
    readable zarr group."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        attrs = json.loads((Path(path) / "zarr.json").read_text()).get("attributes", {})
        return attrs if isinstance(attrs, dict) else None
    return None


def check_replaceable_store(
    out: str | Path, is_kind: Callable[[str | Path], bool], what: str
) -> None:
    """Raise GigamilError unless ``out`` is absent or a store ``is_kind`` accepts (e.g.
    :func:`gigamil.data.features.is_feature_store`): writing a store replaces what is at its
    path, which may be a store of that kind written before (re-extraction), never a file, a
    folder of other things (e.g. a folder of stores given as the output path) or the input
    store."""
    p = Path(out)
    if not (p.exists() or p.is_symlink()) or is_kind(p):
        return
    kind = "file" if p.is_file() else "folder" if p.is_dir() else "path"
    raise GigamilError(
        f"{out}: exists and is not a {what} (a {kind}); writing the {what} there would delete "
        "it: give a path that does not exist yet (or delete it first)"
    )


def csv_cut_short(path: str | Path) -> bool:
    """Whether the CSV at ``path`` ends inside a row: its last line has no line end and fewer
    fields than the header (pandas reads such a row with its missing cells empty, e.g. a
    prediction file cut after its ``pred`` column). A last line without a line end but with
    every field (a hand-edited file) is not."""
    import csv

    data = Path(path).read_bytes()
    if not data or data.endswith((b"\n", b"\r")):
        return False
    lines = data.decode("utf-8", errors="replace").splitlines()
    if len(lines) < 2:
        return False
    header, last = (next(csv.reader([line])) for line in (lines[0], lines[-1]))
    return len(last) < len(header)
