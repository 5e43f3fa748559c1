"""Upload errors: one area, a few kinds, because the kind decides what the uploader does next.

* :class:`TransientError` (network loss, 5xx, throttling): back off and retry, quietly.
* :class:`CredentialsError`, :class:`BucketMissingError`: configuration; retrying cannot
  help until someone fixes it, so the node reports ERROR (and still retries with back-off,
  because credentials can be rotated under a running unit); ``bodycam upload`` stops.
* :class:`VerifyError`: the remote copy is not what we sent; that object is uploaded again.
* :class:`LocalError`: this incident cannot be read here (permissions, a vanished file); the
  other incidents go on.
* :class:`EvidenceRejected`: this incident is not what its signed manifest says; it is
  quarantined (kept, named, reported) and the other incidents go on.
"""
from __future__ import annotations


class UploadError(Exception):
    """Anything that keeps an incident from being uploaded and verified."""

    #: Whether waiting and trying again can succeed without anyone changing anything.
    retryable = True
    #: Whether the error is about the remote side (global back-off) or one incident.
    remote = True


class TransientError(UploadError):
    """Network loss, timeouts, 5xx, throttling: back off and try again."""


class CredentialsError(UploadError):
    """Missing, invalid or insufficient credentials."""

    retryable = False


class BucketMissingError(UploadError):
    """The bucket does not exist (or the file:// directory cannot be created)."""

    retryable = False


class VerifyError(UploadError):
    """The remote object's size, ETag or checksum differs from the local bytes."""


class LocalError(UploadError):
    """An incident's local files cannot be read; only that incident waits."""

    remote = False


class UploadGone(UploadError):
    """The server no longer knows a multipart upload id; start that object again."""


class Cancelled(Exception):
    """The uploader was asked to stop (or to yield to a higher-priority incident) mid-transfer.

    Not an :class:`UploadError`: nothing went wrong, and all finished parts are kept.
    """


class EvidenceRejected(UploadError):
    """This incident cannot be trusted as evidence (unsigned, a file differs from its signed
    manifest): it is quarantined, kept as found, and never retried on its own."""

    retryable = False
    remote = False

    def __init__(self, message: str, reason: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.details = list(details or [])
