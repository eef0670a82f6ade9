"""NV-Embed's latent-attention pooling as a sentence-transformers module (Lee et al., 2024, §3.2).

This file travels with every model that uses it: saving copies it to the model's root as
`latent_attention.py`, and modules.json names the class `latent_attention.LatentAttentionPooling`,
so `SentenceTransformer(path, trust_remote_code=True)` runs it anywhere, with no gecko installed.
That is why it imports nothing but torch and sentence-transformers (and both at the top: only a
model that pools this way loads it).

The maths, for one text: token states H ∈ R^{n×d} from the LM's last layer (n tokens, d its hidden
size), the padding mask m ∈ {0,1}^n, a trainable latent array L ∈ R^{r×d} (r = 512), h = 8 heads of
d_h = d/h dimensions. The paper's eq. (1) is O = softmax(Q Kᵀ) V with Q = H and K = V = L: each token
state is rewritten as a mixture of latent vectors (a learnt dictionary), then "a regular MLP
consisting of two linear transformations with a GELU activation in between", then mean pooling.
Written out with the per-head projections of multi-head attention:

    head_j(X)  = softmax( (X W_j^Q)(L̂ W_j^K)ᵀ / √d_h ) (L̂ W_j^V)        j = 1..h
    A(X)       = [head_1(X); …; head_h(X)] W^O
    MLP(X)     = GELU(X W_1 + b_1) W_2 + b_2                              W_1: d×4d, W_2: 4d×d
    e          = Σ_i m_i Y_i / Σ_i m_i                                    mean over non-pad tokens

`residual=True` (the default) is the form of NV-Embed's released code: pre-LayerNorm and a residual
connection around each block,

    L̂ = LN_L(L),  H' = H + A(LN_Q(H)),  Y = H' + MLP(LN_M(H'))

and `residual=False` is the paper's equations as written: L̂ = L, H' = A(H), Y = MLP(H').

Where this differs from the released code, on purpose: the MLP is the paper's GELU MLP, not the
code's GEGLU feed-forward; a head has d/h dimensions (the code gives every head d); the embedding is
not L2-normalised here (gecko's loss and sentence-transformers' similarity are cosine already); and
in the residual form W^O, W_2 and b_2 start at zero, so an untrained layer is exactly mean pooling
and training starts from that baseline instead of from noise added to every token state.

Citation: Chankyu Lee, Rajarshi Roy, Mengyao Xu, Jonathan Raiman, Mohammad Shoeybi, Bryan Catanzaro,
Wei Ping. "NV-Embed: Improved Techniques for Training LLMs as Generalist Embedding Models."
arXiv:2405.17428, 2024 (ICLR 2025).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # sentence-transformers 6
    from sentence_transformers.base.modules import Module
except ImportError:  # sentence-transformers 5
    from sentence_transformers.models import Module

SOURCE_FILE = "latent_attention.py"


class LatentAttentionPooling(Module):
    """Token states [B, n, d] and their mask -> one embedding [B, d] per text (see the module docstring).

    >>> pool = LatentAttentionPooling(576)  # SmolLM2-135M's hidden size; 512 latents, 8 heads
    >>> features = {"token_embeddings": torch.randn(2, 5, 576), "attention_mask": torch.ones(2, 5)}
    >>> pool(features)["sentence_embedding"].shape
    torch.Size([2, 576])
    """

    # modules.json records `type(module).__module__ + "." + name`; naming the module after the file
    # this class is saved as makes that `latent_attention.LatentAttentionPooling`, which
    # sentence-transformers finds in the model's root, instead of a path into gecko. pickle looks
    # classes up by that name too, so `__reduce_ex__` sends it through `_empty_pooler`, a function
    # whose module is the real one (gecko's, or transformers' copy of this file).
    __module__ = "latent_attention"

    config_keys = ["hidden_size", "num_latents", "num_heads", "intermediate_size", "residual"]

    def __init__(self, hidden_size: int, num_latents: int = 512, num_heads: int = 8,
                 intermediate_size: int | None = None, residual: bool = True) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"the hidden size {hidden_size} is not a multiple of {num_heads} heads")
        self.hidden_size, self.num_latents, self.num_heads = hidden_size, num_latents, num_heads
        self.intermediate_size = intermediate_size or 4 * hidden_size
        self.residual = residual
        norm = (lambda: nn.LayerNorm(hidden_size)) if residual else nn.Identity
        self.latents = nn.Parameter(torch.empty(num_latents, hidden_size))
        self.latent_norm, self.query_norm, self.mlp_norm = norm(), norm(), norm()
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(hidden_size, hidden_size, bias=False)
                                                        for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(hidden_size, self.intermediate_size), nn.GELU(),
                                 nn.Linear(self.intermediate_size, hidden_size))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Latents ~ N(0, 1) as in NV-Embed's code, linear layers ~ U(±1/√fan_in) (PyTorch's default),
        and, in the residual form, W^O, W_2 and b_2 at zero: the layer starts as mean pooling."""
        with torch.no_grad():
            self.latents.normal_(generator=generator)
            for linear in (self.to_q, self.to_k, self.to_v, self.to_out, self.mlp[0], self.mlp[2]):
                bound = linear.in_features ** -0.5
                linear.weight.uniform_(-bound, bound, generator=generator)
                if linear.bias is not None:
                    linear.bias.uniform_(-bound, bound, generator=generator)
            for norm in (self.latent_norm, self.query_norm, self.mlp_norm):
                if isinstance(norm, nn.LayerNorm):
                    norm.reset_parameters()
            if self.residual:
                for parameter in (self.to_out.weight, self.mlp[2].weight, self.mlp[2].bias):
                    parameter.zero_()

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Adds `sentence_embedding`: the mean of the rewritten token states over each text's tokens.

        The texts come padded ([B, n, d] and a mask), or, when sentence-transformers runs flash
        attention without padding, as one row of every token [1, Σn, d] with the texts' boundaries in
        `cu_seq_lens_q`. The latent layer treats each token on its own, so both shapes go through it
        alike and only the mean differs."""
        hidden = features["token_embeddings"]
        states = self.token_states(hidden.to(self.latents.dtype))
        if "cu_seq_lens_q" in features:
            embeddings = segment_mean(states[0], features["cu_seq_lens_q"])
        else:
            mask = features.get("attention_mask")
            if mask is None:
                mask = torch.ones(hidden.shape[:2], device=hidden.device)
            embeddings = masked_mean(states, mask)
        features["sentence_embedding"] = embeddings.to(hidden.dtype)
        return features

    def token_states(self, hidden: Tensor) -> Tensor:
        """Y for every token, [B, n, d]: cross-attention to the latents, then the MLP.

        Pad tokens get a state too (the latents are the only keys, so nothing masks them here);
        the mean in `forward` leaves them out."""
        batch, length, _ = hidden.shape
        heads, head_dim = self.num_heads, self.hidden_size // self.num_heads
        latents = self.latent_norm(self.latents)
        queries = self.to_q(self.query_norm(hidden)).view(batch, length, heads, head_dim).transpose(1, 2)
        keys = self.to_k(latents).view(1, self.num_latents, heads, head_dim).transpose(1, 2)
        values = self.to_v(latents).view(1, self.num_latents, heads, head_dim).transpose(1, 2)
        shape = (batch, heads, self.num_latents, head_dim)
        mixed = F.scaled_dot_product_attention(queries, keys.expand(shape), values.expand(shape))
        attended = self.to_out(mixed.transpose(1, 2).reshape(batch, length, self.hidden_size))
        states = hidden + attended if self.residual else attended
        refined = self.mlp(self.mlp_norm(states))
        return states + refined if self.residual else refined

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        """Pickled (and deep-copied) as an empty pooler plus this one's state, like any nn.Module."""
        return _empty_pooler, (), self.__dict__.copy()

    def get_embedding_dimension(self) -> int:
        return self.hidden_size

    get_sentence_embedding_dimension = get_embedding_dimension  # the name sentence-transformers 5 asks for

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """config.json and the weights in the module's folder, and this file in the model's root,
        where sentence-transformers (through transformers' remote-code loader) looks for it."""
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)
        source, target = Path(__file__).resolve(), Path(output_path).resolve().parent / SOURCE_FILE
        if source != target:
            shutil.copyfile(source, target)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token: bool | str | None = None,
             cache_folder: str | None = None, revision: str | None = None, local_files_only: bool = False,
             **kwargs: Any) -> "LatentAttentionPooling":
        hub = {"subfolder": subfolder, "token": token, "cache_folder": cache_folder, "revision": revision,
               "local_files_only": local_files_only}
        module = cls(**cls.load_config(model_name_or_path, **hub))
        cls.load_torch_weights(model_name_or_path, model=module, **hub)
        return module


def _empty_pooler() -> LatentAttentionPooling:
    """An uninitialised pooler for pickle to fill with a saved state (`__reduce_ex__`)."""
    return LatentAttentionPooling.__new__(LatentAttentionPooling)


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """Σ_i m_i Y_i / Σ_i m_i over the sequence axis: [B, n, d], [B, n] -> [B, d] (pads weigh 0).

    >>> masked_mean(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([[1, 1, 0]]))
    tensor([[2.]])
    """
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def segment_mean(states: Tensor, bounds: Tensor) -> Tensor:
    """The mean of each text's rows in a flattened batch: [Σn, d] and offsets [B + 1] -> [B, d].

    >>> segment_mean(torch.tensor([[1.0], [3.0], [10.0]]), torch.tensor([0, 2, 3]))
    tensor([[ 2.],
            [10.]])
    """
    lengths = (bounds[1:] - bounds[:-1]).to(states.device)
    texts = torch.repeat_interleave(torch.arange(len(lengths), device=states.device), lengths)
    sums = torch.zeros(len(lengths), states.shape[-1], dtype=states.dtype, device=states.device)
    return sums.index_add(0, texts, states) / lengths.clamp(min=1).unsqueeze(-1).to(states.dtype)
