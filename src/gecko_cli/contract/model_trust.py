"""When gecko may load a saved model with `trust_remote_code=True`: when the only code the model
asks to run is gecko's own latent-attention pooler, byte for byte.

sentence-transformers 6 imports a module class from outside its own package only with
`trust_remote_code=True`, for a local directory too, and that flag also lets transformers run any
modelling or tokenizer code a config.json names (`auto_map`). A latent-attention model needs the
flag for `latent_attention.py`; this check grants it only when that file is the one gecko ships
and nothing else in the directory asks for code, so gecko never runs code it did not write.
"""

from __future__ import annotations

import json
from pathlib import Path

# What a saved latent-attention model holds (train/decoder/latent_attention.py writes them). The
# file is found by path, not imported: loading any embedder asks this, and search/ may depend on
# contract/ only, and checking a directory should cost no torch import.
SOURCE_FILE = "latent_attention.py"
CLASS_REF = "latent_attention.LatentAttentionPooling"
GECKO_SOURCE = Path(__file__).resolve().parents[1] / "train" / "decoder" / SOURCE_FILE


def runs_only_gecko_code(path: str | Path) -> bool:
    """True when `path` is a sentence-transformers directory whose one non-library module is
    gecko's `latent_attention.LatentAttentionPooling`, with gecko's own source beside it, and no
    config asks transformers for remote code.

    runs_only_gecko_code("models/nv-smollm2") -> True; an all-MiniLM-L6-v2 copy -> False (nothing to trust)
    """
    root = Path(path)
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
        types = [str(entry["type"]) for entry in modules]
        folders = [root / str(entry.get("path", "")) for entry in modules]
        ours = (root / SOURCE_FILE).read_bytes() == GECKO_SOURCE.read_bytes()
    except (OSError, ValueError, TypeError, KeyError):
        return False
    library = [t for t in types if t != CLASS_REF]
    if CLASS_REF not in types or not ours:
        return False
    # A Router names further modules in its own config, out of this check's sight.
    if any(not t.startswith("sentence_transformers.") or t.endswith("Router") for t in library):
        return False
    return not any(_asks_for_code(folder) for folder in {root, *folders})


def _asks_for_code(folder: Path) -> bool:
    """Whether a JSON config in `folder` has an `auto_map` (transformers' remote-code hook)."""
    for file in folder.glob("*.json"):
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return True  # unreadable: cannot vouch for it
        if isinstance(config, dict) and "auto_map" in config:
            return True
    return False
