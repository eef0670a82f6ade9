"""Embedders grown from decoder LMs, the NV-Embed way (arXiv 2405.17428), one concept per file:

- `bidirectional.py`: the attention switch (`config.is_causal`), saved in config.json;
- `latent_attention.py`: the latent-attention pooler, a sentence-transformers module whose file is
  copied into every model that uses it (it imports no gecko);
- `build.py`: `build_decoder_embedder`, an LM (directory, GGUF file or the embedded SmolLM2) ->
  an untrained SentenceTransformer;
- whether a saved model's only custom code is gecko's own pooler: `contract/model_trust.py`
  (every embedder load asks it).

Light on import (no torch here): the commands may import it at the top.
"""

from gecko_cli.train.decoder.build import EMBEDDED_LLM, POOLINGS, Start, build_decoder_embedder, is_lm_source, starting_point
from gecko_cli.train.decoder.bidirectional import ATTENTIONS
from gecko_cli.contract.model_trust import runs_only_gecko_code

__all__ = ["ATTENTIONS", "EMBEDDED_LLM", "POOLINGS", "Start", "build_decoder_embedder", "is_lm_source", "starting_point", "runs_only_gecko_code"]
