"""emovox: speech emotion recognition with honest, speaker-independent numbers.

Data flow: audio -> features -> model -> report / prediction. See docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emovox._version import __version__

if TYPE_CHECKING:
    from emovox.predict import Recognizer

__all__ = ["Recognizer", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import emovox` (and the CLI's start-up) does not import torch.
    if name == "Recognizer":
        from emovox.predict import Recognizer

        return Recognizer
    raise AttributeError(f"module 'emovox' has no attribute {name!r}")
