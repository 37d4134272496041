"""Where outputs go, and how they are committed: all of a run's outputs, or none.

Every output is first written to a hidden temporary sibling (same folder, same suffix), named
after its target, this host and this process (``.cells.tmp-3f2a1c-4711-9e8d7c6b.csv``). A
single output is then renamed into place (:func:`atomic_output`); the outputs of one run are
committed together by an :class:`OutputSet`: a small journal beside the first output lists
them all, every temporary is renamed into place, and the journal is removed. A run that is
killed leaves either temporaries (removed by the next run that writes the same outputs, once
the process that made them is gone) or, if killed while committing, a journal: the next run
recognises that output set as never finished and replaces it without ``overwrite``.

Checks made before any work (:func:`check_output`, :meth:`OutputSet.check`): the name fits the
file system, the folder can be written (a probe file is created and removed), an existing
output is replaced only with ``overwrite``, and, for a set, the outputs differ from each other
and from every input, even with ``overwrite``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from cellcut.errors import InputFileError, OutputError

NAME_MAX = 255
"""Longest file name (bytes, UTF-8) accepted where the file system does not say."""
_COMPOUND_SUFFIXES = (".ome.zarr", ".ome.tif", ".ome.tiff", ".nii.gz", ".summary.json")
_STEM_IN_TEMP = 80  # characters of the target's stem kept in a temporary name
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def split_location(location: str | os.PathLike) -> tuple[Path, str | None]:
    """Split ``file.h5:dataset`` (or ``store.zarr:path/in/group``) into path and key.

    A colon counts as separator only after a known HDF5 or zarr suffix, so Windows drive
    letters and colons inside directory names are left alone.
    """
    text = os.fspath(location)
    match = re.match(r"^(.*?\.(?:h5|hdf5|hdf|zarr))[:](.+)$", text, flags=re.IGNORECASE)
    if match and not text.lower().endswith((".h5", ".hdf5", ".hdf", ".zarr")):
        return Path(match.group(1)), match.group(2).strip("/")
    return Path(text), None


def _name_max(folder: Path) -> int:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    return NAME_MAX


def check_name_length(path: Path, kind: str = "output") -> None:
    """Refuse a path with a component longer than the file system allows, in one line."""
    limit = NAME_MAX
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > limit:
            error = InputFileError if kind == "input" else OutputError
            raise error(
                f"cannot {'read' if kind == 'input' else 'write'} {kind}",
                f"the name '{part[:24]}…' is {size} bytes long, more than the {limit} a file "
                "name may have",
                "choose a shorter name",
                file=f"{str(path)[:60]}…",
            )


def _existing_ancestor(path: Path) -> Path:
    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable(target: Path, what: str = "output", inside: bool = False) -> None:
    """That ``target`` can be written: a file is created and removed in its nearest existing
    folder (with ``inside``, in ``target`` itself where it is a folder: a run folder), the only
    test that holds everywhere (permissions, read-only mounts, /proc, ACLs)."""
    folder = target if inside and target.is_dir() else _existing_ancestor(target)
    if not folder.is_dir():
        raise OutputError(
            f"cannot write {what}",
            f"{folder} is a file, not a folder",
            "choose a path in a folder you can write to",
            file=target,
        )
    probe = folder / f".cellcut-probe-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(
            f"cannot write {what}",
            f"the folder {folder} is not writable ({e.strerror or e})",
            "choose a path in a folder you can write to",
            file=target,
        ) from e


def make_parents(path: Path) -> list[Path]:
    """Create the missing folders above ``path``; returns those it created."""
    missing = []
    folder = path.parent
    while str(folder) and not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(
            "cannot write output",
            f"its folder cannot be created ({e.strerror or e})",
            "choose a path in a folder you can write to",
            file=path,
        ) from e
    return missing


def check_output(path: str | os.PathLike, overwrite: bool = False, create: bool = True) -> Path:
    """Check before any work that ``path`` can be written; with ``create``, make missing
    parent folders.

    Raises
    ------
    OutputError
        The output exists (and ``overwrite`` is False), its name is too long, or its folder
        cannot be created or written.
    """
    target, _ = split_location(path)
    check_name_length(target)
    if target.exists() and not overwrite:
        raise OutputError(
            "output exists",
            "cellcut does not overwrite outputs by default",
            "pass --overwrite (overwrite=True) or choose another path",
            file=target,
        )
    if create:
        make_parents(target)
    check_writable(target)
    return target


# --------------------------------------------------------------------------------------------
# Temporary siblings


def _split_suffix(name: str) -> tuple[str, str]:
    lower = name.lower()
    suffix = next((s for s in _COMPOUND_SUFFIXES if lower.endswith(s)), Path(name).suffix)
    return (name[: len(name) - len(suffix)] if suffix else name), suffix


def temp_sibling(target: Path) -> Path:
    """A hidden temporary path beside ``target`` with its suffix (so its format is known),
    naming this host and process."""
    stem, suffix = _split_suffix(target.name)
    tag = f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return target.with_name(f".{stem[:_STEM_IN_TEMP]}.tmp-{tag}{suffix}")


def _journal(target: Path) -> Path:
    return target.with_name(f".{target.name[:_STEM_IN_TEMP]}.cellcut-commit.json")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and (".tmp-" in path.name or ".old-" in path.name)


def remove_stale_temporaries(*targets: Path) -> list[Path]:
    """Remove the temporaries of ``targets`` left by processes of this host that are gone (a
    killed run); returns what was removed. Each folder is listed once, whatever the number of
    targets in it; a target that is itself a temporary (a staged output) is skipped, its own
    temporaries being matched by those of the final output."""
    tag = r"\.(?:tmp|old)-(\w{6})-(\d+)-[0-9a-f]{8}"
    by_folder: dict[Path, list[re.Pattern]] = {}
    for target in targets:
        if _is_temporary(target):
            continue
        stem, suffix = _split_suffix(target.name)
        pattern = re.compile(  # also a temporary of a temporary (an atomic write into it)
            rf"^\.\.?{re.escape(stem[:_STEM_IN_TEMP])}{tag}(?:{tag})?{re.escape(suffix)}$"
        )
        folder = target.parent if str(target.parent) else Path(".")
        by_folder.setdefault(folder, []).append(pattern)
    removed = []
    for folder, patterns in by_folder.items():
        with contextlib.suppress(OSError):
            for entry in folder.iterdir():
                for pattern in patterns:
                    match = pattern.match(entry.name)
                    if match and match.group(1) == _HOST and not _alive(int(match.group(2))):
                        _remove(entry)
                        removed.append(entry)
                        break
    return removed


def _commit(tmp: Path, target: Path) -> None:
    """Move a finished temporary output into place (a folder's old version removed after)."""
    if tmp.is_dir():
        trash = None
        if target.exists():
            stem, suffix = _split_suffix(target.name)
            tag = f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            trash = target.with_name(f".{stem[:_STEM_IN_TEMP]}.old-{tag}{suffix}")
            os.replace(target, trash)
        os.replace(tmp, target)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    else:
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike) -> Iterator[Path]:
    """Write an output all at once or not at all.

    Yields a temporary sibling path (same folder, same suffix, hidden name) to write to; when
    the block ends without error the finished file or folder replaces ``target`` in one
    rename, and whatever happens the temporary path is gone afterwards (temporaries of the
    same target left by killed processes are removed first)::

        with atomic_output("cells.csv") as tmp:
            tmp.write_text(text)
    """
    target = Path(target)
    remove_stale_temporaries(target)  # a killed writer's leftovers
    tmp = temp_sibling(target)
    try:
        yield tmp
        _commit(tmp, target)
    finally:
        _remove(tmp)


# --------------------------------------------------------------------------------------------
# A run's outputs, committed together


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return os.path.abspath(a) == os.path.abspath(b)


class OutputSet:
    """The outputs of one run, written to temporaries and committed together.

    ``targets`` maps a role (``"labels"``, ``"statistics"``…) to a location (``None``: not
    wanted); the first is the main result, committed last, so that where it exists without a
    journal beside it, every other output exists complete. Use::

        outputs = OutputSet({"labels": out, "statistics": csv}, inputs=[image])
        outputs.check()            # before any work
        with outputs:              # on an exception every temporary is removed
            write(outputs.staged("labels"))
            ...
            outputs.commit()       # all renamed into place, or (killed) recognised as unfinished
    """

    def __init__(
        self,
        targets: Mapping[str, str | os.PathLike | None],
        *,
        overwrite: bool = False,
        inputs: Iterable[str | os.PathLike | None] = (),
    ) -> None:
        self.locations = {k: os.fspath(v) for k, v in targets.items() if v is not None}
        self.paths = {k: split_location(v)[0] for k, v in self.locations.items()}
        self.overwrite = overwrite
        self.inputs = [split_location(i)[0] for i in inputs if i is not None]
        self._staged: dict[str, Path] = {}
        self._created: list[Path] = []
        self.replaced_unfinished: list[Path] = []

    def check(self) -> None:
        """Before any work: names, distinctness, writability, and existing outputs."""
        roles = list(self.paths)
        for i, role in enumerate(roles):
            path = self.paths[role]
            check_name_length(path)
            for other in roles[:i]:
                if _same_file(path, self.paths[other]):
                    raise OutputError(
                        "outputs collide",
                        f"the {role} and the {other} would both be written to {path}",
                        "give each output its own path",
                        file=path,
                    )
            for source in self.inputs:
                if _same_file(path, source):
                    raise OutputError(
                        "output is an input",
                        f"the {role} would replace the input {source} (refused even with "
                        "--overwrite)",
                        "write the result to another path",
                        file=path,
                    )
        self.replaced_unfinished = self._unfinished()
        paths = list(self.paths.values())
        remove_stale_temporaries(*paths, *(_journal(p) for p in paths))
        for role in roles:
            path = self.paths[role]
            if path.exists() and not self.overwrite and path not in self.replaced_unfinished:
                raise OutputError(
                    "output exists",
                    f"the {role} output exists and cellcut does not overwrite outputs by default",
                    "pass --overwrite (overwrite=True) or choose another path",
                    file=path,
                )
            check_writable(path)

    def _unfinished(self) -> list[Path]:
        """Outputs listed by the journal of a commit that never ended (a killed run)."""
        found: list[Path] = []
        for path in self.paths.values():
            journal = _journal(path)
            if not journal.exists():
                continue
            try:
                listed = [Path(p) for p in json.loads(journal.read_text())["targets"]]
            except (OSError, ValueError, KeyError, TypeError):
                listed = [path]
            found += [p for p in listed if p not in found]
        return found

    def staged(self, role: str) -> str:
        """The location to write ``role`` to (a temporary sibling; an HDF5 key is kept)."""
        path = self.paths[role]
        if role not in self._staged:
            self._make_parent(path)
            self._staged[role] = temp_sibling(path)
        _, key = split_location(self.locations[role])
        tmp = self._staged[role]
        return f"{tmp}:{key}" if key else str(tmp)

    def _make_parent(self, path: Path) -> None:
        self._created += [f for f in make_parents(path) if f not in self._created]

    def commit(self) -> dict[str, Path]:
        """Rename every staged output into place, under a journal; returns the final paths."""
        for path in self.replaced_unfinished:
            if not any(path == p for p in self.paths.values()):
                _remove(path)
        staged = {role: self.paths[role] for role in self._staged}
        if not staged:
            return {}
        first = next(iter(staged.values()))
        journal = _journal(first)
        with atomic_output(journal) as tmp:
            tmp.write_text(json.dumps({"targets": [str(p) for p in staged.values()]}))
        for role, target in reversed(staged.items()):  # the first (the main result) last
            _commit(self._staged[role], target)
        for path in self.paths.values():
            if _journal(path) != journal:
                _remove(_journal(path))
        journal.unlink()
        self._staged.clear()
        self._created.clear()
        return staged

    def discard(self) -> None:
        """Remove every temporary and every folder made for the outputs (if left empty)."""
        for tmp in self._staged.values():
            _remove(tmp)
        self._staged.clear()
        for folder in sorted(self._created, key=lambda f: len(f.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._created.clear()

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def check_input_path(location: str | os.PathLike) -> None:
    """One line for an input path the operating system cannot even look up."""
    path, _ = split_location(location)
    check_name_length(path, "input")
    try:
        path.stat()
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise InputFileError(
                "cannot read volume",
                f"the path cannot be looked up ({e.strerror or e})",
                "check the path",
                file=path,
            ) from e


def this_process() -> dict[str, object]:
    """Who is writing: written into markers of work in progress (see :func:`process_gone`)."""
    return {"host": _HOST, "pid": os.getpid()}


def process_gone(record: Mapping[str, object]) -> bool | None:
    """Whether the process of a :func:`this_process` record has ended: True or False on this
    host, None (cannot tell) on another."""
    if record.get("host") != _HOST:
        return None
    try:
        return not _alive(int(record["pid"]))  # type: ignore[call-overload]
    except (KeyError, TypeError, ValueError):
        return None


def workspace_folder(prefix: str) -> Path:
    """A new folder in the system's temporary folder for a run's intermediate arrays, named
    with this process; folders of the same kind left by killed processes are removed first
    (they can hold gigabytes)."""
    import tempfile

    pattern = re.compile(rf"^{re.escape(prefix)}-{_HOST}-(\d+)-")
    root = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            match = pattern.match(entry.name)
            if match and entry.is_dir() and not _alive(int(match.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-{_HOST}-{os.getpid()}-"))
