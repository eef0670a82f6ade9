"""`gecko finetune` and `gecko pretrain` end to end on the embedded embedder: a few real steps.

The commands are mounted on a local Typer app with cli.py's own error guard, so the test sees the
exit codes and messages a user would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gecko_cli.cli import guarded
from gecko_cli.stages import finetune, pretrain
from tests.conftest import jsonl, read_jsonl

pytestmark = pytest.mark.slow

app = typer.Typer()


@app.callback()
def _root() -> None:
    """Test app."""


app.command("finetune")(guarded("finetune", finetune.command))
app.command("pretrain")(guarded("pretrain", pretrain.command))

FACTS = [
    ("Aspirin lowers the risk of heart attack.", "Low-dose aspirin reduced myocardial infarction in a randomized trial."),
    ("Vitamin D prevents fractures in the elderly.", "Vitamin D supplementation did not reduce hip fractures in older adults."),
    ("Smoking causes lung cancer.", "Cohort studies link tobacco smoking to most lung cancer cases."),
    ("Statins reduce LDL cholesterol.", "Statin therapy lowered LDL cholesterol by a third over one year."),
    ("Coffee raises blood pressure for a short time.", "Caffeine intake produced an acute rise in systolic pressure."),
    ("Metformin is a first-line drug for type 2 diabetes.", "Guidelines recommend metformin as initial therapy for type 2 diabetes."),
    ("Measles vaccination prevents outbreaks.", "High two-dose MMR coverage stopped measles transmission in schools."),
    ("Sleep loss impairs memory consolidation.", "Participants deprived of sleep recalled fewer word pairs the next day."),
]
QUESTIONS = [
    ("when was the eiffel tower finished", "Paris landmarks", "The Eiffel Tower was completed in March 1889."),
    ("what is the boiling point of water at sea level", "Water", "At sea level pure water boils at 100 degrees Celsius."),
    ("who wrote pride and prejudice", "Jane Austen", "Pride and Prejudice is an 1813 novel by Jane Austen."),
    ("how many legs does a spider have", "Arachnids", "Spiders are arachnids with eight legs and two body segments."),
    ("what gas do plants absorb", "Photosynthesis", "Plants take in carbon dioxide and release oxygen in sunlight."),
    ("largest planet in the solar system", "Jupiter", "Jupiter is the largest planet, more massive than all others combined."),
    ("what is the capital of australia", "Canberra", "Canberra, not Sydney, is the capital city of Australia."),
    ("speed of light in vacuum", "Light", "Light travels at about 299,792 kilometres per second in a vacuum."),
]


def training_records() -> list[dict]:
    """16 records, each with two distinct hard negatives (no duplicate text in any batch)."""
    pairs = [("fact checking", q, {"title": "", "text": t}) for q, t in FACTS]
    pairs += [("question answering", q, {"title": title, "text": t}) for q, title, t in QUESTIONS]
    records = []
    for i, (task, query, positive) in enumerate(pairs):
        negatives = [{"title": "", "text": f"Unrelated note {i}-{j}: the library opens at {8 + j} am on weekdays."}
                     for j in range(2)]
        records.append({"id": f"r{i}", "task": task, "query": query, "positive": positive, "negatives": negatives})
    return records


def test_finetune_saves_a_model_that_loads_with_its_prompts(tmp_path: Path) -> None:
    out = tmp_path / "model"
    held_out = tmp_path / "eval.jsonl"
    held_out.write_text(jsonl(*training_records()[:4]))
    result = CliRunner().invoke(app, ["finetune", "--output", str(out), "--max-steps", "2", "--batch-size", "4",
                                      "--mrl-dims", "384,128", "--warmup-ratio", "0", "--sample-by", "task",
                                      "--eval", str(held_out)],
                                input=jsonl(*training_records()))
    assert result.exit_code == 0, result.stderr
    (summary,) = read_jsonl(result.stdout)  # stdout is the one summary line, nothing else
    assert summary["steps"] == 2 and summary["output"] == str(out) and summary["processes"] == 1
    assert summary["final_loss"] > 0 and summary["examples_per_second"] > 0
    assert summary["eval"]["records"] == 4
    assert {"accuracy@1", "mrr"} <= set(summary["eval"]["before"]) and 0 < summary["eval"]["after"]["mrr"] <= 1

    config = json.loads((out / "gecko.json").read_text())
    assert config["query_template"] == "task: {task} | query: {text}"
    assert config["training"]["mrl_dims"] == [384, 128] and config["training"]["num_negatives"] == 2

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(out), device="cpu")
    assert model.prompts["query"] == "task: search result | query: "
    assert model.prompts["document"] == "title: none | text: "
    vectors = model.encode(["does aspirin prevent heart attacks"], prompt_name="query")
    assert vectors.shape == (1, 384)

    # STS sentences go in plain even though the model stored the Gecko format (see evaluate.py):
    # the default must score exactly as `--query-prompt plain`, not as `--query-prompt gecko`.
    from gecko_cli.cli import app as gecko

    sts = tmp_path / "sts.tsv"
    lines = (Path(__file__).resolve().parents[2] / "examples/data/stsbenchmark/dev.tsv").read_text().splitlines()
    sts.write_text("\n".join(lines[:41]) + "\n")

    def spearman(*flags: str) -> float:
        run = CliRunner().invoke(gecko, ["evaluate", "--model", str(out), "--sts", str(sts), "--dims", "384", *flags])
        assert run.exit_code == 0, run.stderr
        return read_jsonl(run.stdout)[0]["spearman"]

    default, gecko_format = spearman(), spearman("--query-prompt", "gecko")
    assert default == spearman("--query-prompt", "plain") and default != gecko_format


@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_max_seq_length_cuts_training_texts_and_the_model_keeps_its_own_limit(stage: str, tmp_path: Path) -> None:
    records = training_records() if stage == "finetune" else [{"title": t, "text": b} for _, t, b in QUESTIONS]

    def run(name: str, *flags: str) -> tuple[dict, Path]:
        out = tmp_path / name
        result = CliRunner().invoke(app, [stage, "--output", str(out), "--max-steps", "1", "--batch-size", "4",
                                          "--warmup-ratio", "0", *flags], input=jsonl(*records))
        assert result.exit_code == 0, result.stderr
        return read_jsonl(result.stdout)[0], out

    full, _ = run("full")
    cut, out = run("cut", "--max-seq-length", "6")
    # the same step on texts cut to 6 tokens is a different loss: the limit reached the trainer
    assert cut["final_loss"] != pytest.approx(full["final_loss"], rel=1e-4)
    assert json.loads((out / "gecko.json").read_text())["training"]["max_seq_length"] == 6
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(out), device="cpu").max_seq_length == 256  # all-MiniLM-L6-v2's own


def test_finetune_bad_line_exits_1_with_its_line(tmp_path: Path) -> None:
    records = training_records()[:3]
    text = jsonl(*records[:2], {"id": "bad", "task": "x", "positive": {"text": "p"}}, records[2])
    result = CliRunner().invoke(app, ["finetune", "--output", str(tmp_path / "m"), "--max-steps", "1"], input=text)
    assert result.exit_code == 1
    assert '<stdin>:3: missing field "query"' in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "m").exists()  # nothing trained on a partial input


@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_several_processes_need_an_input_file(stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # as `accelerate launch --num_processes 2` sets it
    result = CliRunner().invoke(app, [stage, "--output", str(tmp_path / "m")], input=jsonl(*training_records()))
    assert result.exit_code == 2
    assert "--input FILE" in result.stderr and result.stdout == ""


def test_training_bar_draws_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from gecko_cli import progress

    with progress.training_bar("finetune") as report:  # pytest's stderr is not a terminal
        assert report is None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with progress.training_bar("pretrain") as report:
        assert report is not None
        report(0, 4, "starting")
        report(1, 4, "loss 0.3912 · 12.5 ex/s")


def test_pretrain_on_title_body_pairs(tmp_path: Path) -> None:
    pairs = [{"title": title, "text": text} for _, title, text in QUESTIONS]
    result = CliRunner().invoke(app, ["pretrain", "--output", str(tmp_path / "pre"), "--max-steps", "1",
                                      "--batch-size", "8", "--mini-batch-size", "4", "--task", "title to body"],
                                input=jsonl(*pairs))
    assert result.exit_code == 0, result.stderr
    (summary,) = read_jsonl(result.stdout)
    assert summary["steps"] == 1 and summary["stage"] == "pretrain"
    config = json.loads((tmp_path / "pre" / "gecko.json").read_text())
    assert config["task"] == "title to body" and config["training"]["loss"] == "CachedGeckoLoss"


def test_training_log_comes_from_rank_0_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from gecko_cli import progress

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert progress.training_log("finetune") is None
    monkeypatch.setenv("RANK", "0")
    assert progress.training_log("finetune") is not None


@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_log_off_a_terminal_is_geckos_own(stage: str, tmp_path: Path) -> None:
    """`make demo 2> log`: gecko's own progress lines and summary, not the HF Trainer's log dicts
    (`{'loss': ..., 'grad_norm': ...}`, `{'train_runtime': ...}`) nor sentence-transformers'
    "Computing widget examples" bar. CliRunner's stderr is not a terminal, as in a log."""
    records = training_records()
    if stage == "pretrain":
        records = [{"query": r["query"], "positive": r["positive"]} for r in records]
    result = CliRunner().invoke(app, [stage, "--output", str(tmp_path / "m"), "--max-steps", "2", "--batch-size", "4"],
                                input=jsonl(*records))
    assert result.exit_code == 0, result.stderr
    assert "{'" not in result.stderr and "grad_norm" not in result.stderr and "train_runtime" not in result.stderr
    assert "widget" not in result.stderr.lower()
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"gecko {stage}: 16 in, 16 out")
    assert [line.split(" · ")[0] for line in lines[1:3]] == [f"gecko {stage}: step 1/2", f"gecko {stage}: step 2/2"]
    assert lines[3].startswith(f"gecko {stage}: 2 steps in ") and lines[3].endswith(f"model saved to {tmp_path / 'm'}")
    assert len(lines) == 4
    (summary,) = read_jsonl(result.stdout)
    assert summary["steps"] == 2
    # The model card keeps its widget examples: picked quietly, not dropped.
    assert "widget:" in (tmp_path / "m" / "README.md").read_text()


def scored_records() -> list[dict]:
    """The training records with a teacher score (`ql`, as mine-negatives keeps it) on every passage."""
    records = training_records()
    for i, record in enumerate(records):
        record["positive"]["ql"] = -5.0 - i / 10
        for j, negative in enumerate(record["negatives"]):
            negative["ql"] = -20.0 + j
    return records


@pytest.mark.parametrize("kind", ["margin-mse", "listwise-kl"])
def test_finetune_distills_the_teacher_scores(kind: str, tmp_path: Path) -> None:
    out = tmp_path / "model"
    records = scored_records()
    del records[3]["negatives"][1]["ql"]  # one record without a teacher score for a negative: dropped
    result = CliRunner().invoke(app, ["finetune", "--output", str(out), "--max-steps", "2", "--batch-size", "4",
                                      "--mini-batch-size", "2", "--mrl-dims", "384,128", "--distill", kind,
                                      "--distill-weight", "0.5", "--teacher", "ql"],
                                input=jsonl(*records))
    assert result.exit_code == 0, result.stderr
    (summary,) = read_jsonl(result.stdout)
    assert summary["steps"] == 2 and summary["final_loss"] > 0
    assert "16 in, 15 out" in result.stderr and "1 dropped (no teacher score)" in result.stderr
    training = json.loads((out / "gecko.json").read_text())["training"]
    assert training["distill"] == kind and training["teacher_field"] == "ql" and training["distill_weight"] == 0.5


def test_finetune_distill_without_scores_or_with_a_bad_kind_is_one_line(tmp_path: Path) -> None:
    bad = CliRunner().invoke(app, ["finetune", "--output", str(tmp_path / "m"), "--distill", "cosine"],
                             input=jsonl(*scored_records()))
    assert bad.exit_code == 2 and "--distill takes margin-mse or listwise-kl" in bad.stderr
    assert "Traceback" not in bad.stderr
    none = CliRunner().invoke(app, ["finetune", "--output", str(tmp_path / "m"), "--distill", "margin-mse",
                                    "--teacher", "rc"], input=jsonl(*scored_records()))
    assert none.exit_code == 2 and "no training examples" in none.stderr and "Traceback" not in none.stderr


def test_plain_text_format_trains_and_saves_plain_texts(tmp_path: Path) -> None:
    """`--text-format plain`: the student's own format (a plain sentence-transformers model learnt
    query and `title text`), so it keeps reading texts as before; saved, so evaluate reads it alike."""
    from gecko_cli.contract.text_format import resolve_templates
    from gecko_cli.stages.finetune import training_rows

    rows, _ = training_rows(training_records()[8:9], 1, None, "plain")
    assert rows[0]["anchor"] == "when was the eiffel tower finished"
    assert rows[0]["positive"] == "Paris landmarks The Eiffel Tower was completed in March 1889."

    def run(name: str, *flags: str) -> tuple[dict, Path]:
        out = tmp_path / name
        result = CliRunner().invoke(app, ["finetune", "--output", str(out), "--max-steps", "1", "--batch-size", "4",
                                          "--warmup-ratio", "0", *flags], input=jsonl(*training_records()))
        assert result.exit_code == 0, result.stderr
        return read_jsonl(result.stdout)[0], out

    gecko_run, _ = run("gecko")
    plain_run, out = run("plain", "--text-format", "plain")
    assert plain_run["final_loss"] != pytest.approx(gecko_run["final_loss"], rel=1e-4)  # other texts reached the loss
    config = json.loads((out / "gecko.json").read_text())
    assert (config["query_template"], config["document_template"]) == ("{text}", "{title} {text}")
    assert config["training"]["text_format"] == "plain"
    templates = resolve_templates(str(out), None, None, None)
    assert templates.render_query("why?") == "why?" and templates.render_document("Body.", "T") == "T Body."
    from sentence_transformers import SentenceTransformer

    assert set(SentenceTransformer(str(out), device="cpu").prompts.values()) <= {""}  # no prefix added


def test_an_unknown_text_format_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["pretrain", "--output", str(tmp_path / "m"), "--text-format", "xml"],
                                input=jsonl({"title": "T", "text": "B"}))
    assert result.exit_code == 2
    assert result.stderr.strip() == "gecko pretrain: --text-format takes gecko or plain, got 'xml'"
