"""File names on the way out: ``Content-Disposition`` for any name, safe and unique zip names.

Browsers read ``filename*=UTF-8''...`` (RFC 6266 / RFC 8187) and keep non-ASCII names intact;
old clients and some download managers read only ``filename=``.  werkzeug's ``send_file``
drops every character that has no ASCII decomposition, so ``二维码.zip`` gets the fallback
``.zip``.  Here the fallback keeps what transliterates (``naïve café.txt`` →
``naive cafe.txt``) and otherwise becomes ``download`` with the original extension.

Inside a zip every member name is relative, free of ``..`` and of characters Windows refuses
(:func:`safe_arcname`), and unique the way Windows and macOS extract them (:class:`UniqueNames`).
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable
from urllib.parse import quote

__all__ = [
    "UniqueNames",
    "ascii_fallback",
    "content_disposition",
    "safe_arcname",
    "safe_filename",
    "split_extension",
]

# RFC 8187 attr-char: what may stay unencoded in ``filename*``.
_ATTR_CHARS = "!#$&+-.^_`|~"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Characters Windows refuses in file names; replaced so archives extract everywhere.
_NON_PORTABLE = re.compile(r'[<>:"|?*\\]')
_SPACES = re.compile(r"\s+")
# Kept in the ASCII fallback; "%" goes too: some clients percent-decode ``filename=``.
_FALLBACK_UNSAFE = re.compile(r"[^A-Za-z0-9 !#$&'()*+,\-.;=@\[\]^_`{}~]")
_DOUBLE_EXTENSIONS = (".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst")


def safe_filename(name: str, default: str = "download") -> str:
    """One file name, without directories, control characters or a path-traversal dot name.

    Not werkzeug's ``secure_filename``: that one drops every non-ASCII character
    (``二维码.png`` → ``png``), right for a path on disk, wrong for the name a user sees.
    """
    name = _CONTROL.sub("", unicodedata.normalize("NFC", name)).replace("\\", "/")
    name = _SPACES.sub(" ", name.rsplit("/", 1)[-1]).strip()
    return default if name in ("", ".", "..") else name


def safe_arcname(name: str) -> str:
    """A relative zip member name: no absolute path, no ``..``, portable characters.

    Only ``/`` separates folders (``\\`` is a character on Linux: it becomes ``_``, like the
    other characters Windows refuses).  Returns ``""`` when nothing but path syntax is
    there.  A trailing ``/`` (a directory) is kept.
    """
    parts = []
    for raw in unicodedata.normalize("NFC", name).split("/"):
        if raw in ("", ".", ".."):
            continue  # path syntax, not a name: "." and ".." would escape the extraction folder
        part = _NON_PORTABLE.sub("_", _SPACES.sub(" ", _CONTROL.sub("", raw)))
        # Windows drops trailing dots and spaces.  A name of nothing else ("...", " .. ",
        # ". .", legal on Linux) would vanish and its file take the folder's name; Python's
        # zipfile and Info-ZIP unzip both keep it with its dots as underscores ("___").  A
        # name cleaning empties ("\x01") is still a name: "_".
        parts.append(part.strip().rstrip(". ") or part.strip().replace(".", "_") or "_")
    is_dir = name.endswith("/")
    return "/".join(parts) + ("/" if is_dir and parts else "")


def split_extension(name: str) -> tuple[str, str]:
    """``("report", ".pdf")``; double extensions stay whole: ``("logs", ".tar.gz")``."""
    lower = name.lower()
    for double in _DOUBLE_EXTENSIONS:
        if lower.endswith(double) and len(name) > len(double):
            return name[: -len(double)], name[-len(double) :]
    return os.path.splitext(name)


def ascii_fallback(filename: str, default_stem: str = "download") -> str:
    """A readable ASCII name for clients that ignore ``filename*``.

    >>> ascii_fallback("naïve café.txt")
    'naive cafe.txt'
    >>> ascii_fallback("二维码.tar.gz")
    'download.tar.gz'
    """
    stem, ext = split_extension(safe_filename(filename, default_stem))
    ascii_stem = _to_ascii(stem)
    ascii_ext = _to_ascii(ext)
    if not ascii_ext.replace(".", "").isalnum():
        ascii_ext = ""  # a non-ASCII extension means nothing to an ASCII-only client
    if not any(c.isalnum() for c in ascii_stem):
        ascii_stem = default_stem
    return f"{ascii_stem}.{ascii_ext}" if ascii_ext else ascii_stem


def _to_ascii(text: str) -> str:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    # Quotes and backslashes cannot appear in a quoted-string without escapes that many
    # clients mishandle; they become "_" in the fallback (filename* keeps them).
    return _SPACES.sub(" ", _FALLBACK_UNSAFE.sub("_", text)).strip(" .")


def content_disposition(
    filename: str, *, as_attachment: bool = True, default_stem: str = "download"
) -> str:
    """The header value for ``filename``: ASCII ``filename=`` plus UTF-8 ``filename*``.

    >>> print(content_disposition("二维码.zip"))
    attachment; filename="download.zip"; filename*=UTF-8''%E4%BA%8C%E7%BB%B4%E7%A0%81.zip
    """
    kind = "attachment" if as_attachment else "inline"
    name = safe_filename(filename, default_stem)
    fallback = ascii_fallback(name, default_stem)
    value = f'{kind}; filename="{fallback}"'
    if fallback != name:
        value += "; filename*=UTF-8''" + quote(name, safe=_ATTR_CHARS)
    return value


class UniqueNames:
    """Makes zip member names unique: ``a.txt``, ``a (1).txt``, ``a (2).txt``.

    Compared case-insensitively, as Windows and macOS extract them, and a file never shares
    its name with a folder (``a`` and ``a/b.txt`` cannot both be extracted).  Folders of
    separate names merge; a *group* (the files of one directory source) keeps its tree
    together: the whole folder gets the number (``photos (1)/x.jpg``).
    """

    def __init__(self) -> None:
        self._files: set[str] = set()  # casefolded member names
        self._folders: set[str] = set()  # casefolded folder paths, stated or implied
        self._dirs: set[str] = set()  # casefolded folders that are members themselves
        self._groups: dict[int, str] = {}

    def claim(self, name: str, group: int | None = None) -> str:
        """The unique form of ``name`` (``"dir/"`` for a directory member)."""
        is_dir = name.endswith("/")
        *folders, last = name.rstrip("/").split("/")
        path = ""
        if group is not None:
            if group not in self._groups:
                head = self._free("", (folders or [last])[0], self._taken_by_any)
                self._folders.add(head.casefold())
                self._groups[group] = head
            if not folders:
                return self._dir(self._groups[group])  # the group's (empty) folder itself
            path, folders = self._groups[group], folders[1:]
        for folder in folders:  # folders of the same name merge; a file is in the way
            path = self._join(path, self._free(path, folder, self._files.__contains__))
            self._folders.add(path.casefold())
        if is_dir:
            return self._dir(self._join(path, self._free(path, last, self._taken_by_dir)))
        name = self._join(path, self._free(path, last, self._taken_by_any, file=True))
        self._files.add(name.casefold())
        return name

    def _dir(self, path: str) -> str:
        self._folders.add(path.casefold())
        self._dirs.add(path.casefold())
        return path + "/"

    def _taken_by_any(self, key: str) -> bool:
        return key in self._files or key in self._folders

    def _taken_by_dir(self, key: str) -> bool:
        return key in self._files or key in self._dirs

    def _free(
        self, parent: str, name: str, taken: Callable[[str], bool], *, file: bool = False
    ) -> str:
        stem, ext = split_extension(name) if file else (name, "")
        candidate, n = name, 0
        while taken(self._join(parent, candidate).casefold()):
            n += 1
            candidate = _numbered(stem, ext, n)
        return candidate

    @staticmethod
    def _join(parent: str, name: str) -> str:
        return f"{parent}/{name}" if parent else name


_NAME_MAX = 255  # bytes of one path component on Linux and macOS (UTF-8)


def _numbered(stem: str, ext: str, n: int) -> str:
    """``stem (n)ext``, the stem shortened so that it fits in :data:`_NAME_MAX` bytes."""
    suffix = f" ({n}){ext}"
    room = _NAME_MAX - len(suffix.encode())
    if room < 1:  # an extension of nearly 255 bytes: number the whole name instead
        stem, suffix = stem + ext, f" ({n})"
        room = _NAME_MAX - len(suffix.encode())
    return stem.encode()[:room].decode("utf-8", "ignore") + suffix
