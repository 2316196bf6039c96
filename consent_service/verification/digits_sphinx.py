"""Spoken digits with pocketsphinx's shipped en-US model and a grammar of exactly N digits.

A free digit loop inserts digits into pauses; a fixed-length grammar cannot, so the recogniser
only has to choose which digit each slot holds.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

WORDS = {
    "zero": "0",
    "oh": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}


def grammar(length: int) -> str:
    digit = " | ".join(WORDS)
    return f"#JSGF V1.0;\ngrammar digits;\n<d> = {digit};\npublic <digits> = {' '.join(['<d>'] * length)};\n"


class SphinxDigitRecogniser:
    name = "pocketsphinx-en-us"

    def __init__(self, workdir: Path) -> None:
        import pocketsphinx

        model = Path(pocketsphinx.get_model_path())
        self._hmm = str(model / "en-us" / "en-us")
        lines = []
        with (model / "en-us" / "cmudict-en-us.dict").open() as f:
            for line in f:
                word = line.split(" ", 1)[0]
                if word.split("(")[0] in WORDS:
                    lines.append(line)
        workdir.mkdir(parents=True, exist_ok=True)
        self._dict = workdir / "digits.dict"
        self._dict.write_text("".join(lines))
        self._decoders: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _decoder(self, length: int) -> Any:
        from pocketsphinx import Decoder

        if length not in self._decoders:
            decoder = Decoder(hmm=self._hmm, dict=str(self._dict), loglevel="FATAL", samprate=16000)
            decoder.add_jsgf_string("digits", grammar(length))
            decoder.activate_search("digits")
            self._decoders[length] = decoder
        return self._decoders[length]

    def recognise(self, wav: np.ndarray, *, length: int) -> str:
        pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16).tobytes()
        with self._lock:  # a decoder holds one utterance at a time
            decoder = self._decoder(length)
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            hyp = decoder.hyp()
        if hyp is None:
            return ""
        return "".join(WORDS.get(w.split("(")[0], "") for w in hyp.hypstr.split())
