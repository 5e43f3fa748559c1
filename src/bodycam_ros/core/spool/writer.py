"""One incident being written into ``recording/<id>/``; used only by the writer thread.

Encrypted (``recipients`` given, the default in the node): video goes through
:class:`Fmp4Writer` into an :class:`AgeWriter` on a :class:`DurableFile`
(``video.mp4.age``); sensor messages into the CRC-checked journal through another age writer
(``sensors.journal.age``, crash-safe) and, at the same time, into a rosbag2 MCAP streamed
through a third (``sensors.mcap.age``). Plaintext (``recipients`` None): ``video.mp4`` and
``sensors.journal`` as before, the MCAP is made from the journal at sealing. Lifecycle
records (open, trigger, stop, video_start, synced, close) go to ``incident.jsonl``. Every
file is made durable at fragment boundaries, so a crash loses at most one fragment (and, when
encrypted, at most the unfinished 64 KiB age chunk).
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bodycam_ros.core.encryption import CHUNK, CHUNK_CT, NONCE, AgeWriter
from bodycam_ros.core.fsio import fsync_dir
from bodycam_ros.core.mp4 import Fmp4Writer, Mp4Error
from bodycam_ros.core.ring import SensorRecord, VideoPacket
from bodycam_ros.core.sidecar import PAD_MIN, JournalWriter, McapStream
from bodycam_ros.core.spool.durable import DurableFile
from bodycam_ros.core.spool.layout import (DIR_MODE, EVENTS, JOURNAL, JOURNAL_AGE, SENSORS_AGE,
                                           VIDEO, VIDEO_AGE)


class _Stream:
    """One evidence file: a DurableFile, encrypted through an AgeWriter or not."""

    def __init__(self, path: Path, recipients: Sequence[Any] | None) -> None:
        self.name = path.name
        self.file = DurableFile(path)
        self.age = AgeWriter(self.file, recipients) if recipients else None
        self.out: Any = self.age if self.age is not None else self.file

    def sync(self) -> bool:
        return self.age.durable_flush() if self.age is not None else self.file.sync()

    def finish(self) -> dict[str, Any] | None:
        """Final age chunk; the plaintext and ciphertext hashes for the close record."""
        if self.age is None:
            return None
        self.age.close()
        return {'plaintext_sha256': self.age.plaintext_sha256(),
                'plaintext_size': self.age.plaintext_size,
                'sha256': self.age.ciphertext_sha256(), 'size': self.age.ciphertext_size}

    def abandon(self) -> None:
        if self.age is not None:
            self.age.abandon()
        self.file.abandon()


class IncidentWriter:
    """The files of one incident in ``recording/``; used only by the writer thread.

    Args:
        recipients: the agency's X25519 public keys; None writes plaintext.
    """

    def __init__(self, directory: Path, open_record: dict[str, Any], fragment_s: float,
                 recipients: Sequence[Any] | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=False, mode=DIR_MODE)
        fsync_dir(directory.parent)
        self.dir = directory
        self.encrypted = bool(recipients)
        self._recipients = list(recipients) if recipients else None
        self._fragment_s = fragment_s
        self._events = DurableFile(directory / EVENTS)
        self._journal_stream = _Stream(directory / (JOURNAL_AGE if self.encrypted else JOURNAL),
                                       self._recipients)
        self._journal = JournalWriter(self._journal_stream.out)
        self._mcap_stream: _Stream | None = None
        self._mcap: McapStream | None = None
        if self.encrypted:
            self._mcap_stream = _Stream(directory / SENSORS_AGE, self._recipients)
            self._mcap = McapStream(self._mcap_stream.out, directory / '.sensors.bag')
        self._video: _Stream | None = None
        self._mp4: Fmp4Writer | None = None
        self._last_sync = time.monotonic()
        self.sync_s = 0.0            # time spent in fsync (for the benchmark)
        self.syncs = 0
        self.video_errors = 0
        self.sensor_errors = 0
        self._close_record: dict[str, Any] | None = None
        self._close_written = False
        self._frames_closed = 0
        self.event(open_record)

    def _streams(self) -> list[_Stream]:
        return [s for s in (self._video, self._journal_stream, self._mcap_stream)
                if s is not None]

    @property
    def frames(self) -> int:
        return self._mp4.frames if self._mp4 else self._frames_closed

    @property
    def pending_bytes(self) -> int:
        return self._events.pending_bytes + sum(s.file.pending_bytes for s in self._streams())

    @property
    def disk_error(self) -> OSError | None:
        for f in [s.file for s in self._streams()] + [self._events]:
            if f.error is not None:
                return f.error
        return None

    def event(self, record: dict[str, Any]) -> None:
        """Append one lifecycle record (open, trigger, stop, close) durably."""
        self._events.write((json.dumps(record, sort_keys=True) + '\n').encode())
        self._events.sync()

    def video(self, pkt: VideoPacket) -> None:
        if self._mp4 is None:
            if not pkt.keyframe:
                return
            self._video = _Stream(self.dir / (VIDEO_AGE if self.encrypted else VIDEO),
                                  self._recipients)
            self._mp4 = Fmp4Writer(self._video.out, self._fragment_s)
        first = not self._mp4.started
        try:
            boundary = self._mp4.write(pkt)
        except Mp4Error:
            self.video_errors += 1
            return
        if first and self._mp4.started:
            self.event({'type': 'video_start', 't': pkt.t, 'width': self._mp4.width,
                        'height': self._mp4.height})
        if boundary:
            self.sync()

    def sensor(self, rec: SensorRecord) -> None:
        self._journal.write(rec)
        if self._mcap is not None:
            self._mcap.write(rec)

    def maybe_sync(self) -> None:
        """Bounded loss without video too: sync at least every fragment_s."""
        if time.monotonic() - self._last_sync >= self._fragment_s:
            self.sync()

    def sync(self) -> None:
        t0 = time.perf_counter()
        self._pad_journal()
        dirty = [s for s in self._streams() if s.file.dirty]
        for s in dirty:
            s.sync()
        if dirty:
            self.sync_s += time.perf_counter() - t0
            self.syncs += 1
            if self.encrypted and self._mp4 is not None and self._mp4.last_t is not None:
                # What recovery can say about a clip it cannot decrypt: frames muxed by now
                # (all but the unfinished 64 KiB age chunk is on disk).
                self.event({'type': 'synced', 'frames': self._mp4.frames,
                            'keyframes': self._mp4.keyframes, 'last_t': self._mp4.last_t})
        self._last_sync = time.monotonic()

    def _pad_journal(self) -> None:
        """Encrypted: push every journal record into a whole age chunk before the sync (the
        pad is one byte past the boundary, so the chunk is known not to be the last)."""
        age = self._journal_stream.age
        if age is None:
            return
        emitted = (age.ciphertext_size - age.header_size - NONCE) // CHUNK_CT * CHUNK
        pending = age.plaintext_size - emitted
        if pending <= 1:
            return
        need = CHUNK - pending + 1
        if need < PAD_MIN:
            need += CHUNK
        self._journal.pad(need)

    def close(self, end_reason: str) -> None:
        """Finish the MP4 (last fragment, trailer), the MCAP and the age files, and make
        everything durable.

        Raises OSError when the disk still refuses bytes; then nothing is lost: every
        accepted byte stays in memory and calling ``close`` again (once space returns)
        resumes where this one stopped, with the same close record."""
        if self._close_record is None:
            self._close_record = self._finish(end_reason)
        for s in self._streams():          # bytes durable before the close record says so
            s.file.close()
        if not self._close_written:
            self._events.write((json.dumps(self._close_record, sort_keys=True) + '\n').encode())
            self._close_written = True
        self._events.close()

    @property
    def closing(self) -> bool:
        """``close`` started (the streams are finished); only the disk is still missing."""
        return self._close_record is not None

    def _finish(self, end_reason: str) -> dict[str, Any]:
        record: dict[str, Any] = {'type': 'close', 'reason': end_reason}
        if self._mp4 is not None:
            mp4 = self._mp4
            if mp4.started:
                mp4.close()
            record.update({'frames': mp4.frames, 'keyframes': mp4.keyframes,
                           'first_t': mp4.first_t, 'last_t': mp4.last_t, 'width': mp4.width,
                           'height': mp4.height})
            self._frames_closed = mp4.frames
            self._mp4 = None
        else:
            record['frames'] = 0
        if self._mcap is not None:
            bag = self._mcap.close()
            self._mcap = None
            record['sensors'] = {'messages': bag.messages, 'skipped_types': bag.skipped,
                                 'first_stamp': bag.start_t, 'last_stamp': bag.end_t,
                                 'gps': bag.gps.as_dict()}
        if self.encrypted:
            files = {}
            for s in self._streams():
                info = s.finish()
                if info is not None:
                    files[s.name] = info
            record['files'] = files
        return record

    def abandon(self) -> None:
        for s in self._streams():
            s.abandon()
        self._events.abandon()


def read_events(path: Path) -> list[dict[str, Any]]:
    """Lifecycle records; a torn last line (crash mid-write) is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors='replace').splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out

