"""The dataset's files as every stage sees them: found inside the root, and read back only as the
scan saw them.

Symbolic links are followed while they stay inside the dataset root, files and folders alike; a
link that leads out of the root is not followed and becomes a row with status ``outside_root``
(nothing outside the root is ever read, hashed or shown). A folder that cannot be listed, or a
link back to a folder that contains it, is a row too. After the scan, a stage reads a file
through :class:`ScannedFile`, which refuses one whose size or SHA-256 is no longer the scan's, so a
changed file never lends its new content to the old row.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from fracture_curate.dicom import DEFAULT_WINDOW, Window
from fracture_curate.images import ImageLoadError, LoadedImage, load_image

RESCAN = "run `curate scan` again"


@dataclass(frozen=True)
class ListedFiles:
    """What a walk of the dataset root found."""

    files: list[str]  #: relative POSIX paths of the files to inspect, sorted
    skipped: dict[str, tuple[str, str]] = field(default_factory=dict)  #: path -> (status, reason)


def content_id(data: bytes) -> str:
    """A file's ``image_id``: the SHA-256 of its bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


def list_files(root: Path, *, exclude: Sequence[Path] = ()) -> ListedFiles:
    """Every file under ``root`` by the symlink policy above; ``exclude`` folders are skipped."""
    root = Path(os.path.realpath(root))
    excluded = {Path(os.path.realpath(path)) for path in exclude}
    files: list[str] = []
    skipped: dict[str, tuple[str, str]] = {}

    def walk(folder: Path, relative: PurePosixPath, ancestors: frozenset[Path]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            skipped[relative.as_posix()] = (
                "unreadable",
                f"cannot list the folder: {error.strerror or error}",
            )
            return
        for entry in entries:
            path = relative / entry.name
            if entry.is_symlink() and not is_inside(Path(os.path.realpath(entry.path)), root):
                kind = "folder" if entry.is_dir() else "file"
                skipped[path.as_posix()] = (
                    "outside_root",
                    f"symbolic link to a {kind} outside the dataset root; not followed",
                )
            elif entry.is_dir(follow_symlinks=True):
                real = Path(os.path.realpath(entry.path))
                if real in ancestors:
                    skipped[path.as_posix()] = (
                        "unreadable",
                        "symbolic link to a folder that contains it (a loop); not followed",
                    )
                elif real not in excluded:
                    walk(Path(entry.path), path, ancestors | {real})
            else:
                files.append(path.as_posix())

    walk(root, PurePosixPath(), frozenset({root}))
    return ListedFiles(files=sorted(files), skipped=skipped)


def is_inside(path: Path, root: Path) -> bool:
    """Whether a resolved ``path`` is ``root`` or lies below it."""
    return path == root or root in path.parents


def resolve_inside(root: Path, relative: str) -> Path:
    """The real path of ``root / relative``; an ImageLoadError when links lead out of the root."""
    path = Path(os.path.realpath(Path(root) / relative))
    if not is_inside(path, Path(os.path.realpath(root))):
        raise ImageLoadError(
            "outside_root", "a symbolic link leads the path out of the dataset root; not read"
        )
    return path


def is_utf8(relative: str) -> bool:
    """Whether a path found on disk is valid UTF-8 (undecodable bytes arrive as surrogates)."""
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_path(path: str | Path, show: bool) -> str:
    """How a path appears in an output meant to be shared (a report, metrics.json): its last
    part only, so no machine's folders leak, unless ``show`` asks for the whole resolved path."""
    resolved = Path(path).resolve()  # "." is named by the folder it stands for
    return str(resolved) if show else resolved.name


def printable_path(relative: str) -> str:
    """A path as text that can be stored and shown: undecodable bytes as ``\\xNN``."""
    return os.fsencode(relative).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class ScannedFile:
    """A file of the dataset as the scan recorded it: where it is, its size and SHA-256, and
    the window the scan decoded it with when it is a DICOM."""

    root: Path
    path: str  #: relative to ``root``, as in the manifests
    image_id: str
    size: int
    window: Window = DEFAULT_WINDOW

    def read(self) -> bytes:
        """The file's bytes, if they are still the ones scanned; else an ImageLoadError whose
        status is ``vanished``, ``changed``, ``outside_root`` or ``unreadable``."""
        with _file_errors():
            data = resolve_inside(self.root, self.path).read_bytes()
        if len(data) != self.size or content_id(data) != self.image_id:
            raise ImageLoadError("changed", f"the file changed since the scan; {RESCAN}")
        return data

    def load(self, draft_size: tuple[int, int] | None = None) -> LoadedImage:
        """The file decoded as the scan decoded it (see :func:`load_image`); an ImageLoadError
        when it cannot be read or decoded."""
        return load_image(self.read(), draft_size=draft_size, window=self.window)

    def check_size(self) -> None:
        """The quick check, no byte read: the file is there, inside the root, of the scan's
        size; else the ImageLoadError :meth:`read` would raise."""
        with _file_errors():
            size = resolve_inside(self.root, self.path).stat().st_size
        if size != self.size:
            raise ImageLoadError("changed", f"the file changed since the scan; {RESCAN}")


def scanned_files(
    frame: pd.DataFrame, root: Path, window: Window = DEFAULT_WINDOW
) -> list[ScannedFile]:
    """The files of a manifest's rows (columns ``path``, ``image_id``, ``bytes``), to be decoded
    with ``window`` (the manifest's :func:`~fracture_curate.manifest.recorded_window`)."""
    return [
        ScannedFile(Path(root), path, image_id, int(size), window)
        for path, image_id, size in zip(
            frame["path"], frame["image_id"], frame["bytes"], strict=True
        )
    ]


def recheck(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    """``frame`` with ``status`` and ``reason`` set on the ``ok`` rows whose file is gone, has
    another size or now leads out of the root: the quick check that stages which do not read
    the files make before passing rows on."""
    result = frame.copy()
    ok = frame[frame["status"] == "ok"]
    for index, file in zip(ok.index, scanned_files(ok, root), strict=True):
        try:
            file.check_size()
        except ImageLoadError as error:
            result.loc[index, ["status", "reason"]] = [error.status, error.reason]
    return result


def mark_problems(frame: pd.DataFrame, problems: dict[str, list[str]]) -> pd.DataFrame:
    """``frame`` with ``status`` and ``reason`` set on the ``ok`` rows of the image ids in
    ``problems`` (image id -> [status, reason], as embed records the files it could not read)."""
    result = frame.copy()
    hit = (frame["status"] == "ok") & frame["image_id"].isin(list(problems))
    for index, image_id in frame.loc[hit, "image_id"].items():
        result.loc[index, ["status", "reason"]] = list(problems[image_id])
    return result


@contextmanager
def _file_errors() -> Iterator[None]:
    """A file that is gone or cannot be read, as the ImageLoadError a row records."""
    try:
        yield
    except FileNotFoundError as error:
        raise ImageLoadError("vanished", f"the file is gone since the scan; {RESCAN}") from error
    except OSError as error:
        reason = f"cannot read the file: {error.strerror or error}"
        raise ImageLoadError("unreadable", reason) from error
