"""A low-resolution proxy of an incident's video, so administration can watch within minutes.

A 5-minute 720p clip at 4 Mbit/s is ~150 MB: minutes on a loaded LTE uplink. A 360p, 15 fps
transcode is a few MB and goes up first. ``+faststart`` puts the index at the front so a
browser can play it straight from the bucket while it downloads.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from bodycam_ros.core.upload.errors import Cancelled, LocalError


class ProxyError(LocalError):
    """The video could not be transcoded (unreadable, no video stream)."""


@dataclass(frozen=True)
class ProxyInfo:
    width: int
    height: int
    frames: int
    duration_s: float
    size: int


def make_proxy(src: Path, dst: Path, height: int = 360, max_fps: float = 15.0, crf: int = 30,
               max_kbps: int = 600, stop: threading.Event | None = None) -> ProxyInfo:
    """Transcode ``src`` to an H.264 MP4 of at most ``height`` lines, ``max_fps`` and
    ``max_kbps`` (a 5-minute clip: about 20 MB at most).

    A truncated source (a power cut mid-recording) yields a proxy of what could be decoded.
    Written to a temp file and renamed, so ``dst`` is always complete.

    Raises:
        ProxyError: nothing decodable in ``src``.
        Cancelled: ``stop`` was set.
    """
    import av

    tmp = dst.with_name(f'.{dst.name}.tmp')
    dst.parent.mkdir(parents=True, exist_ok=True)
    frames = 0
    last_t = 0.0
    try:
        with av.open(str(src)) as inp:
            if not inp.streams.video:
                raise ProxyError(f'{src}: no video stream')
            vin = inp.streams.video[0]
            vin.thread_type = 'AUTO'
            in_w, in_h = vin.codec_context.width, vin.codec_context.height
            out_h = min(height, in_h) // 2 * 2
            out_w = max(2, round(in_w * out_h / in_h / 2) * 2)
            in_fps = float(vin.average_rate or vin.guessed_rate or max_fps)
            fps = Fraction(max_fps).limit_denominator(1000) if in_fps > max_fps + 0.5 \
                else Fraction(in_fps).limit_denominator(1000)
            with av.open(str(tmp), 'w', format='mp4', options={'movflags': '+faststart'}) as out:
                vout = out.add_stream('libx264', rate=fps)
                vout.width, vout.height, vout.pix_fmt = out_w, out_h, 'yuv420p'
                vout.codec_context.time_base = 1 / fps
                # A bitrate ceiling bounds what a busy scene costs on LTE.
                vout.options = {'crf': str(crf), 'preset': 'superfast',
                                'maxrate': str(max_kbps * 1000),
                                'bufsize': str(2 * max_kbps * 1000),
                                'g': str(max(1, round(float(fps) * 2)))}
                t0 = None
                next_pts = 0
                try:
                    for frame in inp.decode(vin):
                        if stop is not None and stop.is_set():
                            raise Cancelled('stop requested')
                        t = frame.time if frame.time is not None else frames / in_fps
                        if t0 is None:
                            t0 = t
                        pts = round((t - t0) * fps)
                        if pts < next_pts:
                            continue   # dropping frames down to max_fps
                        small = frame.reformat(width=out_w, height=out_h, format='yuv420p',
                                               interpolation='FAST_BILINEAR')
                        small.pts, small.time_base = pts, vout.codec_context.time_base
                        next_pts = pts + 1
                        out.mux(vout.encode(small))
                        frames += 1
                        last_t = t - t0
                except av.error.InvalidDataError:
                    pass   # truncated source: keep what decoded
                if frames == 0:
                    raise ProxyError(f'{src}: no decodable video frames')
                out.mux(vout.encode(None))
        os.replace(tmp, dst)
    except av.error.FFmpegError as exc:
        raise ProxyError(f'{src}: cannot transcode: {exc}') from None
    finally:
        tmp.unlink(missing_ok=True)
    return ProxyInfo(out_w, out_h, frames, last_t + 1 / float(fps), dst.stat().st_size)


class ProxyJob:
    """A proxy transcode on a thread of its own, so the link carries evidence meanwhile.

    The uploader sends the proxy at the first part boundary after the job finishes.
    """

    def __init__(self, src: Path, dst: Path, height: int = 360,
                 stop: threading.Event | None = None) -> None:
        import time
        self.dst = dst
        self.error = ''
        self.info: ProxyInfo | None = None
        self.seconds = 0.0
        self._t0 = time.monotonic()
        self._done = threading.Event()
        if dst.is_file():            # finished by an earlier run
            self._done.set()
            return
        self._args = (src, dst, height, stop)
        threading.Thread(target=self._run, name='proxy-transcode', daemon=True).start()

    def _run(self) -> None:
        import time
        src, dst, height, stop = self._args
        try:
            self.info = make_proxy(src, dst, height, stop=stop)
        except ProxyError as exc:
            self.error = str(exc)
        except Cancelled:
            self.error = 'cancelled'
        except Exception as exc:  # noqa: BLE001 - a thread must report, not vanish
            self.error = f'transcode failed: {exc!r}'
        finally:
            self.seconds = time.monotonic() - self._t0
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def ready(self) -> bool:
        """Finished with a proxy file to send."""
        return self._done.is_set() and not self.error and self.dst.is_file()

    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)
