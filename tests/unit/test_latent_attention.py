"""NV-Embed's latent-attention pooler against its equations, written out here on random tensors,
and the check that decides when gecko trusts a saved model's code (no model is loaded)."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from copy import deepcopy
from pathlib import Path

import pytest
import torch

from gecko_cli.train.decoder import latent_attention
from gecko_cli.train.decoder.latent_attention import LatentAttentionPooling, masked_mean
from gecko_cli.contract.model_trust import CLASS_REF, SOURCE_FILE, runs_only_gecko_code

D, HEADS, LATENTS, WIDTH = 12, 3, 5, 20  # small, and d_h = 4 so the heads really split d
# Two texts of 4 and 2 tokens: the first unpadded, the second padded on the right, then on the left.
MASKS = {"right": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]), "left": torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])}


def pooler(residual: bool, seed: int = 0) -> LatentAttentionPooling:
    """A float64 pooler whose every weight is random (the zero-initialised ones too)."""
    module = LatentAttentionPooling(D, num_latents=LATENTS, num_heads=HEADS, intermediate_size=WIDTH,
                                    residual=residual).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64) * 0.5)
    return module


def layer_norm(x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + eps) * gain + bias


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def reference(module: LatentAttentionPooling, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The equations of latent_attention.py's docstring, one text and one head at a time, with the
    weights read off the module as matrices (x W, where nn.Linear stores Wᵀ)."""
    W = {name: getattr(module, name).weight.T for name in ("to_q", "to_k", "to_v", "to_out")}
    W1, b1, W2, b2 = module.mlp[0].weight.T, module.mlp[0].bias, module.mlp[2].weight.T, module.mlp[2].bias
    norm = {name: (lambda x, n=getattr(module, name): layer_norm(x, n.weight, n.bias)) if module.residual
            else (lambda x: x) for name in ("latent_norm", "query_norm", "mlp_norm")}
    latents = norm["latent_norm"](module.latents)  # L̂
    dh = D // HEADS
    embeddings = []
    for text, m in zip(hidden, mask):
        x = norm["query_norm"](text)
        heads = []
        for j in range(HEADS):
            cols = slice(j * dh, (j + 1) * dh)
            scores = (x @ W["to_q"][:, cols]) @ (latents @ W["to_k"][:, cols]).T / math.sqrt(dh)  # [n, r]
            weights = torch.exp(scores) / torch.exp(scores).sum(-1, keepdim=True)  # softmax over the latents
            heads.append(weights @ (latents @ W["to_v"][:, cols]))
        attended = torch.cat(heads, dim=-1) @ W["to_out"]  # A
        h1 = text + attended if module.residual else attended
        mlp = gelu(norm["mlp_norm"](h1) @ W1 + b1) @ W2 + b2
        y = h1 + mlp if module.residual else mlp
        kept = [y[i] for i in range(len(m)) if m[i] == 1]
        embeddings.append(sum(kept) / len(kept))
    return torch.stack(embeddings)


def pool(module: LatentAttentionPooling, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return module({"token_embeddings": hidden, "attention_mask": mask})["sentence_embedding"]


@pytest.mark.parametrize("residual", [True, False], ids=["released-code form", "paper form"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_pooler_equals_the_equations(residual: bool, side: str) -> None:
    module, mask = pooler(residual), MASKS[side]
    hidden = torch.randn(2, 4, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(pool(module, hidden, mask), reference(module, hidden, mask), rtol=0, atol=1e-10)


def test_untrained_pooler_is_mean_pooling() -> None:
    """W^O, W_2 and b_2 start at zero, so training starts from the mean-pooled embedding."""
    module = LatentAttentionPooling(D, num_latents=LATENTS, num_heads=HEADS)
    hidden, mask = torch.randn(2, 4, D), MASKS["right"]
    assert torch.equal(pool(module, hidden, mask), masked_mean(hidden, mask))


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_states_do_not_reach_the_embedding(side: str) -> None:
    """A 2-token text padded to 4 with garbage states embeds as the 2 tokens alone."""
    module, mask = pooler(True), MASKS[side][1:]
    text = torch.randn(1, 2, D, dtype=torch.float64)
    padded = torch.full((1, 4, D), 1e3, dtype=torch.float64)
    padded[:, mask[0] == 1] = text
    assert torch.allclose(pool(module, padded, mask), pool(module, text, torch.ones(1, 2)), atol=1e-12)


def test_a_flattened_batch_embeds_as_a_padded_one() -> None:
    """With flash attention sentence-transformers may pass every token in one row, and the
    texts' offsets in `cu_seq_lens_q` instead of a mask."""
    module, mask = pooler(True), MASKS["right"]
    hidden = torch.randn(2, 4, D, dtype=torch.float64)
    flat = torch.cat([hidden[0], hidden[1, :2]]).unsqueeze(0)
    features = {"token_embeddings": flat, "cu_seq_lens_q": torch.tensor([0, 4, 6])}
    assert torch.allclose(module(features)["sentence_embedding"], pool(module, hidden, mask), atol=1e-12)


@pytest.mark.parametrize("copy", ["pickle", "deepcopy"])
def test_pooler_pickles_despite_its_saved_module_name(copy: str) -> None:
    """The class calls its module `latent_attention` (for modules.json); pickling must not need that name."""
    module = pooler(True)
    twin = pickle.loads(pickle.dumps(module)) if copy == "pickle" else deepcopy(module)
    hidden, mask = torch.randn(2, 4, D, dtype=torch.float64), MASKS["left"]
    assert type(twin) is LatentAttentionPooling and twin is not module
    assert torch.equal(pool(twin, hidden, mask), pool(module, hidden, mask))


def test_heads_must_divide_the_hidden_size() -> None:
    with pytest.raises(ValueError, match="not a multiple of 8 heads"):
        LatentAttentionPooling(100)


def test_defaults_are_nv_embeds() -> None:
    module = LatentAttentionPooling(576)
    assert (module.num_latents, module.num_heads, module.latents.shape) == (512, 8, (512, 576))


def test_seeded_weights_repeat() -> None:
    first, second = (LatentAttentionPooling(D, num_latents=LATENTS, num_heads=HEADS) for _ in range(2))
    for module in (first, second):
        module.reset_parameters(torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def saved_pooler(root: Path, module: LatentAttentionPooling) -> Path:
    """The pooler saved the way SentenceTransformer.save does it: into `root/1_LatentAttentionPooling`."""
    folder = root / "1_LatentAttentionPooling"
    folder.mkdir(parents=True)
    module.save(str(folder))
    transformer = "sentence_transformers.base.modules.transformer.Transformer"
    pooling = f"{type(module).__module__}.{type(module).__name__}"  # what SentenceTransformer.save writes
    modules = [{"idx": 0, "name": "0", "path": "", "type": transformer},
               {"idx": 1, "name": "1", "path": folder.name, "type": pooling}]
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "is_causal": False}))
    return folder


def test_saved_pooler_loads_with_its_config_and_weights(tmp_path: Path) -> None:
    module = pooler(False).float()
    folder = saved_pooler(tmp_path, module)
    loaded = LatentAttentionPooling.load(str(tmp_path), subfolder=folder.name)
    hidden, mask = torch.randn(2, 4, D), MASKS["left"]
    assert torch.equal(pool(loaded, hidden, mask), pool(module, hidden, mask))
    assert json.loads((folder / "config.json").read_text()) == {
        "hidden_size": D, "num_latents": LATENTS, "num_heads": HEADS, "intermediate_size": WIDTH, "residual": False}


def test_saving_puts_the_code_where_sentence_transformers_looks(tmp_path: Path) -> None:
    """modules.json names `latent_attention.LatentAttentionPooling`, and that file sits in the root."""
    saved_pooler(tmp_path, LatentAttentionPooling(D, num_latents=LATENTS, num_heads=HEADS))
    assert json.loads((tmp_path / "modules.json").read_text())[1]["type"] == CLASS_REF
    assert (tmp_path / SOURCE_FILE).read_bytes() == Path(latent_attention.__file__).read_bytes()


def test_gecko_trusts_its_own_pooler(tmp_path: Path) -> None:
    saved_pooler(tmp_path, LatentAttentionPooling(D, num_latents=LATENTS, num_heads=HEADS))
    assert runs_only_gecko_code(tmp_path)


def edit_json(path: Path, change: dict) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))


@pytest.mark.parametrize("tamper", ["edited source", "auto_map in config.json", "auto_map in the tokenizer config",
                                    "another module class", "a Router", "no latent module", "no modules.json"])
def test_gecko_trusts_nothing_else(tmp_path: Path, tamper: str) -> None:
    saved_pooler(tmp_path, LatentAttentionPooling(D, num_latents=LATENTS, num_heads=HEADS))
    modules_json = tmp_path / "modules.json"
    modules = json.loads(modules_json.read_text())
    if tamper == "edited source":
        (tmp_path / SOURCE_FILE).write_text((tmp_path / SOURCE_FILE).read_text() + "\nimport os\n")
    elif tamper == "auto_map in config.json":
        edit_json(tmp_path / "config.json", {"auto_map": {"AutoModel": "modeling_evil.Model"}})
    elif tamper == "auto_map in the tokenizer config":
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["x.T", None]}}))
    elif tamper == "another module class":
        modules.append({"idx": 2, "name": "2", "path": "2_Evil", "type": "evil.Module"})
    elif tamper == "a Router":
        modules[0]["type"] = "sentence_transformers.base.modules.router.Router"
    elif tamper == "no latent module":
        modules[1]["type"] = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
    elif tamper == "no modules.json":
        shutil.rmtree(tmp_path)
        tmp_path.mkdir()
    if tamper != "no modules.json":
        modules_json.write_text(json.dumps(modules))
    assert not runs_only_gecko_code(tmp_path)
