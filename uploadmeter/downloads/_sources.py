"""What :func:`uploadmeter.downloads.download` accepts, resolved into the entries it sends.

A *source* is any of:

* ``pathlib.Path`` (or any ``os.PathLike``): a file, or a directory (zipped, relative names);
* ``bytes`` and ``str``: content (a ``str`` is text, encoded with the download's charset);
* a binary file-like object (anything with ``read``);
* :class:`Url`: an ``http(s)`` URL, fetched by a :class:`~uploadmeter.downloads.RemoteFetcher`;
* :class:`~uploadmeter.downloads.S3Object`: an object in an S3-compatible store, streamed;
* :class:`Item`: any source with an explicit name, charset or content type;
* an object that says what to download: one implementing :class:`Downloadable`, or a
  dataclass with a :func:`source_field` (and optionally a :func:`name_field`);
* a mapping ``{name: source}`` or any other iterable of sources, mixed freely.

A bare ``str`` is always text, never a path or a URL: a user-supplied string can then never
make the server read a file or call a URL by accident.  Paths and URLs say what they are.
"""

from __future__ import annotations

import dataclasses
import mimetypes
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from uploadmeter.downloads._disposition import safe_arcname, safe_filename
from uploadmeter.downloads._objects import S3Object, guess_type, head_object, open_object
from uploadmeter.exceptions import SourceError, SourceNotFound

__all__ = [
    "NAME_KEY",
    "SOURCE_KEY",
    "Downloadable",
    "Entry",
    "Item",
    "Resolution",
    "Url",
    "name_field",
    "resolve",
    "source_field",
]

SOURCE_KEY = "uploadmeter.source"
NAME_KEY = "uploadmeter.name"
SourceKind = Literal["auto", "path", "url", "text"]


@dataclass(frozen=True)
class Url:
    """An ``http(s)`` URL to fetch and send.  Only hosts the fetcher allows are fetched."""

    url: str
    name: str | None = None


@dataclass(frozen=True)
class Item:
    """Any source with an explicit file name (``"sub/name.txt"`` inside zips), charset or type."""

    source: Any
    name: str | None = None
    charset: str | None = None
    content_type: str | None = None


@runtime_checkable
class Downloadable(Protocol):
    """An object that says what to download: return any source, e.g. ``Item(url, name)``."""

    def download_item(self) -> Any: ...


def source_field(kind: SourceKind = "auto", *, suffix: str | None = None, **kwargs: Any) -> Any:
    """A dataclass field holding what to download.

    ``kind`` says what a ``str`` value is (``"url"``, ``"path"`` or ``"text"``); ``"auto"``
    goes by the value's type (``Path`` is a path, ``str`` is text).  The entry is named after
    the object's :func:`name_field` plus ``suffix`` (default: the source's own extension)::

        @dataclass
        class Device:
            name: str = name_field()
            qr_code: str = source_field("url", suffix=".png")

        download([Device("Printer", "https://cdn.example/qr/1")], "二维码.zip",
                 remote=fetcher)       # -> 二维码.zip containing "Printer.png"
    """
    metadata = dict(kwargs.pop("metadata", None) or {})
    metadata[SOURCE_KEY] = {"kind": kind, "suffix": suffix}
    return field(metadata=metadata, **kwargs)


def name_field(**kwargs: Any) -> Any:
    """A dataclass field whose value names the object's download entries."""
    metadata = dict(kwargs.pop("metadata", None) or {})
    metadata[NAME_KEY] = True
    return field(metadata=metadata, **kwargs)


EntryKind = Literal["path", "dir", "data", "file", "remote", "error"]


@dataclass
class Entry:
    """One file (or empty directory) of a download, before it is sent.

    With ``add_extension`` (a dataclass's name field) the source's extension is added to
    ``name`` by :func:`finalize_name`: a remote file's is known only once it is fetched.
    A fetched remote entry gets its body as ``file``; every ``file`` is closed once sent.
    """

    kind: EntryKind
    name: str
    path: str | None = None
    data: bytes | None = None
    file: IO[bytes] | None = None
    url: str | None = None
    size: int | None = None
    content_type: str | None = None
    charset: str | None = None  # text: the encoding of ``data``
    add_extension: bool = False
    error: SourceError | None = None
    group: int | None = None  # entries of one directory source inside a collection
    etag: str | None = None  # the source's own (an object's), for a single file
    last_modified: datetime | None = None

    def __post_init__(self) -> None:
        if self.data is not None:
            self.size = len(self.data)


@dataclass
class Resolution:
    """The entries of a download, and whether it is one file or a collection (a zip)."""

    entries: list[Entry]
    collection: bool
    suggested_name: str | None = None


def resolve(
    source: Any,
    *,
    charset: str = "utf-8",
    root: str | os.PathLike[str] | None = None,
) -> Resolution:
    """Turn any source into entries.  Missing paths become ``error`` entries (not raises).

    :param root: when given, every path must lie inside this directory (after resolving
        symlinks); others read as not found.
    :raises TypeError: for a value that is no source at all (a programming error).
    """
    resolver = _Resolver(charset, os.path.realpath(root) if root is not None else None)
    entries = list(resolver.walk(source, None, None, None, top=True))
    collection = resolver.collection or len(entries) != 1
    return Resolution(entries, collection, resolver.suggested_name)


class _Resolver:
    def __init__(self, charset: str, root: str | None) -> None:
        self.charset = charset
        self.root = root
        self.collection = False
        self.suggested_name: str | None = None
        self._groups = 0

    def walk(
        self,
        obj: Any,
        name: str | None,
        charset: str | None,
        content_type: str | None,
        *,
        top: bool = False,
        add_extension: bool = False,
    ) -> Iterator[Entry]:
        if isinstance(obj, Item):
            yield from self.walk(
                obj.source,
                obj.name or name,
                obj.charset or charset,
                obj.content_type or content_type,
                top=top,
                add_extension=add_extension and not obj.name,
            )
        elif isinstance(obj, Url):
            yield self._url(obj.url, obj.name or name, content_type, add_extension)
        elif isinstance(obj, str):
            cs = charset or self.charset
            yield Entry(
                "data",
                name or "text.txt",
                data=obj.encode(cs),
                charset=cs,
                content_type=content_type,
                add_extension=add_extension,
            )
        elif isinstance(obj, (bytes, bytearray, memoryview)):
            yield Entry(
                "data",
                name or "data.bin",
                data=bytes(obj),
                content_type=content_type,
                add_extension=add_extension,
            )
        elif isinstance(obj, S3Object):  # (a dataclass, but a source of its own)
            yield self._object(obj, name, content_type, add_extension)
        elif isinstance(obj, os.PathLike):
            yield from self._path(os.fspath(obj), name, content_type, top, add_extension)
        elif callable(getattr(obj, "read", None)):
            yield self._file(obj, name, content_type, add_extension)
        elif isinstance(obj, Downloadable):
            yield from self.walk(obj.download_item(), name, charset, content_type, top=top)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            yield from self._dataclass(obj, top)
        elif isinstance(obj, Mapping):
            self.collection = True
            for key, value in obj.items():
                yield from self.walk(value, str(key), charset, content_type)
        elif isinstance(obj, Iterable):
            self.collection = True
            for value in obj:
                yield from self.walk(value, None, charset, content_type)
        else:
            raise TypeError(f"Cannot download a {type(obj).__name__}: not a download source")

    # -- kinds ---------------------------------------------------------------------------

    def _url(
        self, url: str, name: str | None, content_type: str | None, add_extension: bool
    ) -> Entry:
        if name is None:
            path = urlsplit(url).path
            name = safe_filename(unquote(path.rsplit("/", 1)[-1]), "download")
            # "/qr?id=3" names no type: the response's Content-Type will.
            add_extension = not os.path.splitext(name)[1]
        return Entry(
            "remote", name, url=url, content_type=content_type, add_extension=add_extension
        )

    def _object(
        self, obj: S3Object, name: str | None, content_type: str | None, add_extension: bool
    ) -> Entry:
        name = name or obj.name
        if add_extension and name is not None:
            name += os.path.splitext(obj.key)[1]
        try:
            head = head_object(obj)  # the size, before the response starts
        except SourceError as exc:
            return Entry("error", name or obj.filename, error=exc)
        return Entry(
            "file",
            name or obj.filename,
            file=open_object(obj, head),
            size=head.size,
            content_type=content_type or guess_type(obj, head),
            etag=head.etag,
            last_modified=head.last_modified,
        )

    def _file(
        self, file: Any, name: str | None, content_type: str | None, add_extension: bool
    ) -> Entry:
        if name is None:
            own = getattr(file, "name", None)
            name = safe_filename(own, "file.bin") if isinstance(own, str) else "file.bin"
        size = None
        try:
            if file.seekable():
                here = file.tell()
                size = file.seek(0, os.SEEK_END) - here
                file.seek(here)
        except (AttributeError, OSError, ValueError):
            size = None
        return Entry(
            "file",
            name,
            file=file,
            size=size,
            content_type=content_type,
            add_extension=add_extension,
        )

    def _path(
        self,
        path: str,
        name: str | None,
        content_type: str | None,
        top: bool,
        add_extension: bool,
    ) -> Iterator[Entry]:
        base = safe_filename(os.path.basename(os.path.normpath(path)), "download")
        try:
            real = self._inside_root(path)
            st = os.stat(real)
        except (OSError, SourceNotFound):
            error = SourceNotFound(f"{name or base} was not found.")
            yield Entry("error", name or base, error=error)
            return
        if not stat.S_ISDIR(st.st_mode):
            if add_extension and name is not None:
                name += os.path.splitext(base)[1]
            yield Entry(
                "path",
                name or base,
                path=real,
                size=st.st_size,
                content_type=content_type,
            )
            return
        self.collection = True
        if top:
            self.suggested_name = f"{name or base}.zip"
            prefix, group = "", None  # the directory is the download: its files at the top
        else:
            prefix = safe_arcname((name or base).rstrip("/")) or base
            prefix, group = prefix + "/", self._groups
            self._groups += 1
        for entry in self._directory(real, prefix):
            entry.group = group
            yield entry

    def _directory(self, root: str, prefix: str) -> Iterator[Entry]:
        """Files under ``root`` in a stable order; empty directories kept.

        Symlinked directories are not followed, and symlinked files only when they resolve
        inside ``root``: a link planted in a shared folder must not export the server's files.
        """
        found = False
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            files = []
            for filename in sorted(filenames):
                # Resolved now and sent from here: a link cannot be swapped afterwards.
                full = os.path.realpath(os.path.join(dirpath, filename))
                if not _is_inside(full, root):
                    continue
                try:
                    st = os.stat(full)
                except OSError:
                    continue  # vanished or dangling: nothing to send
                if stat.S_ISREG(st.st_mode):
                    files.append((filename, full, st))
            if not files and not dirnames and rel_dir:
                found = True
                yield Entry("dir", prefix + rel_dir)
            for filename, full, st in files:
                found = True
                yield Entry(
                    "path",
                    prefix + rel_dir + filename,
                    path=full,
                    size=st.st_size,
                )
        if not found and prefix:
            yield Entry("dir", prefix)

    def _dataclass(self, obj: Any, top: bool) -> Iterator[Entry]:
        fields = dataclasses.fields(obj)
        stem = None
        for f in fields:
            if f.metadata.get(NAME_KEY):
                value = getattr(obj, f.name)
                stem = None if value is None else str(value)
        sources = [f for f in fields if SOURCE_KEY in f.metadata]
        if not sources:
            raise TypeError(
                f"Cannot download a {type(obj).__name__}: it has no source_field() "
                "and does not implement download_item()"
            )
        if len(sources) > 1:
            self.collection = True
        for f in sources:
            value = getattr(obj, f.name)
            if value is None:
                continue
            spec = f.metadata[SOURCE_KEY]
            kind, suffix = spec["kind"], spec["suffix"]
            if kind == "url":
                value = Url(str(value))
            elif kind == "path":
                value = Path(value)
            elif kind == "text":
                value = str(value)
            name = None if stem is None else stem + (suffix or "")
            yield from self.walk(
                value, name, None, None, top=top, add_extension=name is not None and suffix is None
            )

    def _inside_root(self, path: str) -> str:
        """The real path, when it may be sent.  Every path source passes here first."""
        try:
            real = os.path.realpath(path)
        except ValueError:  # "embedded null byte": no file can have that name
            raise SourceNotFound("not a valid path") from None
        if self.root is not None and not _is_inside(real, self.root):
            raise SourceNotFound("outside the download root")
        return real


def _is_inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def extension_for(content_type: str | None) -> str:
    """A file extension for a MIME type (``image/png`` → ``.png``), or ``""``."""
    if not content_type:
        return ""
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime in ("application/octet-stream", ""):
        return ""
    return _PREFERRED_EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ""


# mimetypes.guess_extension picks odd ones for a few common types (".jpe", ".bat").
_PREFERRED_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "text/plain": ".txt",
    "application/zip": ".zip",
    "image/svg+xml": ".svg",
}


def finalize_name(entry: Entry) -> str:
    """The entry's name once its source is known, as a safe zip member name."""
    name = entry.name
    if entry.add_extension:
        source_ext = ""
        if entry.url:
            source_ext = os.path.splitext(urlsplit(entry.url).path)[1]
        text = "text/plain" if entry.charset else None
        name += source_ext or extension_for(entry.content_type or text)
    if entry.kind == "dir":
        return safe_arcname(name.rstrip("/") + "/")
    return safe_arcname(name) or "download"
