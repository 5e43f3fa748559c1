"""One incident being written into ``recording/<id>/``; used only by the writer thread.

Video goes through :class:`Fmp4Writer` into a :class:`DurableFile`, sensor messages into the
CRC-checked journal, lifecycle records (open, trigger, stop, close) into ``incident.jsonl``,
each fsynced at fragment boundaries so a crash loses at most one fragment.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bodycam_ros.core.fsio import fsync_dir
from bodycam_ros.core.mp4 import Fmp4Writer, Mp4Error
from bodycam_ros.core.ring import SensorRecord, VideoPacket
from bodycam_ros.core.sidecar import JournalWriter
from bodycam_ros.core.spool.durable import DurableFile
from bodycam_ros.core.spool.layout import EVENTS, JOURNAL, VIDEO


class IncidentWriter:
    """The files of one incident in ``recording/``; used only by the writer thread."""

    def __init__(self, directory: Path, open_record: dict[str, Any], fragment_s: float) -> None:
        directory.mkdir(parents=True, exist_ok=False)
        fsync_dir(directory.parent)
        self.dir = directory
        self._fragment_s = fragment_s
        self._events = DurableFile(directory / EVENTS)
        self._journal_file = DurableFile(directory / JOURNAL)
        self._journal = JournalWriter(self._journal_file)
        self._video_file: DurableFile | None = None
        self._mp4: Fmp4Writer | None = None
        self._last_sync = time.monotonic()
        self.sync_s = 0.0            # time spent in fsync (for the benchmark)
        self.syncs = 0
        self.video_errors = 0
        self.event(open_record)

    @property
    def frames(self) -> int:
        return self._mp4.frames if self._mp4 else 0

    @property
    def pending_bytes(self) -> int:
        files = [self._events, self._journal_file, self._video_file]
        return sum(f.pending_bytes for f in files if f is not None)

    @property
    def disk_error(self) -> OSError | None:
        for f in (self._video_file, self._journal_file, self._events):
            if f is not None and f.error is not None:
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
            self._video_file = DurableFile(self.dir / VIDEO)
            self._mp4 = Fmp4Writer(self._video_file, self._fragment_s)
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

    def maybe_sync(self) -> None:
        """Bounded loss without video too: sync at least every fragment_s."""
        if time.monotonic() - self._last_sync >= self._fragment_s:
            self.sync()

    def sync(self) -> None:
        t0 = time.perf_counter()
        dirty = [f for f in (self._video_file, self._journal_file) if f is not None and f.dirty]
        for f in dirty:
            f.sync()
        if dirty:
            self.sync_s += time.perf_counter() - t0
            self.syncs += 1
        self._last_sync = time.monotonic()

    def close(self, end_reason: str) -> None:
        """Finish the MP4 (last fragment, trailer) and make everything durable.

        Raises OSError when the disk still refuses bytes; then nothing is lost: the files
        stay as they are in recording/ and sealing is retried (or done by recovery)."""
        if self._mp4 is not None:
            mp4 = self._mp4
            if mp4.started:
                mp4.close()
            self.event({'type': 'close', 'reason': end_reason, 'frames': mp4.frames,
                        'keyframes': mp4.keyframes, 'first_t': mp4.first_t,
                        'last_t': mp4.last_t, 'width': mp4.width, 'height': mp4.height})
            self._mp4 = None
        else:
            self.event({'type': 'close', 'reason': end_reason, 'frames': 0})
        for f in (self._video_file, self._journal_file, self._events):
            if f is not None:
                f.close()

    def abandon(self) -> None:
        for f in (self._video_file, self._journal_file, self._events):
            if f is not None:
                f.abandon()


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
