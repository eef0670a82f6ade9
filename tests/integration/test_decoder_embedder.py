"""An embedder grown from the embedded SmolLM2-135M the NV-Embed way, for real: the attention switch,
padding, a save loaded by plain sentence-transformers with gecko out of reach, and training steps
with gecko's loss.

The mask and padding tests cut the LM to its first two layers (what they check happens in every
layer); the round trip and the training use all thirty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

from gecko_cli.contract.errors import UsageError
from gecko_cli.search.embed import default_embedder_path
from gecko_cli.train.config import TrainConfig
from gecko_cli.train.decoder import build_decoder_embedder, runs_only_gecko_code
from gecko_cli.train.decoder.bidirectional import attention_of
from gecko_cli.train.decoder.build import transformers_directory
from gecko_cli.train.decoder.latent_attention import LatentAttentionPooling
from gecko_cli.train.losses import build_loss
from gecko_cli.train.run import _run, rows_to_dataset, train
from gecko_cli.train.save import save_model

pytestmark = pytest.mark.slow

TEXTS = ["task: search result | query: when was the eiffel tower finished",
         "title: Paris landmarks | text: The Eiffel Tower, a wrought-iron lattice tower, was completed in March 1889.",
         "title: none | text: Spiders are arachnids."]
ROWS = [
    {"anchor": "task: fact checking | query: Aspirin lowers the risk of heart attack.",
     "positive": "title: none | text: Low-dose aspirin reduced myocardial infarction in a randomized trial."},
    {"anchor": "task: fact checking | query: Smoking causes lung cancer.",
     "positive": "title: none | text: Cohort studies link tobacco smoking to most lung cancer cases."},
    {"anchor": "task: question answering | query: who wrote pride and prejudice",
     "positive": "title: Jane Austen | text: Pride and Prejudice is an 1813 novel by Jane Austen."},
    {"anchor": "task: question answering | query: what gas do plants absorb",
     "positive": "title: Photosynthesis | text: Plants take in carbon dioxide and release oxygen in sunlight."},
]
POOLINGS = ["mean", "last", "latent-attention"]


@pytest.fixture(scope="module")
def lm_dir() -> str:
    """The embedded LLM's dequantized copy, made once (from the GGUF, through gecko's LLM loader)."""
    return transformers_directory(None)


def build(lm_dir: str, layers: int | None = None, **options: Any) -> SentenceTransformer:
    """An embedder from the LM; `layers` keeps only the first few (config and all, so it still saves)."""
    model = build_decoder_embedder(lm_dir, **options)
    if layers is not None:
        lm = model[0].auto_model
        lm.layers = lm.layers[:layers]
        lm.config.num_hidden_layers = layers
    return model.eval()


def token_states(model: SentenceTransformer, texts: list[str]) -> list[torch.Tensor]:
    """Each text's last-layer token states, its padding removed."""
    return model.encode(texts, output_value="token_embeddings", convert_to_numpy=False, batch_size=len(texts))


# --- 1. the attention switch ---------------------------------------------------------------------

@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_a_token_sees_later_tokens_only_bidirectionally(lm_dir: str, attention: str) -> None:
    """Two texts that differ only in their last word, and a longer one so that both are padded:
    bidirectional, the first token's state depends on that word; causal, no earlier state does."""
    model = build(lm_dir, layers=2, pooling="mean", attention=attention)
    assert attention_of(model[0].auto_model) == attention
    mat, hat, _ = token_states(model, ["the cat sat on the mat", "the cat sat on the hat", TEXTS[1]])
    assert mat.shape == hat.shape
    change = (mat - hat).abs().amax(dim=-1)  # per token
    if attention == "bidirectional":
        assert change[0] > 1e-3
    else:
        assert change[:-1].max() < 1e-6 < change[-1]


# --- padding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_on_either_side_changes_no_embedding(lm_dir: str, pooling: str) -> None:
    """Each text embedded alone (no padding) equals it embedded in a batch with longer texts, padded
    on the right and on the left; the latent pooler gets random weights so that it is not the mean."""
    model = build(lm_dir, layers=2, pooling=pooling)
    if pooling == "latent-attention":
        model[1].reset_parameters(torch.Generator().manual_seed(3))
        with torch.no_grad():
            model[1].to_out.weight.normal_(std=0.05, generator=torch.Generator().manual_seed(4))
    alone = torch.stack([model.encode(text, convert_to_tensor=True) for text in TEXTS])
    for side in ("right", "left"):
        model.tokenizer.padding_side = side
        padded = model.encode(TEXTS, convert_to_tensor=True, batch_size=len(TEXTS))
        assert torch.allclose(padded, alone, rtol=1e-4, atol=1e-4), side


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_pooling_reads_an_appended_eos(lm_dir: str, side: str) -> None:
    model = build(lm_dir, layers=2, pooling="last", padding_side=side)
    batch = model.preprocess(TEXTS)
    last = [ids[mask.bool()][-1].item() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert last == [model.tokenizer.eos_token_id] * len(TEXTS)
    assert batch["attention_mask"][:, -1 if side == "left" else 0].all()


def test_texts_are_not_wrapped_in_the_chat_template(lm_dir: str) -> None:
    """SmolLM2 has a chat template; the embedder reads the text itself, not a rendered chat turn."""
    model = build(lm_dir, layers=2, pooling="mean")
    ids = model.preprocess(["hello world"])["input_ids"][0].tolist()
    assert ids == model.tokenizer("hello world")["input_ids"]


def test_defaults_are_nv_embeds(lm_dir: str) -> None:
    model = build(lm_dir, layers=2)
    assert attention_of(model[0].auto_model) == "bidirectional"
    assert isinstance(model[1], LatentAttentionPooling)
    assert (model[1].num_latents, model[1].num_heads, model[1].hidden_size) == (512, 8, 576)


def test_an_encoder_is_left_as_it_is() -> None:
    """all-MiniLM-L6-v2 built with mean pooling embeds as the shipped model does; it cannot be made causal."""
    path = default_embedder_path()
    model = build_decoder_embedder(path, pooling="mean")
    shipped = SentenceTransformer(path, device="cpu")
    ours = F.normalize(model.encode(TEXTS, convert_to_tensor=True), dim=-1)
    assert torch.allclose(ours, shipped.encode(TEXTS, convert_to_tensor=True), atol=1e-5)
    with pytest.raises(UsageError, match="is an encoder"):
        build_decoder_embedder(path, pooling="mean", attention="causal")


# --- 3. save, then load where gecko cannot be imported ----------------------------------------------

LOADER = """
import json, pickle, sys
sys.modules["gecko_cli"] = None  # gecko out of reach, however it is installed
try:
    import gecko_cli
    gecko = "importable"
except ImportError:
    gecko = "not importable"
from sentence_transformers import SentenceTransformer
texts, out = json.loads(sys.argv[1]), {"gecko": gecko}
for path in sys.argv[2:]:
    try:
        SentenceTransformer(path, device="cpu")
        plain = "loads"
    except ValueError as exc:
        plain = "refused: " + " ".join(str(exc).split())
    model = SentenceTransformer(path, device="cpu", trust_remote_code=True)
    out[path] = {"plain": plain, "is_causal": getattr(model[0].auto_model.config, "is_causal", None),
                 "embeddings": model.encode(texts).tolist(),
                 "pooler pickles": type(pickle.loads(pickle.dumps(model[1]))) is type(model[1])}
    if path.endswith("latent-attention"):  # saved again from here, where its class is transformers' copy
        model.save(path + "-again")
        again = SentenceTransformer(path + "-again", device="cpu", trust_remote_code=True)
        out[path]["saved again"] = again.encode(texts).tolist() == out[path]["embeddings"]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def round_trip(lm_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each pooling built from the full LM, saved, and loaded back by one fresh `python -I` (no
    PYTHONPATH, no cwd on the path) in which `import gecko_cli` fails."""
    root = tmp_path_factory.mktemp("decoder-embedders")
    expected, paths = {}, {}
    for pooling in POOLINGS:
        model = build(lm_dir, pooling=pooling)
        paths[pooling] = str(root / pooling)
        model.save(paths[pooling])
        expected[pooling] = model.encode(TEXTS)
        del model
    env = {**os.environ, "HF_MODULES_CACHE": str(root / "hf-modules"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-I", "-c", LOADER, json.dumps(TEXTS), *paths.values()],
                         cwd=root, env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    return {"gecko": loaded["gecko"], "paths": paths, "expected": expected,
            "loaded": {pooling: loaded[path] for pooling, path in paths.items()}}


@pytest.mark.parametrize("pooling", POOLINGS)
def test_saved_embedder_loads_without_gecko(round_trip: dict[str, Any], pooling: str) -> None:
    loaded = round_trip["loaded"][pooling]
    assert round_trip["gecko"] == "not importable"
    assert loaded["is_causal"] is False  # the bidirectional switch survived
    assert torch.allclose(torch.tensor(loaded["embeddings"]), torch.from_numpy(round_trip["expected"][pooling]),
                          rtol=0, atol=1e-6)
    assert loaded["pooler pickles"]
    if pooling == "latent-attention":  # the pooler's code runs only when trusted; gecko trusts its own
        assert loaded["plain"].startswith("refused") and "trust_remote_code=True" in loaded["plain"]
        assert loaded["saved again"]
        assert runs_only_gecko_code(round_trip["paths"][pooling])
        assert runs_only_gecko_code(round_trip["paths"][pooling] + "-again")
    else:  # library modules only
        assert loaded["plain"] == "loads"
        assert not runs_only_gecko_code(round_trip["paths"][pooling])


# --- 4. training with gecko's loss ------------------------------------------------------------------

def batch_loss(model: SentenceTransformer) -> float:
    """Gecko's loss (eq. 3) on ROWS as one batch, without training."""
    loss = build_loss(model, gather_across_processes=False)
    features = [model.preprocess([row[column] for row in ROWS]) for column in ("anchor", "positive")]
    model.eval()
    with torch.no_grad():
        return loss(features).item()


def config(output: Path, init: str) -> TrainConfig:
    return TrainConfig(stage="finetune", init=init, output=str(output), max_steps=4, batch_size=len(ROWS),
                       lr=1e-4, warmup_ratio=0.0, max_seq_length=32)


def test_a_few_steps_of_gecko_loss_train_a_latent_attention_embedder(lm_dir: str, tmp_path: Path) -> None:
    """The built model straight into gecko's trainer (as `--init` a decoder will run): the loss on the
    batch falls, the pooler's own weights move, and gecko's save keeps it loadable."""
    model = build(lm_dir, pooling="latent-attention")
    model.max_seq_length = 32
    latents = model[1].latents.detach().clone()
    before = batch_loss(model)
    run = config(tmp_path / "trained", init="embedded-llm")
    _, steps, _ = _run(model, run, rows_to_dataset(ROWS), [])
    assert steps == 4 and batch_loss(model) < before
    assert model[1].to_out.weight.abs().max() > 0 and not torch.equal(model[1].latents, latents)
    save_model(model, run, steps)
    assert runs_only_gecko_code(run.output)


def test_gecko_train_entry_trains_a_saved_mean_pooled_embedder(lm_dir: str, tmp_path: Path) -> None:
    """Mean pooling needs no custom code, so `train` loads the saved model by its path as `--init`."""
    start = build(lm_dir, pooling="mean")
    start.save(str(tmp_path / "start"))
    before = batch_loss(start)
    del start
    summary = train(config(tmp_path / "trained", init=str(tmp_path / "start")), rows_to_dataset(ROWS))
    trained = SentenceTransformer(summary["output"], device="cpu")
    assert summary["steps"] == 4 and batch_loss(trained) < before
    assert attention_of(trained[0].auto_model) == "bidirectional"
    assert json.loads(Path(summary["output"], "gecko.json").read_text())["training"]["steps"] == 4


def test_the_commands_grow_the_embedded_llm_and_evaluate_loads_the_result(tmp_path: Path) -> None:
    """`gecko pretrain --init embedded-llm` builds NV-Embed's model (latent attention, bidirectional),
    trains it and saves it; `gecko evaluate` then loads it with no flag (gecko trusts its own pooler);
    `finetune --pooling mean --attention causal` records the other choices."""
    from typer.testing import CliRunner

    from gecko_cli.cli import app
    from tests.conftest import jsonl, read_jsonl

    pairs = [{"title": row["anchor"].split("| query: ")[1], "text": row["positive"].split("| text: ")[1]} for row in ROWS]
    out = tmp_path / "nv"
    result = CliRunner().invoke(app, ["pretrain", "--init", "embedded-llm", "--output", str(out), "--max-steps", "1",
                                      "--batch-size", "4", "--max-seq-length", "32"], input=jsonl(*pairs))
    assert result.exit_code == 0, result.stderr
    training = json.loads((out / "gecko.json").read_text())["training"]
    assert (training["pooling"], training["attention"], training["max_seq_length"]) == ("latent-attention", "bidirectional", 32)
    assert json.loads((out / "config.json").read_text())["is_causal"] is False
    assert runs_only_gecko_code(out)
    records = Path(__file__).resolve().parents[1] / "data" / "train_records.jsonl"
    evaluated = CliRunner().invoke(app, ["evaluate", "--model", str(out), "--dims", "576"], input=records.read_text())
    assert evaluated.exit_code == 0, evaluated.stderr
    assert read_jsonl(evaluated.stdout)[0]["dim"] == 576

    causal = tmp_path / "causal"
    result = CliRunner().invoke(app, ["finetune", "--init", "embedded-llm", "--pooling", "mean", "--attention", "causal",
                                      "--output", str(causal), "--max-steps", "1", "--batch-size", "2",
                                      "--max-seq-length", "32"], input=records.read_text())
    assert result.exit_code == 0, result.stderr
    training = json.loads((causal / "gecko.json").read_text())["training"]
    assert (training["pooling"], training["attention"]) == ("mean", "causal")
    assert json.loads((causal / "config.json").read_text()).get("is_causal", True) is not False


def test_a_bad_pooling_is_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gecko_cli.cli import app

    result = CliRunner().invoke(app, ["finetune", "--init", "embedded-llm", "--pooling", "max", "--output",
                                      str(tmp_path / "m")], input="")
    assert result.exit_code != 0 and "--pooling takes" in result.stderr and "Traceback" not in result.stderr
