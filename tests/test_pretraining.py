"""Continued masked-LM pretraining (DAPT/TAPT): masking statistics, corpora, the MLM head, the command, resume."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, BertForMaskedLM

from adapterkit.cli import main
from adapterkit.data.preprocess import encode_mlm
from adapterkit.data.tasks import get_task
from adapterkit.errors import ConfigError, DataError
from adapterkit.model import default_model_path
from adapterkit.pretraining import (
    MLMSpec,
    load_mlm_model,
    mlm_collator,
    pretrain,
    read_corpus,
    require_mask_token,
    task_texts,
)
from adapterkit.testing import kill_after_first_checkpoint, save_tiny_model, tiny_config, tiny_tokenizer
from adapterkit.training import TrainConfig

WORDS = ("the", "a", "movie", "was", "good", "great", "bad", "awful", "plot", "film", "acting", "very", "dull", "fine")


def corpus(n: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(default_model_path())


def test_masking_statistics_on_a_large_random_batch(minilm_tokenizer):
    """15% of the real tokens are chosen; of those 80% become [MASK], 10% a random token, 10% stay."""
    tok = minilm_tokenizer
    g = torch.Generator().manual_seed(0)
    rows, length = 64, 256
    ids = torch.randint(1000, len(tok), (rows, length), generator=g)
    ids[:, 0], ids[:, -1] = tok.cls_token_id, tok.sep_token_id
    lengths = [length if i % 2 else length - 20 for i in range(rows)]  # the collator pads every other row
    for i, n in enumerate(lengths):
        ids[i, n - 1], ids[i, n:] = tok.sep_token_id, tok.pad_token_id
    special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id)
    attention = (ids != tok.pad_token_id).long()
    features = [{"input_ids": ids[i, :n].tolist(), "attention_mask": [1] * n,
                 "special_tokens_mask": special[i, :n].long().tolist()} for i, n in enumerate(lengths)]
    torch.manual_seed(1)
    batch = mlm_collator(tok)(features)
    chosen = batch["labels"] != -100
    real = ~special & (attention == 1)
    assert not chosen[~real].any(), "special tokens and padding must never be masked"
    assert torch.equal(batch["labels"][chosen], ids[chosen])  # labels hold the original tokens
    rate = chosen.sum().item() / real.sum().item()
    assert abs(rate - 0.15) < 0.01, rate
    out = batch["input_ids"][chosen]
    original = ids[chosen]
    n = chosen.sum().item()
    masked = (out == tok.mask_token_id).sum().item() / n
    kept = (out == original).sum().item() / n
    random_ = ((out != original) & (out != tok.mask_token_id)).sum().item() / n
    assert abs(masked - 0.8) < 0.03 and abs(random_ - 0.1) < 0.025 and abs(kept - 0.1) < 0.025, (masked, random_, kept)
    assert torch.equal(batch["input_ids"][~chosen], ids[~chosen])  # nothing else changes
    again = mlm_collator(tok)(features)
    assert not torch.equal(again["labels"] != -100, chosen), "masking must be drawn anew for every batch"


def test_spec_validation():
    with pytest.raises(ConfigError, match="mlm_probability"):
        MLMSpec(mlm_probability=0)
    with pytest.raises(ConfigError, match="random_replace_prob"):
        MLMSpec(mask_replace_prob=0.95, random_replace_prob=0.1)


def test_encode_mlm_packs_blocks(minilm_tokenizer):
    texts = corpus(30)
    packed = encode_mlm(minilm_tokenizer, texts, max_length=16)
    lengths = [len(r) for r in packed["input_ids"]]
    assert all(n == 16 for n in lengths[:-1]) and 0 < lengths[-1] <= 16
    total = sum(len(minilm_tokenizer(t)["input_ids"]) for t in texts)
    assert sum(lengths) == total  # every token (with its [CLS]/[SEP]) lands in exactly one block
    assert sum(map(sum, packed["special_tokens_mask"])) == 2 * len(texts)
    single = encode_mlm(minilm_tokenizer, texts, max_length=8, packing=False)
    assert len(single) == len(texts) and max(len(r) for r in single["input_ids"]) == 8


def test_read_corpus_text_and_jsonl(tmp_path: Path):
    text = tmp_path / "c.txt"
    text.write_text("\ufefffirst line\n\n  second line  \n")
    assert read_corpus(text) == ["first line", "second line"]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "one", "label": 1}\n{"body": "x", "text": "two"}\n')
    assert read_corpus(jsonl) == ["one", "two"]
    with pytest.raises(DataError, match=r"c\.jsonl: line 1: field 'body' missing"):
        read_corpus(jsonl, "body")


def test_read_corpus_bad_input(tmp_path: Path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    with pytest.raises(DataError, match=r"empty\.txt: empty corpus"):
        read_corpus(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("fine line\nna\xefve caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt: line 2: not UTF-8 \(byte offset 12, byte 3 of the line: 0xef\)"):
        read_corpus(latin)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl: line 2: not valid JSON"):
        read_corpus(broken)
    with pytest.raises(DataError, match="corpus file not found"):
        read_corpus(tmp_path / "nope.txt")


def test_tokenizer_without_mask_token_is_a_clear_error(tmp_path: Path):
    tok = tiny_tokenizer(tmp_path / "tok")
    tok.mask_token = None
    with pytest.raises(ConfigError, match="tokenizer has no mask token"):
        require_mask_token(tok, tmp_path / "tok")
    with pytest.raises(ConfigError, match="no mask token"):
        mlm_collator(tok)
    model = save_tiny_model(tmp_path / "nomask", head="base", tokenizer=tok, vocab_size=20)
    with pytest.raises(ConfigError, match=r"nomask: tokenizer has no mask token"):
        load_mlm_model(str(model), say=lambda _: None)


def test_missing_mlm_head_is_built_and_tied(tmp_path: Path):
    said: list[str] = []
    bare = save_tiny_model(tmp_path / "bare", head="base", words=WORDS)
    mlm = load_mlm_model(str(bare), say=said.append)
    assert mlm.built_head and "has no masked-LM head" in said[0] and "tied to the input word embeddings" in said[0]
    assert mlm.model.get_output_embeddings().weight is mlm.model.get_input_embeddings().weight
    assert "bert.pooler.dense.weight" in mlm.carried  # the encoder's pooler is kept for the task model
    headed = tmp_path / "headed"
    tok = tiny_tokenizer(headed, WORDS)
    BertForMaskedLM(tiny_config("bert", vocab_size=len(tok))).save_pretrained(headed)
    said.clear()
    assert not load_mlm_model(str(headed), say=said.append).built_head and not said


def test_sparse_and_full_logit_pretraining_train_the_same(tmp_path: Path):
    bare = save_tiny_model(tmp_path / "bare", head="base", words=WORDS)
    texts = corpus(40)
    histories = []
    for sparse in (True, False):
        cfg = TrainConfig(output_dir=str(tmp_path / f"run{sparse}"), epochs=2, batch_size=8, max_length=16,
                          learning_rate=3e-3, progress="none", logging_steps=1, seed=0)
        pretrain(texts, cfg, model=str(bare), spec=MLMSpec(sparse_logits=sparse), say=lambda _: None)
        log = json.loads((tmp_path / f"run{sparse}" / "train_result.json").read_text())["log_history"]
        histories.append([e["loss"] for e in log if "loss" in e])
    assert len(histories[0]) >= 4 and histories[0] == pytest.approx(histories[1], rel=1e-4)


def test_full_pretraining_lowers_the_mlm_loss_and_saves_a_model_train_accepts(tmp_path: Path, capsys):
    bare = save_tiny_model(tmp_path / "bare", head="base", words=WORDS)
    texts = corpus(80)
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), epochs=6, batch_size=8, max_length=16, learning_rate=3e-3,
                      progress="none", logging_steps=1, seed=0)
    result = pretrain(texts, cfg, model=str(bare), say=lambda _: None)
    assert result.kind == "model" and result.built_head and result.tokens > 0 and result.tokens_per_second > 0
    log = json.loads((tmp_path / "run" / "train_result.json").read_text())["log_history"]
    losses = [e["loss"] for e in log if "loss" in e]
    # from ln(vocab 19) = 2.94 towards the corpus unigram entropy ln(14) = 2.64
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses
    saved = Path(result.output)
    assert (saved / "config.json").is_file() and (saved / "tokenizer.json").is_file()
    with safe_open(str(saved / "model.safetensors"), "pt") as f, safe_open(str(bare / "model.safetensors"), "pt") as g:
        assert torch.equal(f.get_tensor("bert.pooler.dense.weight"), g.get_tensor("pooler.dense.weight"))
        assert not torch.equal(f.get_tensor("bert.encoder.layer.0.attention.self.query.weight"),
                               g.get_tensor("encoder.layer.0.attention.self.query.weight"))

    train_file = tmp_path / "train.tsv"
    train_file.write_text("sentence\tlabel\n" + "\n".join(f"{t}\t{i % 2}" for i, t in enumerate(texts[:16])) + "\n")
    capsys.readouterr()
    assert main(["train", "--model", str(saved), "--train-file", str(train_file), "--text-columns", "sentence",
                 "--epochs", "1", "--max-length", "16", "--progress", "none", "--output-dir", str(tmp_path / "task")]) == 0
    assert json.loads((tmp_path / "task" / "results.json").read_text())["method"] == "pfeiffer"


def test_cli_tapt_on_a_task_then_adapter_init(tmp_path: Path, capsys):
    """TAPT of an adapter on the packaged task's text, then task training starting from that adapter."""
    model = save_tiny_model(tmp_path / "bare", head="base", words=WORDS)
    texts = task_texts(get_task("sample_sentiment"))
    assert len(texts) == 80 and all(isinstance(t, str) and t for t in texts)  # the train split after the dev carve
    out = tmp_path / "tapt"
    assert main(["pretrain", "--model", str(model), "--task", "sample_sentiment", "--method", "pfeiffer",
                 "--adapter-config", '{"reduction_factor": 4}', "--epochs", "1", "--max-length", "16",
                 "--progress", "none", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "80 texts from task sample_sentiment [train] text" in printed and "--init-adapter" in printed
    meta = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert meta["config"]["method"] == "pfeiffer" and meta["extra"]["pretraining"]["objective"] == "mlm"
    assert main(["train", "--model", str(model), "--task", "sample_sentiment", "--init-adapter", str(out / "adapter"),
                 "--epochs", "1", "--max-length", "16", "--progress", "none", "--output-dir", str(tmp_path / "task")]) == 0
    assert "initialised adapter 'pfeiffer'" in capsys.readouterr().out
    assert main(["train", "--model", str(model), "--task", "sample_sentiment", "--init-adapter", str(out / "adapter"),
                 "--method", "lora", "--output-dir", str(tmp_path / "bad")]) == 2
    assert "holds a 'pfeiffer' adapter" in capsys.readouterr().err


def test_cli_bad_input(tmp_path: Path, capsys):
    model = save_tiny_model(tmp_path / "bare", head="base", words=WORDS)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["pretrain", "--model", str(model), "--corpus", str(empty), "--output-dir", str(tmp_path / "r")]) == 2
    assert "empty.txt: empty corpus" in capsys.readouterr().err
    assert main(["pretrain", "--model", str(model), "--output-dir", str(tmp_path / "r")]) == 2
    assert "give --corpus FILE" in capsys.readouterr().err
    text = tmp_path / "c.txt"
    text.write_text("\n".join(corpus(10)))
    assert main(["pretrain", "--model", str(model), "--corpus", str(text), "--task", "sst2"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["pretrain", "--model", str(model), "--corpus", str(text), "--method", "head"]) == 2
    assert "'head' cannot pretrain" in capsys.readouterr().err


def test_save_steps_needs_no_epoch_evaluation(tmp_path: Path):
    from adapterkit.training import training_arguments

    with pytest.raises(ConfigError, match="save_steps"):
        training_arguments(TrainConfig(output_dir=str(tmp_path), save_steps=5), True, MLMSpec())
    with pytest.raises(ConfigError, match="save_steps"):
        TrainConfig(save_steps=0)


def test_pretrain_resumes_after_sigkill(tmp_path: Path):
    """Kill a real `adapterkit pretrain` after its first step checkpoint; --resume auto finishes the run."""
    model = save_tiny_model(tmp_path / "bare", head="base", words=WORDS)
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(corpus(64)) + "\n")  # 64 texts of ~9 tokens -> 36 blocks of 16 -> 5 steps/epoch
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "adapterkit.cli", "pretrain", "--model", str(model), "--corpus", str(text),
           "--epochs", "40", "--batch-size", "8", "--max-length", "16", "--save-steps", "3", "--seed", "3",
           "--progress", "log", "--output-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert kill_after_first_checkpoint(cmd, out, env=env) == -signal.SIGKILL, "pretraining finished before it could be killed"
    assert not (out / "pretrain_result.json").exists()

    done = subprocess.run([*cmd, "--resume", "auto"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming at step" in done.stderr
    result = json.loads((out / "pretrain_result.json").read_text())
    steps_per_epoch = -(-result["blocks"] // 8)
    assert result["global_step"] == 40 * steps_per_epoch
    assert (out / "model" / "model.safetensors").is_file()


def test_task_texts_of_a_qa_task_are_its_contexts_and_questions(tmp_path: Path):
    from adapterkit.data.tasks import task_from_file

    paragraphs = [{"context": f"Context {i} mentions Paris.", "qas": [
        {"id": f"{i}-{q}", "question": f"Question {i}.{q}?", "answers": [{"text": "Paris", "answer_start": 19}]}
        for q in range(2)]} for i in range(3)]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    texts = task_texts(task_from_file("syn", path, kind="qa"))
    assert texts == [f"Context {i} mentions Paris." for i in range(3)] + [f"Question {i}.{q}?" for i in range(3)
                                                                          for q in range(2)]


def test_a_pretrained_sentence_transformers_model_keeps_its_pooling(tmp_path: Path):
    """The bundled MiniLM pools by the mean (modules.json + 1_Pooling): its DAPT/TAPT copy must pool the same way."""
    from adapterkit.heads import sentence_transformers_pooling
    from adapterkit.pretraining import load_mlm_model, save_pretrained_model

    source = save_tiny_model(tmp_path / "st", head="base", words=WORDS)
    (source / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (source / "1_Pooling").mkdir()
    (source / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                  "pooling_mode_mean_tokens": True}))
    (source / "2_Normalize").mkdir()
    assert sentence_transformers_pooling(source) == ("mean", True)
    saved = save_pretrained_model(load_mlm_model(str(source), say=lambda _: None), tmp_path / "out")
    assert sentence_transformers_pooling(saved) == ("mean", True)
