"""``Content-Disposition`` for any file name, and safe names inside zip archives.

Browsers read ``filename*=UTF-8''...`` (RFC 6266 / RFC 8187) and keep non-ASCII names intact;
old clients and some download managers read only ``filename=``.  werkzeug's ``send_file``
drops every character that has no ASCII decomposition, so ``二维码.zip`` gets the fallback
``.zip``.  Here the fallback keeps what transliterates (``naïve café.txt`` →
``naive cafe.txt``) and otherwise becomes ``download`` with the original extension.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

__all__ = ["ascii_fallback", "content_disposition", "safe_arcname", "safe_filename"]

# RFC 8187 attr-char minus nothing: what may stay unencoded in ``filename*``.
_ATTR_CHARS = "!#$&+-.^_`|~"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Characters Windows refuses in file names; replaced so archives extract everywhere.
_NON_PORTABLE = re.compile(r'[<>:"|?*\\]')
_SPACES = re.compile(r"\s+")
# Kept in the ASCII fallback; "%" goes too: some clients percent-decode ``filename=``.
_FALLBACK_UNSAFE = re.compile(r"[^A-Za-z0-9 !#$&'()*+,\-.;=@\[\]^_`{}~]")


def safe_filename(name: str, default: str = "download") -> str:
    """One file name, without directories, control characters or a path-traversal dot name."""
    name = unicodedata.normalize("NFC", name)
    name = _CONTROL.sub("", name).replace("\\", "/")
    name = name.rsplit("/", 1)[-1]
    name = _SPACES.sub(" ", name).strip()
    if name in ("", ".", ".."):
        return default
    return name


def safe_arcname(name: str) -> str:
    """A relative zip member name: no absolute path, no ``..``, portable characters.

    Returns ``""`` when nothing usable is left.  A trailing ``/`` (a directory) is kept.
    """
    is_dir = name.endswith(("/", "\\"))
    parts = []
    for part in _CONTROL.sub("", unicodedata.normalize("NFC", name)).replace("\\", "/").split("/"):
        part = _NON_PORTABLE.sub("_", _SPACES.sub(" ", part)).strip()
        # Windows also refuses trailing dots; "." and ".." would escape the extraction dir.
        part = part.rstrip(".").rstrip() if part not in (".", "..") else ""
        if part:
            parts.append(part)
    if not parts:
        return ""
    return "/".join(parts) + ("/" if is_dir else "")


def ascii_fallback(filename: str, default_stem: str = "download") -> str:
    """A readable ASCII name for clients that ignore ``filename*``.

    >>> ascii_fallback("naïve café.txt")
    'naive cafe.txt'
    >>> ascii_fallback("二维码.zip")
    'download.zip'
    """
    filename = safe_filename(filename, default_stem)
    stem, dot, ext = filename.rpartition(".")
    if not dot or not stem:  # no extension, or a dot file such as ".zip"
        stem, ext = (filename, "") if not dot else ("", ext)
    ascii_stem = _to_ascii(stem)
    ascii_ext = _to_ascii(ext)
    if not ascii_ext.isalnum():
        ascii_ext = ""  # a non-ASCII extension means nothing to an ASCII-only client
    if not any(c.isalnum() for c in ascii_stem):
        ascii_stem = default_stem
    return f"{ascii_stem}.{ascii_ext}" if ascii_ext else ascii_stem


def _to_ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    text = decomposed.encode("ascii", "ignore").decode("ascii")
    # Quotes and backslashes cannot appear in a quoted-string without escapes that many
    # clients mishandle; they become "_" in the fallback (filename* keeps them).
    text = _FALLBACK_UNSAFE.sub("_", text)
    return _SPACES.sub(" ", text).strip(" .")


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
