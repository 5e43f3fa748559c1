"""Fan one muxed stream out to many viewers without letting any of them slow the camera.

The camera's callback calls :meth:`LiveStream.push`; it muxes once and offers the fragment to
every viewer's bounded queue without blocking. A viewer that falls behind (its queue is over
``max_queue_s`` or ``max_queue_bytes``) loses what it had queued and skips to the next
keyframe, where its decoder can start again. Each viewer's HTTP thread drains its own queue.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

from bodycam_ros.core.live.fmp4 import Fragment, FragmentMuxer, LiveError, SpsChanged

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
        self._muxer = FragmentMuxer()
        self._generation = 0
        self._viewers: list[Viewer] = []
        self._frames = self._frags = self._bad = self._restarts = self._resyncs_gone = 0
        self._last_error = ''
        self.last_frame_time = 0.0   # monotonic time of the last frame pushed

    def push(self, annexb: bytes, stamp: float) -> None:
        """Mux one access unit and offer the result to every viewer (camera callback).

        Never raises on bad input: a bad access unit is counted in ``bad_frames`` and dropped.
        An SPS change starts a new muxer and closes the current viewers so their players
        reload the new init segment; if that keyframe cannot open the new muxer either (a
        damaged SPS), the stream starts again at the next good keyframe.
        """
        with self._lock:
            self._frames += 1
            self.last_frame_time = time.monotonic()
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
            viewers = list(self._viewers)
        for frag in frags:
            for v in viewers:
                v.offer(frag)

    def _restart_locked(self) -> None:
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
            if self._muxer.init_segment is None:
                self._ready.wait_for(lambda: self._muxer.init_segment is not None, timeout_s)
            if self._muxer.init_segment is None or self._muxer.codec is None:
                raise LiveError(f'no video from the camera within {timeout_s:.0f} s')
            v = Viewer(self._muxer.init_segment, self._muxer.codec, self._generation,
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
            self._muxer.close()
