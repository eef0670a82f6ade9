"""The embedded LLM (SmolLM2-135M-Instruct in-process), split at its seams:

- `model`: where the GGUF is, loading it, the dequantized copy under GECKO_CACHE_DIR;
- `plan`: the pure shared-prefix planner (`plan_groups`, `Job`, `merge_ql_into_rc`);
- `kv`: the decoder passes over KV caches of shared prefixes (`PrefixScorer`);
- `sampling`: per-prompt seeded sampling (`GumbelSampler`, `row_generator`);
- `backend`: `LocalBackend`, the protocol on top of them.

Importing it imports torch and transformers: the registry imports it only when the embedded
model is asked for.
"""

from gecko_cli.llm.local.backend import LocalBackend
from gecko_cli.llm.local.kv import PrefixScorer, cache_kwarg
from gecko_cli.llm.local.model import (
    GGUF_NAME, MANIFEST, _is_valid_copy, default_model_dir, gguf_path, load_from_gguf, load_model, load_tokenizer,
    save_atomically,
)
from gecko_cli.llm.local.plan import Job, _lcp, merge_ql_into_rc, plan_groups, reusable
from gecko_cli.llm.local.sampling import GumbelSampler, row_generator

__all__ = [
    "GGUF_NAME", "MANIFEST", "GumbelSampler", "Job", "LocalBackend", "PrefixScorer", "cache_kwarg",
    "default_model_dir", "gguf_path", "load_from_gguf", "load_model", "load_tokenizer", "merge_ql_into_rc",
    "plan_groups", "reusable", "row_generator", "save_atomically",
    "_is_valid_copy", "_lcp",  # read by tests
]
