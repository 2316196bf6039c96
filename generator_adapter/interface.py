"""The one narrow interface every video generator backend implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Progress = Callable[[int, int], None]
"""Called after each denoising step with (steps done, total steps)."""

ShouldCancel = Callable[[], bool]
"""Polled after each step; True stops the run before the next step."""


class GenerationCancelled(Exception):
    """The run stopped at a step boundary; nothing was decoded or kept."""


class GeneratorFailed(Exception):
    """The backend could not load or run; wraps the library's own error."""


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    num_frames: int = 9
    height: int = 64
    width: int = 64
    steps: int = 2
    seed: int = 0
    # Optional conditioning image per cameo id (PNG bytes); backends that cannot use one ignore it.
    reference_images: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationResult:
    frames: Any  # numpy uint8 array, shape (frames, height, width, 3)
    fps: int
    model_id: str
    seed: int
    timings: Mapping[str, float]


class VideoGenerator(Protocol):
    """generate(request, progress, should_cancel) -> frames + metadata."""

    model_id: str

    def generate(
        self, request: GenerationRequest, *, progress: Progress, should_cancel: ShouldCancel
    ) -> GenerationResult: ...


class LikenessScanner(Protocol):
    """Finds enrolled likenesses in generated frames: returns the cameo ids whose templates match."""

    def scan(self, frames: Any) -> set[str]: ...


class OutputSigner(Protocol):
    """Embeds a signed provenance manifest (C2PA) in a video file, in place; raises and leaves it unsigned."""

    def sign_in_place(self, path: Path, *, manifest: Mapping[str, Any]) -> None: ...


class NoEnrolledTemplates:
    """The scanner while no face templates exist yet: there is nothing a frame could match."""

    def scan(self, frames: Any) -> set[str]:
        return set()
