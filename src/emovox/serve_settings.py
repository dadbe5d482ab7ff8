"""The limits and options of the web service (:class:`ServeSettings`), checked when they are made.

Every limit here is enforced before work is spent on an input: upload and batch sizes, decoded
duration, worker threads, connection counts and timeouts, and the WebSocket stream's bounds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from emovox.errors import ConfigError
from emovox.serve_security import normalise_origin

API = "/api/v1"  # prefix of the JSON API and the stream


@dataclass(frozen=True)
class ServeSettings:
    """Limits and options of the service; every limit is checked before work is spent on the input."""

    max_upload_mb: float = 20.0  # per uploaded file
    max_duration_s: float = 600.0  # per decoded clip
    max_batch_files: int = 16
    max_batch_mb: float = 100.0  # whole batch request body
    workers: int = field(default_factory=lambda: max(1, min(2, os.cpu_count() or 1)))  # inference threads
    # browser origins (scheme://host[:port]) allowed besides the page's own, for CORS, form posts
    # and WebSockets; "*" allows any
    cors_origins: tuple[str, ...] = ()
    # connections
    max_connections: int = 256  # open HTTP + WebSocket connections; more are answered 503
    header_timeout_s: float = 10.0  # a request's headers must arrive within this
    body_timeout_s: float = 30.0  # longest pause while an upload's body streams in (408)
    # the WebSocket stream
    stream_max_connections: int = 8  # live streams at once (each may use ~0.2 core); more: 1013
    stream_max_frame_bytes: int = 256 * 1024  # one binary frame (8 s of 16 kHz s16le)
    stream_max_text_bytes: int = 4096  # one text (config) message
    stream_max_window_s: float = 10.0
    stream_min_hop_s: float = 0.1
    stream_max_overlap: float = 20.0  # window / hop: how often each second of audio is analysed
    stream_burst_s: float = 5.0  # audio analysed ahead of real time before windows are dropped
    stream_max_ahead_s: float = 60.0  # audio read ahead of real time before reading pauses
    stream_idle_timeout_s: float = 30.0  # a stream that sends nothing for this long is closed

    def __post_init__(self) -> None:
        positive = {
            "max_upload_mb": self.max_upload_mb,
            "max_duration_s": self.max_duration_s,
            "max_batch_files": self.max_batch_files,
            "max_batch_mb": self.max_batch_mb,
            "workers": self.workers,
            "max_connections": self.max_connections,
            "header_timeout_s": self.header_timeout_s,
            "body_timeout_s": self.body_timeout_s,
            "stream_max_connections": self.stream_max_connections,
            "stream_max_frame_bytes": self.stream_max_frame_bytes,
            "stream_max_text_bytes": self.stream_max_text_bytes,
            "stream_max_window_s": self.stream_max_window_s,
            "stream_min_hop_s": self.stream_min_hop_s,
            "stream_max_overlap": self.stream_max_overlap,
            "stream_burst_s": self.stream_burst_s,
            "stream_max_ahead_s": self.stream_max_ahead_s,
            "stream_idle_timeout_s": self.stream_idle_timeout_s,
        }
        for name, value in positive.items():
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(f"serve setting {name}={value!r}: must be a positive number")
        if self.stream_min_hop_s > self.stream_max_window_s:
            raise ConfigError(
                f"serve setting stream_min_hop_s={self.stream_min_hop_s!r}: must not exceed "
                f"stream_max_window_s={self.stream_max_window_s!r}"
            )
        for origin in self.cors_origins:
            if origin != "*" and normalise_origin(origin) is None:
                raise ConfigError(
                    f"serve setting cors_origins: {origin!r} is not an origin like http://host:port"
                )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_batch_bytes(self) -> int:
        return int(self.max_batch_mb * 1024 * 1024)
