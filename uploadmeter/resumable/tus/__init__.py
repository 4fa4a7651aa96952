"""tus 1.0.0 (see :class:`TusUploads`)."""

from uploadmeter.resumable.tus._app import TusUploads

__all__ = ["TusUploads"]
