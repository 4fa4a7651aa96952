"""The chunk protocol of simple-uploader.js, resumable.js and flow.js: :class:`ChunkUploads`."""

from uploadmeter.resumable.chunked._app import ChunkUploads

__all__ = ["ChunkUploads"]
