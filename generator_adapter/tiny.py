"""Tiny random-weight diffusers pipelines of the real classes, for tests and local demos.

Nothing can be downloaded, so the tokenizer is trained in code. The production
loader (generator_adapter.diffusers_backend) loads these directories exactly as
it loads real weights; they produce noise, quickly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _tokenizer():
    from tokenizers import SentencePieceUnigramTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "a person waves at the camera",
        "two friends dance on a beach at sunset",
        "@alice and @bob ride bikes in the city",
        "a cat jumps over a red fence",
    ] * 20
    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(
        corpus,
        vocab_size=200,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    sp.post_processor = TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", sp.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=sp, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def _text_encoder(model_cls: Any, config_cls: Any, *, vocab_size: int) -> Any:
    """A two-layer T5-family encoder, 32 wide: the smallest that both pipelines accept."""
    config = config_cls(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
    )
    return model_cls(config).eval()  # eval(): dropout would make runs differ


def build_tiny_wan(directory: Path, *, seed: int = 0) -> Path:
    """A WanPipeline with the smallest sizes that run (see shared STACK.md), saved with save_pretrained."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    text_encoder = _text_encoder(UMT5EncoderModel, UMT5Config, vocab_size=len(tokenizer))
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
    )
    pipe.save_pretrained(str(directory))  # type: ignore[attr-defined]
    return directory


def build_tiny_ltx(directory: Path, *, seed: int = 0) -> Path:
    """An LTXPipeline with explicit small decoder settings (the defaults are full size), saved to disk."""
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    text_encoder = _text_encoder(T5EncoderModel, T5Config, vocab_size=len(tokenizer))
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
    )
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        num_layers=1,
        caption_channels=32,
    )
    pipe = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(str(directory))  # type: ignore[attr-defined]
    return directory


def textured_frames(n: int = 12, h: int = 256, w: int = 256, *, seed: int = 0) -> Any:
    """Synthetic frames with smooth structure and grain, closer to video content than pure noise.

    Watermark tests and benchmarks mark these: they need texture to hide bits in.
    """
    import numpy as np

    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        img = np.stack(
            [
                127 + 60 * np.sin(6 * x + i * 0.2) + 40 * np.cos(9 * y),
                127 + 50 * np.sin(4 * (x + y) + i * 0.1),
                127 + 70 * np.cos(15 * x * y + i * 0.3),
            ],
            -1,
        )
        frames.append(np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)
