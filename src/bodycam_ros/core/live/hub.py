"""Fan one muxed stream out to many viewers without letting any of them slow the camera.

The camera's callback calls :meth:`LiveStream.push`; it muxes once and offers the fragment to
every viewer's bounded queue without blocking. A viewer that falls behind (its queue is over
``max_queue_s`` or ``max_queue_bytes``) loses what it had queued and skips to the next
keyframe, where its decoder can start again. Each viewer's HTTP thread drains its own queue.

It muxes only while someone watches (issue 14: a unit idles with its live view unwatched).
Unwatched, it checks each access unit and holds the current GOP, the frames since the last
keyframe; the first viewer starts a muxer on that GOP, so it has its init segment at once,
and the muxer closes when the last viewer leaves.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

from bodycam_ros.core.live.fmp4 import (Fragment, FragmentMuxer, LiveError, SpsChanged,
                                        check_stamp, inspect_access_unit)

__all__ = ['LiveStream', 'StreamStats', 'Viewer', 'ViewerClosed']


class ViewerClosed(Exception):
    """The viewer was closed (server stopping, or the stream restarted with a new init)."""


class Viewer:
    """One client's bounded queue of fragments; starts at (and resyncs to) a keyframe."""

    def __init__(self, init_segment: bytes, codec: str, generation: int, *,
                 max_queue_s: float, max_queue_bytes: int) -> None:
        self.init_segment, self.codec, self.generation = init_segment, codec, generation
        self._max_s, self._max_bytes = max_queue_s, max_queue_bytes
        self._q: collections.deque[Fragment] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._waiting_key = True    # a new viewer starts at the next keyframe
        self._closed = False
        self.resyncs = 0            # times this viewer was dropped to a keyframe
        self.sent_fragments = 0

    def offer(self, frag: Fragment) -> None:
        """Queue ``frag`` if this viewer can use it; never blocks."""
        with self._cond:
            if self._closed:
                return
            if self._waiting_key:
                if not frag.keyframe:
                    return
                self._waiting_key = False
            elif self._q and (frag.stamp - self._q[0].stamp > self._max_s
                              or self._bytes + len(frag.data) > self._max_bytes):
                # Too far behind: throw the backlog away and restart at a keyframe.
                self._q.clear()
                self._bytes = 0
                self.resyncs += 1
                if not frag.keyframe:
                    self._waiting_key = True
                    return
            self._q.append(frag)
            self._bytes += len(frag.data)
            self._cond.notify()

    def take(self, timeout_s: float) -> list[Fragment]:
        """Everything queued (possibly nothing after ``timeout_s``).

        Raises:
            ViewerClosed: the viewer was closed; the client should reconnect.
        """
        with self._cond:
            if not self._q and not self._closed:
                self._cond.wait(timeout_s)
            if self._closed:
                raise ViewerClosed()
            out = list(self._q)
            self._q.clear()
            self._bytes = 0
            self.sent_fragments += len(out)
            return out

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._q)


@dataclass(frozen=True)
class StreamStats:
    frames_in: int
    fragments_out: int
    bad_frames: int
    viewers: int
    viewer_resyncs: int
    restarts: int
    last_error: str


class LiveStream:
    """The live stream of one camera: a muxer, its init segment, and the viewers."""

    def __init__(self, *, max_queue_s: float = 2.0, max_queue_bytes: int = 8_000_000,
                 max_viewers: int = 16) -> None:
        if max_queue_s <= 0 or max_queue_bytes <= 0 or max_viewers < 1:
            raise ValueError(f'bad limits: max_queue_s={max_queue_s} '
                             f'max_queue_bytes={max_queue_bytes} max_viewers={max_viewers}')
        self._max_s, self._max_bytes, self.max_viewers = max_queue_s, max_queue_bytes, max_viewers
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._muxer: FragmentMuxer | None = None     # only while someone watches
        self._gop: list[tuple[bytes, float]] = []   # unwatched: the frames since the keyframe
        self._gop_bytes = 0
        self._t0: float | None = None               # the first usable stamp (unwatched)
        self._generation = 0
        self._viewers: list[Viewer] = []
        self._frames = self._frags = self._bad = self._restarts = self._resyncs_gone = 0
        self._last_error = ''
        self.last_frame_time = 0.0   # monotonic time of the last frame pushed

    @property
    def muxing(self) -> bool:
        """True while a muxer runs (someone watches, or a restart is being checked)."""
        with self._lock:
            return self._muxer is not None

    def push(self, annexb: bytes, stamp: float) -> None:
        """Mux one access unit and offer the result to every viewer (camera callback).

        Never raises on bad input: a bad access unit is counted in ``bad_frames`` and dropped.
        An SPS change starts a new muxer and closes the current viewers so their players
        reload the new init segment; if that keyframe cannot open the new muxer either (a
        damaged SPS), the stream starts again at the next good keyframe. Unwatched, the
        access unit is only checked and held with its GOP.
        """
        with self._lock:
            self._frames += 1
            self.last_frame_time = time.monotonic()
            if self._muxer is not None and not self._viewers:
                self._muxer.close()                   # the last viewer left: stop muxing
                self._muxer = None
            if self._muxer is None:
                self._hold_locked(annexb, stamp)
                return
            try:
                try:
                    frags = self._muxer.feed(annexb, stamp)
                except SpsChanged:
                    self._restart_locked()
                    frags = self._muxer.feed(annexb, stamp)
            except LiveError as exc:
                self._bad += 1
                self._last_error = str(exc)
                return
            if frags and self._muxer.init_segment is not None:
                self._ready.notify_all()
            self._frags += len(frags)
            self._keep_gop(annexb, stamp, self._muxer.last_keyframe)
            viewers = list(self._viewers)
        for frag in frags:
            for v in viewers:
                v.offer(frag)

    def _hold_locked(self, annexb: bytes, stamp: float) -> None:
        """Unwatched: check the access unit as the muxer would, keep the current GOP."""
        try:
            check_stamp(stamp, self._t0)
            key, _ = inspect_access_unit(annexb)
        except LiveError as exc:
            self._bad += 1
            self._last_error = str(exc)
            return
        if self._t0 is None:
            self._t0 = stamp
        self._keep_gop(annexb, stamp, key)
        if key:
            self._ready.notify_all()

    def _keep_gop(self, annexb: bytes, stamp: float, key: bool) -> None:
        """The frames since the last keyframe: what a first viewer's muxer starts on."""
        if key:
            self._gop, self._gop_bytes = [], 0
        elif not self._gop:
            return                                    # nothing decodes before a keyframe
        if self._gop_bytes + len(annexb) > self._max_bytes:
            self._gop, self._gop_bytes = [], 0        # a GOP this long: wait for the next
            return
        self._gop.append((annexb, stamp))
        self._gop_bytes += len(annexb)

    def _start_locked(self) -> None:
        """The first viewer: a muxer on the held GOP, for its init segment. Its fragments
        go to nobody (a viewer starts at the next keyframe)."""
        if self._muxer is not None:       # a restart's muxer that never saw a good keyframe
            self._muxer.close()
        self._muxer = FragmentMuxer()
        for annexb, stamp in self._gop:
            try:
                self._muxer.feed(annexb, stamp)
            except LiveError as exc:        # SpsChanged too: a GOP holds one SPS
                self._bad += 1
                self._last_error = str(exc)

    def _restart_locked(self) -> None:
        if self._muxer is not None:
            self._muxer.close()
        self._muxer = FragmentMuxer()
        self._generation += 1
        self._restarts += 1
        for v in self._viewers:
            self._resyncs_gone += v.resyncs
            v.close()
        self._viewers.clear()

    def subscribe(self, timeout_s: float = 5.0) -> Viewer:
        """A new viewer once the stream has an init segment.

        Raises:
            LiveError: no video within ``timeout_s``, or ``max_viewers`` already watching.
        """
        with self._lock:
            if len(self._viewers) >= self.max_viewers:
                raise LiveError(f'{self.max_viewers} viewers already connected (max_viewers)')
            if self._muxer is None or self._muxer.init_segment is None:
                self._ready.wait_for(lambda: self._gop or (
                    self._muxer is not None and self._muxer.init_segment is not None),
                    timeout_s)
            if (self._muxer is None or self._muxer.init_segment is None) and self._gop:
                self._start_locked()
            muxer = self._muxer
            if muxer is None or muxer.init_segment is None or muxer.codec is None:
                raise LiveError(f'no video from the camera within {timeout_s:.0f} s')
            v = Viewer(muxer.init_segment, muxer.codec, self._generation,
                       max_queue_s=self._max_s, max_queue_bytes=self._max_bytes)
            self._viewers.append(v)
            return v

    def unsubscribe(self, viewer: Viewer) -> None:
        viewer.close()
        with self._lock:
            if viewer in self._viewers:
                self._viewers.remove(viewer)
                self._resyncs_gone += viewer.resyncs

    def stats(self) -> StreamStats:
        with self._lock:
            return StreamStats(self._frames, self._frags, self._bad, len(self._viewers),
                               self._resyncs_gone + sum(v.resyncs for v in self._viewers),
                               self._restarts, self._last_error)

    def close(self) -> None:
        """Disconnect every viewer (server shutdown)."""
        with self._lock:
            for v in self._viewers:
                v.close()
            self._viewers.clear()
            if self._muxer is not None:
                self._muxer.close()
                self._muxer = None
            self._gop, self._gop_bytes = [], 0
