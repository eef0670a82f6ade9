"""`TrainConfig`: everything that shapes a training run, in one readable block saved with the model.

nanoGPT style: `gecko pretrain` and `gecko finetune` fill it from their options, the run reads
only it, and gecko.json keeps it (`train/save.py`), so a model remembers how it was trained.
Keyword-only, because many of its fields share a type: a swapped positional argument would
train the wrong model without a word.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gecko_cli.contract.errors import UsageError
from gecko_cli.contract.records import parse_int_list
from gecko_cli.contract.text_format import DEFAULT_TASK, check_text_format
from gecko_cli.train.decoder.bidirectional import ATTENTIONS
from gecko_cli.train.decoder.build import POOLINGS


DISTILL_KINDS = ("margin-mse", "listwise-kl")


@dataclass(frozen=True, kw_only=True)
class Distillation:
    """What the teacher's scores add to the loss.

    kind: "margin-mse" or "listwise-kl"; weight: its weight; contrastive_weight: Gecko's eq. 3
    weight (0 = distillation only); teacher_temperature: T, the teacher's scores are divided by it
    (listwise KL: its softmax temperature; MarginMSE: the scale of its margins).
    """

    kind: str
    weight: float = 1.0
    contrastive_weight: float = 1.0
    teacher_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in DISTILL_KINDS:
            raise ValueError(f"distillation takes {' or '.join(DISTILL_KINDS)}, got {self.kind!r}")
        if self.weight < 0 or self.contrastive_weight < 0 or self.weight + self.contrastive_weight == 0:
            raise ValueError("the loss weights must be >= 0 and not both 0")
        if self.teacher_temperature <= 0:
            raise ValueError(f"the teacher temperature must be positive, got {self.teacher_temperature}")


@dataclass(kw_only=True)
class TrainConfig:
    """Everything that shapes a run, saved as-is in gecko.json (field order is gecko.json's order).

    >>> TrainConfig(stage="finetune", init="base", output="out").batch_size
    32
    """

    stage: str  # "pretrain" or "finetune"
    init: str  # model the weights start from
    # A decoder LM grown into an embedder (train/decoder/, NV-Embed); None: `init` is an embedder already.
    pooling: str | None = None  # "latent-attention", "mean" or "last"
    attention: str | None = None  # "bidirectional" or "causal"
    output: str
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 32
    mini_batch_size: int | None = None  # set -> CachedGeckoLoss (GradCache), memory bounded by it
    max_seq_length: int | None = None  # training texts cut to it; None: the model's own limit
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    temperature: float = 0.05
    same_tower: bool = True
    mrl_dims: list[int] = field(default_factory=list)
    seed: int = 0
    save_steps: int | None = None
    resume: bool = False
    task: str = DEFAULT_TASK
    text_format: str = "gecko"  # how texts are written: Gecko's unified format or plain (TEXT_FORMATS)
    num_negatives: int = 0  # hard-negative columns per row (0 in pretraining)
    gather_across_processes: bool = True  # data-parallel: in-batch negatives from every process
    # Distillation from the LLM's scores (train/losses/distill.py); None = Gecko's loss alone.
    distill: str | None = None  # "margin-mse" or "listwise-kl"
    distill_weight: float = 1.0
    contrastive_weight: float = 1.0
    teacher_field: str | None = None  # the passage field holding the teacher score
    teacher_temperature: float = 1.0

    def check(self) -> None:
        """Raise `UsageError` for values the trainer would reject later with a traceback."""
        if self.batch_size < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise UsageError("--batch-size and --max-steps must be at least 1")
        if self.epochs <= 0 or self.lr <= 0 or not 0 <= self.warmup_ratio < 1:
            raise UsageError("need --epochs > 0, --lr > 0 and 0 <= --warmup-ratio < 1")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise UsageError(f"--pooling takes {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.attention is not None and self.attention not in ATTENTIONS:
            raise UsageError(f"--attention takes {', '.join(ATTENTIONS)}, got {self.attention!r}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise UsageError("--max-seq-length must be at least 1")
        check_text_format(self.text_format)
        if self.save_steps is not None and self.save_steps < 1:
            raise UsageError("--save-steps must be at least 1")
        if self.distill is not None:
            try:
                self.distillation()
            except ValueError as exc:
                raise UsageError(f"--distill: {exc}") from None
            if self.num_negatives < 1:
                raise UsageError("--distill needs hard negatives (--num-negatives 1 or more)")

    def distillation(self) -> Distillation | None:
        """The loss's distillation settings, or None (ValueError for impossible values)."""
        if self.distill is None:
            return None
        return Distillation(kind=self.distill, weight=self.distill_weight, contrastive_weight=self.contrastive_weight,
                            teacher_temperature=self.teacher_temperature)


def parse_mrl_dims(text: str | None) -> list[int]:
    """`"384,256,128"` -> [384, 256, 128] (largest first, as MatryoshkaLoss reports them).

    >>> parse_mrl_dims("128, 384"), parse_mrl_dims(None)
    ([384, 128], [])
    """
    try:
        dims = parse_int_list(text, "--mrl-dims")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return sorted(set(dims), reverse=True)
