"""Live view core: fMP4 muxing of the camera's H.264, viewer fan-out, page state, HTTP server.

No ROS imports; :mod:`bodycam_ros.nodes.live_view_node` feeds it from topics.
"""
from bodycam_ros.core.live.fmp4 import (Fragment, FragmentMuxer, LiveError, SpsChanged,
                                        codec_string)
from bodycam_ros.core.live.hub import LiveStream, StreamStats, Viewer, ViewerClosed
from bodycam_ros.core.live.server import LiveServer, redact
from bodycam_ros.core.live.state import (Alert, LatestJpeg, LiveState, Position, RecorderState,
                                         TriggerState)

__all__ = ['Alert', 'Fragment', 'FragmentMuxer', 'LatestJpeg', 'LiveError', 'LiveServer',
           'LiveState', 'LiveStream', 'Position', 'RecorderState', 'SpsChanged', 'StreamStats',
           'TriggerState', 'Viewer', 'ViewerClosed', 'codec_string', 'redact']
