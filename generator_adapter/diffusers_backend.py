"""A diffusers text-to-video backend loaded from a local pipeline directory (Wan 2.1, LTX-Video)."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

from generator_adapter.interface import (
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    GeneratorFailed,
    Progress,
    ShouldCancel,
)

SUPPORTED = {"WanPipeline": 16, "LTXPipeline": 24}  # pipeline class -> frames per second


class _StopRun(Exception):
    """Raised from the step callback: diffusers then stops at once and decodes nothing."""


class DiffusersGenerator:
    """Loads `model_index.json`'s pipeline class from a directory, never from a hub."""

    def __init__(self, model_dir: Path, *, device: str = "auto", dtype: str = "float32") -> None:
        self.model_dir = Path(model_dir)
        index = self.model_dir / "model_index.json"
        if not index.is_file():
            raise GeneratorFailed(f"{self.model_dir} has no model_index.json")
        self.pipeline_class = json.loads(index.read_text()).get("_class_name", "")
        if self.pipeline_class not in SUPPORTED:
            raise GeneratorFailed(
                f"unsupported pipeline {self.pipeline_class!r}; supported: {sorted(SUPPORTED)}"
            )
        self.model_id = f"{self.pipeline_class}:{self.model_dir.name}"
        self._device, self._dtype = device, dtype
        self._pipe: Any = None

    def _load(self) -> Any:
        if self._pipe is None:
            import diffusers
            import torch

            diffusers.utils.logging.disable_progress_bar()

            device = self._device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            cls = getattr(diffusers, self.pipeline_class)
            try:
                pipe = cls.from_pretrained(
                    str(self.model_dir), dtype=getattr(torch, self._dtype), local_files_only=True
                )
            except (OSError, ValueError) as exc:
                raise GeneratorFailed(f"cannot load {self.model_dir}: {exc}") from exc
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe.to(device)
            self._torch = torch
        return self._pipe

    def generate(
        self, request: GenerationRequest, *, progress: Progress, should_cancel: ShouldCancel
    ) -> GenerationResult:
        """Run the pipeline; cancellation is honoured after the current step, before any decode."""
        t0 = time.perf_counter()
        pipe = self._load()
        loaded = time.perf_counter()
        torch = self._torch

        def on_step(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            progress(step + 1, pipeline.num_timesteps)
            if should_cancel():
                raise _StopRun
            return kwargs

        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        try:
            with torch.inference_mode():
                out = pipe(
                    prompt=request.prompt,
                    negative_prompt=request.negative_prompt or None,
                    num_frames=request.num_frames,
                    height=request.height,
                    width=request.width,
                    num_inference_steps=request.steps,
                    generator=generator,
                    output_type="np",
                    callback_on_step_end=on_step,
                )
        except _StopRun:
            # The half-denoised latents die with this frame; release cached blocks too.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise GenerationCancelled("cancelled between denoising steps") from None
        except (RuntimeError, ValueError) as exc:
            raise GeneratorFailed(f"generation failed: {exc}") from exc
        import numpy as np

        frames = np.clip(np.asarray(out.frames[0]) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        done = time.perf_counter()
        return GenerationResult(
            frames=frames,
            fps=SUPPORTED[self.pipeline_class],
            model_id=self.model_id,
            seed=request.seed,
            timings={"load_s": loaded - t0, "generate_s": done - loaded},
        )
