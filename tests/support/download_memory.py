"""``python -m tests.support.download_memory DIR``: how much Python memory a streamed zip costs.

Streams four 64 MiB sparse files and a 16 MiB unseekable stream as one zip through
:func:`uploadmeter.download`, iterating the response the way a WSGI server does, and prints
``{"received": bytes, "peak": bytes}`` (the tracemalloc peak while streaming) as JSON.

It runs in a process of its own because tracemalloc counts every thread: in the pytest
process other tests' servers are alive, and a werkzeug handler whose client went away
drains the socket into a 10 MB buffer whenever it happens to run.
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

from werkzeug.test import EnvironBuilder, run_wsgi_app

from tests.support.download_support import Unseekable, sparse_file
from uploadmeter.downloads import download


def main(folder: Path) -> None:
    paths = [folder / f"big{i}.bin" for i in range(4)]
    for path in paths:
        sparse_file(path, 64 << 20)
    extra = Unseekable(bytes(16 << 20), chunk=65536)
    environ = EnvironBuilder(path="/huge").get_environ()
    tracemalloc.start()
    response = download([*paths, extra], "huge.zip", environ=environ)
    body, status, _ = run_wsgi_app(response, environ)
    assert status.startswith("200"), status
    received = 0
    for piece in body:
        received += len(piece)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    json.dump({"received": received, "peak": peak}, sys.stdout)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
