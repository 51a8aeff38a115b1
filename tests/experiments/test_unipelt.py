"""The UniPELT experiment end to end on a tiny model and real task files: classification, QA, TAPT, report."""
from __future__ import annotations

import json

import pytest

from adapterkit.cli import main
from adapterkit.errors import ConfigError
from adapterkit.experiments import unipelt
from adapterkit.testing import save_tiny_model

WORDS = ("the a of and to in is it that was for on with as by film movie good bad what who when where which "
         "university city river war century people first new").split()


def test_unipelt_experiment_end_to_end(tmp_path, data_dir, capsys: pytest.CaptureFixture) -> None:
    model = save_tiny_model(tmp_path / "tiny-bert", head="base", words=WORDS)
    out = tmp_path / "out"
    argv = ["experiment", "unipelt", "--model", str(model), "--data-dir", str(data_dir), "--output-dir", str(out),
            "--tasks", "rte,citation_intent,xquad_en_split", "--k-shots", "8", "--dev-size", "8", "--test-size", "12",
            "--domain-train-size", "16", "--seeds", "3", "--epochs", "1", "--max-length", "32", "--qa-max-length", "48",
            "--systems", "majority,probe,full,unipelt_prompt", "--tapt-epochs", "1", "--tapt-max-texts", "24",
            "--progress", "none"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    # per task: 2 baselines + 2 systems without TAPT + 2 systems with TAPT
    assert len(rows) == 3 * 6
    assert {(r["task"], r["system"], r["tapt"]) for r in rows} == {
        (t, s, tapt) for t in ("rte", "citation_intent", "xquad_en_split")
        for s, tapt in [("majority", False), ("probe", False), ("full", False), ("unipelt_prompt", False),
                        ("full", True), ("unipelt_prompt", True)]}
    by = {(r["task"], r["system"], r["tapt"]): r for r in rows}
    rte = by[("rte", "full", False)]
    assert (rte["k"], rte["train_examples"], rte["dev_examples"], rte["test_examples"]) == (8, 8, 8, 12)
    # the K drawn and the next dev_size are disjoint training examples
    train, dev, _ = unipelt.split("rte", 8, 3, {"dev_size": 8, "test_size": 12}, data_dir)
    assert len(train) == len(dev) == 8
    assert not {(ex["text"], ex["text_pair"]) for ex in train} & {(ex["text"], ex["text_pair"]) for ex in dev}
    # domain tasks report micro- and macro-F1; QA reports EM/F1 and the German zero-shot scores
    assert {"micro_f1", "macro_f1"} <= set(by[("citation_intent", "unipelt_prompt", False)]["test"])
    qa = by[("xquad_en_split", "unipelt_prompt", True)]
    assert {"exact_match", "f1"} <= set(qa["test"]) and {"exact_match", "f1"} <= set(qa["zero_shot"]["de"])
    first_words = by[("xquad_en_split", "majority", False)]
    assert first_words["trainable"] == 0 and {"exact_match", "f1"} <= set(first_words["zero_shot"]["de"])
    assert by[("xquad_en_split", "probe", False)]["trainable"] < qa["trainable"]
    # TAPT: one cached model per task and seed, which the +TAPT runs trained from
    for task in ("rte", "citation_intent", "xquad_en_split"):
        assert (out / "tapt" / f"{task}_seed3" / "model" / "model.safetensors").is_file()
        assert by[(task, "full", True)]["tapt_seconds"] > 0 and by[(task, "full", False)]["tapt_seconds"] == 0
    assert all(r["test_score"] is not None for r in rows)
    assert by[("rte", "full", True)]["pooling"] == by[("rte", "full", False)]["pooling"] is not None
    assert (out / "gates" / "rte_K=8_seed=3_unipelt_prompt" / "gates.json").is_file()
    report = (out / "results.md").read_text()
    assert "## GLUE, K = 8 training examples" in report and "| unipelt_prompt +TAPT |" in report
    assert "citation_intent micro-F1" in report and "DE F1 (zero-shot)" in report and "| majority |" in report
    assert "Paper avg, BERT-base" in report
    for png in ("unipelt_glue.png", "unipelt_domain.png", "unipelt_qa.png"):
        assert (out / png).stat().st_size > 1000
    capsys.readouterr()
    assert main(argv) == 0  # everything logged: a rerun trains nothing (and reuses the TAPT models)
    assert "18 already in" in capsys.readouterr().out
    assert len((out / "runs.jsonl").read_text().splitlines()) == 18
    assert main([*argv, "--report-only", "true", "--seeds", "3,4"]) == 0
    assert "(n=1)" in (out / "results.md").read_text()
    assert "36 runs, 18 already in" in capsys.readouterr().out  # report-only counts what is logged, not the plan


def test_unipelt_glue_table_prints_the_papers_averages_beside_ours() -> None:
    rows = [{"task": t, "k": 100, "seed": s, "system": "unipelt", "tapt": False, "test_score": v, "trainable": 10,
             "train_seconds": 1.0, "tapt_seconds": 0.0} for s in (1, 2) for t, v in (("rte", 0.5), ("sst2", 0.7))]
    opts = {"tasks": ["rte", "sst2"], "k_shots": [100], "seeds": [1, 2]}
    text, series = unipelt.glue_tables(rows, opts, ["unipelt"])
    assert "| unipelt | 50.0 ± 0.0 (n=2) | 70.0 ± 0.0 (n=2) | 60.0 ± 0.0 (n=2) | 62.59 |" in "".join(text)
    assert series == {"unipelt": ([100], [pytest.approx(60.0)])}


def test_unipelt_per_task_series_needs_no_k_with_every_task(tmp_path) -> None:
    """Score against K per task: a K where only some tasks ran still gives their points (the average cannot)."""
    def row(task, k, seed, system, score, tapt=False):
        return {"task": task, "k": k, "seed": seed, "system": system, "tapt": tapt, "test_score": score,
                "trainable": 1, "train_seconds": 1.0}

    rows = [row("sst2", 100, 1, "full", 0.7), row("sst2", 100, 2, "full", 0.8), row("stsb", 100, 1, "full", 0.5),
            row("stsb", 1000, 1, "full", 0.84), row("stsb", 1000, 1, "full", 0.2, tapt=True),
            row("stsb", 500, 1, "lora", None)]
    opts = {"tasks": ["sst2", "stsb", "chemprot"], "k_shots": [1000, 100, 500], "seeds": [1, 2]}
    series = unipelt.glue_task_series(rows, opts, ["full", "lora"])
    assert series["sst2"] == {"full": ([100], [pytest.approx(75.0)], [pytest.approx(7.071, abs=1e-3)])}
    assert series["stsb"] == {"full": ([100, 1000], [pytest.approx(50.0), pytest.approx(84.0)], [0.0, 0.0]),
                              "full +TAPT": ([1000], [pytest.approx(20.0)], [0.0])}
    assert unipelt.glue_tables(rows, opts, ["full"])[1] == {"full": ([100], [pytest.approx(60.0)])}  # seed 1 only; K=1000 lacks sst2
    assert unipelt._glue_task_plot(tmp_path / "tasks.png", series).stat().st_size > 1000


def test_unipelt_qa_table_shows_em_and_f1_x100_like_every_other_table() -> None:
    rows = [{"task": "xquad_en_split", "k": None, "seed": s, "system": "full", "tapt": False, "test_score": f1,
             "test": {"exact_match": em, "f1": f1}, "zero_shot": {"de": {"exact_match": 0.044, "f1": 0.119}},
             "trainable": 10, "train_seconds": 1.0} for s, em, f1 in ((1, 0.26, 0.424), (2, 0.30, 0.444))]
    opts = {"tasks": ["xquad_en_split"], "seeds": [1, 2], "zero_shot_languages": ["de"]}
    text, series = unipelt.qa_table(rows, opts, ["full"])
    assert "| full | 28.0 ± 2.8 (n=2) | 43.4 ± 1.4 (n=2) | 4.4 ± 0.0 (n=2) | 11.9 ± 0.0 (n=2) |" in "".join(text)
    assert series == {"full": ([pytest.approx(43.4), pytest.approx(11.9)], [pytest.approx(1.414, abs=1e-3), 0.0])}


def test_unipelt_tables_mark_runs_at_the_trivial_baseline() -> None:
    """GLUE and domain cells say how many of their runs scored exactly the constant prediction; the note follows
    the table only then."""
    def row(task, system, seed, score, **test):
        return {"task": task, "k": 100 if task == "mrpc" else None, "seed": seed, "system": system, "tapt": False,
                "test_score": score, "test": {"score": score, **test}, "trainable": 1, "train_seconds": 1.0}

    rows = [row("mrpc", "majority", 1, 0.8122), row("mrpc", "full", 1, 0.8122), row("mrpc", "lora", 1, 0.8134)]
    opts = {"tasks": ["mrpc"], "k_shots": [100], "seeds": [1]}
    text = "".join(unipelt.glue_tables(rows, opts, ["majority", "full", "lora"])[0])
    assert "| full | 81.2 ± 0.0 (n=1, †1) |" in text and "| lora | 81.3 ± 0.0 (n=1) |" in text
    assert "| majority | 81.2 ± 0.0 (n=1) |" in text and "†k: k of the cell's runs" in text
    text = "".join(unipelt.glue_tables(rows[:1] + rows[2:], opts, ["majority", "lora"])[0])
    assert "†" not in text
    domain = [row("chemprot", "majority", 1, 0.044, micro_f1=0.362, macro_f1=0.044),
              row("chemprot", "prefix", 1, 0.044, micro_f1=0.362, macro_f1=0.044),
              row("chemprot", "lora", 1, 0.466, micro_f1=0.752, macro_f1=0.466)]
    text = "".join(unipelt.domain_table(domain, {"tasks": ["chemprot"], "seeds": [1]}, ["majority", "prefix",
                                                                                        "lora"])[0])
    assert "| prefix | 36.2 ± 0.0 (n=1, †1) | 4.4 ± 0.0 (n=1, †1) |" in text
    assert "| lora | 75.2 ± 0.0 (n=1) | 46.6 ± 0.0 (n=1) |" in text
    qa = [{**row("xquad_en_split", system, 1, f1, exact_match=em, f1=f1),
           "zero_shot": {"de": {"exact_match": de_em, "f1": de_f1}}}
          for system, em, f1, de_em, de_f1 in (("majority", 0.0, 0.024, 0.0, 0.02), ("lora", 0.0, 0.024, 0.01, 0.05),
                                               ("full", 0.3, 0.424, 0.0, 0.02))]
    text = "".join(unipelt.qa_table(qa, {"tasks": ["xquad_en_split"], "seeds": [1], "zero_shot_languages": ["de"]},
                                    ["majority", "lora", "full"])[0])
    assert "| lora | 0.0 ± 0.0 (n=1, †1) | 2.4 ± 0.0 (n=1, †1) | 1.0 ± 0.0 (n=1) | 5.0 ± 0.0 (n=1) |" in text
    assert "| full | 30.0 ± 0.0 (n=1) | 42.4 ± 0.0 (n=1) | 0.0 ± 0.0 (n=1, †1) | 2.0 ± 0.0 (n=1, †1) |" in text
    assert "| majority | 0.0 ± 0.0 (n=1) |" in text and "†k: k of the cell's runs" in text


def test_unipelt_experiment_rejects_bad_options() -> None:
    assert unipelt.learning_rates({"lrs": "unipelt=5e-4"})["unipelt"] == 5e-4
    with pytest.raises(ConfigError, match="lrs: 'bogus'"):
        unipelt.learning_rates({"lrs": "bogus=1"})
    with pytest.raises(ConfigError, match="tasks: 'qnli'"):
        unipelt.part_of("qnli")
    assert main(["experiment", "unipelt", "--systems", "nonsense"]) == 2
    assert main(["experiment", "unipelt", "--tasks", "xnli_en"]) == 2
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        main(["experiment", "unipelt", "--tapt", "sometimes"])
    with pytest.raises(ConfigError, match="tapt: 'sometimes'"):
        unipelt.tapt_modes({"tapt": "sometimes"})


def test_unipelt_log_records_rates_and_methods_and_refuses_other_defaults(tmp_path, data_dir, capsys) -> None:
    """A log records the per-system learning rates and method fields; one written before they were recorded
    is not extended under other rates (named), nor under the new prefix fields (its own rate of 3e-4)."""
    out = tmp_path / "out"
    argv = ["experiment", "unipelt", "--data-dir", str(data_dir), "--output-dir", str(out), "--tasks", "rte",
            "--seeds", "3", "--report-only", "true"]
    assert main(argv) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["system_lrs"] == unipelt.LRS
    assert settings["methods"]["prefix"] == {"method": "prefix", **unipelt.METHODS["prefix"][1]}
    assert settings["methods"]["prefix"]["learning_rate"] == 3e-4 < unipelt.LRS["prefix"]
    assert "prefix 0.003 (its adapter at 0.0003)" in (out / "results.md").read_text()
    for key in ("system_lrs", "methods"):  # as logs written before this change, which recorded the raw options
        del settings[key]
    (out / "settings.json").write_text(json.dumps({**settings, "lr": None, "lrs": "unipelt=5e-4"}))
    capsys.readouterr()
    assert main(argv) == 2
    assert "settings.json: system_lrs" in capsys.readouterr().err  # that log trained unipelt at 5e-4
    assert main([*argv, "--lrs", "unipelt=5e-4"]) == 2
    err = capsys.readouterr().err
    assert "settings.json: methods" in err and "'learning_rate': 0.0003" in err
