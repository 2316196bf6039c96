"""Checks and decodes an uploaded selfie video with PyAV, never holding the whole clip in memory.

`probe` demuxes every packet without decoding, so a header that lies about length or a file cut
short is caught before any model runs. `sample_frames` decodes frame by frame and keeps only
the sampled ones, scaled down; `read_audio` keeps at most `max_seconds` of 16 kHz mono.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from consent_service.errors import (
    MediaNoAudio,
    MediaNotVideo,
    MediaResolution,
    MediaTooLong,
    MediaTooShort,
    MediaTruncated,
    MediaUnsupportedCodec,
)

SAMPLE_RATE = 16000
# PyAV names a demuxer by all its aliases, comma-separated.
CONTAINERS = {"mov", "mp4", "matroska", "webm"}
VIDEO_CODECS = {"h264", "hevc", "vp8", "vp9", "av1", "mpeg4"}
AUDIO_CODECS = {"aac", "opus", "vorbis", "mp3", "pcm_s16le", "alac", "flac"}
# Containers whose index can be lost by cutting the file: MP4/MOV start with an ftyp box,
# Matroska/WebM with the EBML magic.
_CONTAINER_MAGIC = (b"ftyp", b"\x1a\x45\xdf\xa3")


@dataclass(frozen=True)
class MediaLimits:
    max_seconds: float
    min_seconds: float
    max_side: int
    min_side: int


@dataclass(frozen=True)
class MediaInfo:
    container: str
    video_codec: str
    audio_codec: str
    width: int
    height: int
    seconds: float
    video_packets: int


def _looks_like_container(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(12)
    return head[4:8] == _CONTAINER_MAGIC[0] or head[:4] == _CONTAINER_MAGIC[1]


def _open(path: Path) -> Any:
    import av

    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        if path.stat().st_size > 0 and _looks_like_container(path):
            raise MediaTruncated("the video's container is incomplete: the upload was cut short") from exc
        raise MediaNotVideo("the upload is not a video file (MP4, WebM or MOV)") from exc


def probe(path: Path, *, limits: MediaLimits) -> MediaInfo:
    """Validate container, codecs, resolution, audio and real length; raise a MediaRejected error."""
    if path.stat().st_size == 0:
        raise MediaTruncated("the upload is empty")
    container = _open(path)
    with container:
        format_name = container.format.name
        names = set(format_name.split(","))
        if not names & CONTAINERS:
            raise MediaNotVideo(f"container {container.format.name!r} is not MP4, WebM or MOV")
        if not container.streams.video:
            raise MediaNotVideo("the file has no video stream")
        video = container.streams.video[0]
        vcodec = video.codec_context.name
        if vcodec not in VIDEO_CODECS:
            raise MediaUnsupportedCodec(
                f"video codec {vcodec!r} is not supported", details={"supported": sorted(VIDEO_CODECS)}
            )
        width, height = video.codec_context.width, video.codec_context.height
        if width <= 0 or height <= 0:
            raise MediaTruncated("the video stream has no frame size")
        if max(width, height) > limits.max_side or min(width, height) < limits.min_side:
            raise MediaResolution(
                f"resolution {width}x{height} is outside {limits.min_side}..{limits.max_side} pixels a side"
            )
        if not container.streams.audio:
            raise MediaNoAudio("the video has no audio track: the challenge digits must be spoken")
        audio = container.streams.audio[0]
        acodec = audio.codec_context.name
        if acodec not in AUDIO_CODECS:
            raise MediaUnsupportedCodec(
                f"audio codec {acodec!r} is not supported", details={"supported": sorted(AUDIO_CODECS)}
            )
        declared = (container.duration or 0) / 1_000_000
        if declared > limits.max_seconds:
            raise MediaTooLong(f"the video lasts {declared:.1f} s; at most {limits.max_seconds:.0f} s")
        seconds, packets = _demux_length(container, video, limits.max_seconds)
    if packets == 0:
        raise MediaTruncated("the video stream holds no frames")
    if seconds > limits.max_seconds:
        raise MediaTooLong(f"the video runs past {limits.max_seconds:.0f} s")
    if declared and seconds < 0.9 * declared - 0.2:
        raise MediaTruncated(f"the header says {declared:.1f} s but only {seconds:.1f} s of video is present")
    if seconds < limits.min_seconds:
        raise MediaTooShort(f"the video lasts {seconds:.1f} s; at least {limits.min_seconds:.0f} s")
    return MediaInfo(
        container=format_name,
        video_codec=vcodec,
        audio_codec=acodec,
        width=width,
        height=height,
        seconds=seconds,
        video_packets=packets,
    )


def _demux_length(container: Any, video: Any, max_seconds: float) -> tuple[float, int]:
    """Seconds of video actually present, from packet timestamps; stops early past the cap."""
    import av

    end, packets = 0.0, 0
    base = float(video.time_base or 0)
    try:
        for packet in container.demux(video):
            if packet.size == 0 or packet.pts is None:
                continue
            packets += 1
            end = max(end, (packet.pts + (packet.duration or 0)) * base - float(video.start_time or 0) * base)
            if end > max_seconds + 1:
                break
    except av.FFmpegError as exc:
        raise MediaTruncated("the video data is damaged or cut short") from exc
    return end, packets


def sample_frames(path: Path, *, fps: float, max_side: int) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds, RGB frame) about `fps` times a second, scaled so the longer side is at most `max_side`.

    Frames are decoded one at a time and all but the sampled ones dropped at once. A phone's
    rotation flag is applied, so portrait clips arrive upright.
    """
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        scale = min(1.0, max_side / max(stream.codec_context.width, stream.codec_context.height))
        width = max(2, int(stream.codec_context.width * scale) // 2 * 2)
        height = max(2, int(stream.codec_context.height * scale) // 2 * 2)
        next_at = 0.0
        try:
            for frame in container.decode(stream):
                at = float(frame.time) if frame.time is not None else next_at
                if at + 1e-6 < next_at:
                    continue
                next_at = at + 1.0 / fps
                rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
                turns = (-(frame.rotation or 0) // 90) % 4
                yield at, np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
        except av.FFmpegError as exc:
            raise MediaTruncated("the video data is damaged or cut short") from exc


def read_audio(path: Path, *, max_seconds: float) -> np.ndarray:
    """The first audio track as 16 kHz mono float32 in [-1, 1], at most `max_seconds` long."""
    import av

    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    with _open(path) as container:
        try:
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pcm = out.to_ndarray().reshape(-1)
                    chunks.append(pcm)
                    total += pcm.size
                if total >= limit:
                    break
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            raise MediaTruncated("the audio data is damaged or cut short") from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return (np.concatenate(chunks)[:limit].astype(np.float32)) / 32768.0
