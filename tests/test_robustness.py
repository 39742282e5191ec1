"""Robustness tasks: adversarial NLI, BOSS, few-shot, umbrella groups, the classifier protocol, tracing."""

from __future__ import annotations

import csv
import json

import lm_eval
import pytest
import torch
from helpers import BIN, FIXTURE_DATA, STYLE_OOD_TASKS, evaluate_to, lm_eval_cli, lm_eval_outputs, run
from transformers import AutoModelForSequenceClassification

import moe_rbench_tasks
from moe_rbench.trace import trace_routing
from moe_rbench_models import MoEHFLM
from moe_rbench_models.tiny import build_tiny_model
from moe_rbench_tasks import adversarial_nli, boss
from moe_rbench_tasks.data import MalformedDataError, MissingDataError
from moe_rbench_tasks.families import ADVERSARIAL_NLI, BOSS_NLI, BOSS_SA, BOSS_TD

ADV_TASKS = [member.task for member in ADVERSARIAL_NLI.members if member.in_group]
BOSS = (BOSS_SA, BOSS_NLI, BOSS_TD)
BOSS_TASKS = {family.key.removeprefix("boss_"): family.tasks for family in BOSS}
ALL_BOSS = [task for tasks in BOSS_TASKS.values() for task in tasks]


def adversarial_prompt(doc: dict, hard: bool) -> str:
    """The paper's templates, filled by hand."""
    if hard:
        return (
            "Given the two sentences: (1) "
            + doc["premise"]
            + ". (2) "
            + doc["hypothesis"]
            + ". Does the first sentence entail the second ?"
        )
    return "Is this true ?\n" + doc["premise"] + "\n implies \n" + doc["hypothesis"] + "\n Answer: "


# -- loaders ------------------------------------------------------------------------------------------------


def test_fixture_sets_load_with_integer_and_word_labels():
    for dataset in adversarial_nli.SPLITS:
        docs = adversarial_nli.load_docs(dataset, data_dir=str(FIXTURE_DATA))
        assert len(docs["test"]) and set(docs["test"]["label"]) <= {0, 1, 2}
    # dynasent labels are words, amazon integers: the same documents in reversed roles parse alike
    amazon = boss.load_docs("amazon", data_dir=str(FIXTURE_DATA))
    sst5 = boss.load_docs("sst5", data_dir=str(FIXTURE_DATA))  # amazon's texts, reversed, labels as words
    assert (
        sst5["test"]["label"] == amazon["test"]["label"][::-1] and sst5["test"]["text"] == amazon["test"]["text"][::-1]
    )
    nli = boss.load_docs("wanli", data_dir=str(FIXTURE_DATA))["test"][0]
    assert set(nli) == {"id", "premise", "hypothesis", "label", "choices"}


@pytest.mark.parametrize("dataset", list(adversarial_nli.SPLITS))
def test_few_shot_demonstrations_never_overlap_the_evaluated_documents(dataset, real_data_dir):
    docs = adversarial_nli.load_docs(dataset, data_dir=str(real_data_dir))
    assert len(docs["train"]) >= 1000
    assert not set(docs["train"]["id"]) & set(docs["test"]["id"])


def test_fixture_few_shot_splits_are_disjoint_from_test_for_every_task():
    for dataset in adversarial_nli.SPLITS:
        docs = adversarial_nli.load_docs(dataset, data_dir=str(FIXTURE_DATA))
        assert len(docs["train"]) and not set(docs["train"]["id"]) & set(docs["test"]["id"]), dataset
    for family in BOSS:
        for name in family.subsets:
            docs = boss.load_docs(name, data_dir=str(FIXTURE_DATA))
            fields = [key for key in docs["test"].column_names if key not in ("id", "label", "choices")]
            train = {tuple(row[f] for f in fields) for row in docs["train"]}
            assert len(train) and not train & {tuple(row[f] for f in fields) for row in docs["test"]}, name


def test_real_adversarial_sets_have_the_papers_sizes(real_data_dir):
    sizes = {
        dataset: len(adversarial_nli.load_docs(dataset, data_dir=str(real_data_dir))["test"])
        for dataset in adversarial_nli.SPLITS
    }
    assert sizes == {
        "snli": 9842,
        "snli_test": 9824,
        "snli_hard": 3261,
        "anli_r1": 1000,
        "anli_r2": 1000,
        "anli_r3": 1200,
    }
    hard = adversarial_nli.load_docs("snli_hard", data_dir=str(real_data_dir))["test"]
    test = adversarial_nli.load_docs("snli_test", data_dir=str(real_data_dir))["test"]
    assert set(hard["id"]) <= set(test["id"])  # every hard pair pairs up with its SNLI test row
    assert hard[0]["pair_id"] == "2677109430.jpg#1r1n" and hard[0]["label"] == 1


def test_missing_and_malformed_data_fail_clearly(tmp_path):
    with pytest.raises(MissingDataError, match=r"BOSS benchmark bundle.*github.com/lifan-yuan/OOD_NLP"):
        boss.load_docs("amazon", data_dir=str(tmp_path))
    with pytest.raises(MissingDataError, match="no copy on the Hugging Face hub.*snli_1.0_test_hard.jsonl"):
        adversarial_nli.load_docs("snli_hard")
    with pytest.raises(MissingDataError, match=r"anli/R2/test.jsonl"):
        adversarial_nli.load_docs("anli_r2", data_dir=str(tmp_path))
    (tmp_path / "boss" / "sst5").mkdir(parents=True)
    (tmp_path / "boss" / "sst5" / "test.tsv").write_text("Text\tLabel\ngreat film\tpositive\nfine\tsideways\n")
    with pytest.raises(MalformedDataError, match=r"sst5/test.tsv, row 2: label must be one of 0 or negative"):
        boss.load_docs("sst5", data_dir=str(tmp_path))
    (tmp_path / "boss" / "sst5" / "test.tsv").write_text("Text\tLabel\ngreat\tfilm\t1\n")
    with pytest.raises(MalformedDataError, match=r"line 2: 3 fields, the header has 2"):
        boss.load_docs("sst5", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Unknown BOSS set 'imdb'"):
        boss.load_docs("imdb", data_dir=str(FIXTURE_DATA))


def test_moe_rbench_data_lists_every_source():
    result = run([str(BIN / "moe-rbench"), "data", "--data_dir", str(FIXTURE_DATA)])
    for name in ("snli", "snli_hard", "anli", "boss", "decodingtrust_style"):
        assert f"\n{name}  (tasks:" in result.stdout
    assert "https://nlp.stanford.edu/projects/snli/snli_1.0_test_hard.jsonl" in result.stdout
    assert "MISSING" not in result.stdout


# -- the stock command -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def robustness_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("robustness")
    options = ["--limit", "5", "--batch_size", "8", "--log_samples", "--output_path", str(out)]
    lm_eval_cli(f"pretrained={tiny_model('olmoe')}", "moe_rbench_robustness", *options)
    return lm_eval_outputs(out)


def test_robustness_umbrella_runs_every_subtask_and_aggregate(robustness_run):
    results, samples = robustness_run
    assert set(samples) == set(ADV_TASKS) | set(STYLE_OOD_TASKS) | set(ALL_BOSS)
    groups = results["groups"]
    families = ["moe_rbench_adv", "moe_rbench_ood", *(family.group for family in BOSS)]
    assert set(results["group_subtasks"]["moe_rbench_robustness"]) == set(families)
    assert results["group_subtasks"]["moe_rbench_adv"] == ["moe_rbench_snli", "moe_rbench_anli", "moe_rbench_snli_hard"]
    anli = [results["results"][f"moe_rbench_anli_r{r}"]["acc,none"] for r in (1, 2, 3)]
    assert groups["moe_rbench_anli"]["acc,none"] == pytest.approx(sum(anli) / 3)  # robust accuracy
    for suite, tasks in BOSS_TASKS.items():
        assert results["group_subtasks"][f"moe_rbench_boss_{suite}"] == [tasks[0], f"moe_rbench_boss_{suite}_ood"]
        ood = groups[f"moe_rbench_boss_{suite}_ood"]["acc,none"]
        assert ood == pytest.approx(sum(results["results"][t]["acc,none"] for t in tasks[1:]) / 3)


def test_logged_prompts_are_the_papers_templates(robustness_run):
    _, samples = robustness_run
    docs = adversarial_nli.load_docs("anli_r1", data_dir=str(FIXTURE_DATA))["test"]
    first = next(s for s in samples["moe_rbench_anli_r1"] if s["doc_id"] == 0)
    assert first["arguments"]["gen_args_0"]["arg_0"] == adversarial_prompt(docs[0], hard=False)
    assert [a["arg_1"] for a in first["arguments"].values()] == ["Yes", "Maybe", "No"]  # right after "Answer: "
    text = boss.load_docs("toxigen", data_dir=str(FIXTURE_DATA))["test"][0]["text"]
    toxigen = next(s for s in samples["moe_rbench_boss_td_toxigen"] if s["doc_id"] == 0)
    assert toxigen["arguments"]["gen_args_0"]["arg_0"] == text + "\n All in all , the toxicity was "
    sentiment = next(s for s in samples["moe_rbench_boss_sa_dynasent"] if s["doc_id"] == 0)
    assert sentiment["arguments"]["gen_args_1"]["arg_1"] == " positive"


def test_adversarial_group_on_the_real_release_files(tiny_model, real_data_dir, tmp_path):
    lm = MoEHFLM(pretrained=str(tiny_model("mixtral")), device="cpu", batch_size=8)
    evaluate_to(tmp_path, lm, ["moe_rbench_adv", "moe_rbench_snli_test"], data_dir=real_data_dir, limit=3)
    results, samples = lm_eval_outputs(tmp_path)
    assert results["n-samples"]["moe_rbench_anli_r3"] == {"original": 1200, "effective": 3}
    assert "acc,none" in results["groups"]["moe_rbench_anli"]
    with (real_data_dir / "snli" / "hf" / "validation.tsv").open(newline="", encoding="utf-8") as file:
        first_snli = next(csv.DictReader(file, delimiter="\t"))
    logged = next(s for s in samples["moe_rbench_snli"] if s["doc_id"] == 0)["arguments"]["gen_args_0"]["arg_0"]
    assert logged == (
        "Is this true ?\nTwo women are embracing while holding to go packages.\n implies \n"
        "The sisters are hugging goodbye while holding to go packages after just eating lunch.\n Answer: "
    )
    assert first_snli["premise"] == "Two women are embracing while holding to go packages."
    hard = next(s for s in samples["moe_rbench_snli_hard"] if s["doc_id"] == 0)["arguments"]
    assert hard["gen_args_0"]["arg_0"] == (
        "Given the two sentences: (1) This church choir sings to the masses as they sing joyous songs from the book "
        "at a church.. (2) The church has cracks in the ceiling.. Does the first sentence entail the second ?"
    )
    assert hard["gen_args_0"]["arg_1"] == " Yes"


def test_few_shot_prompts_draw_from_the_documented_splits(tiny_model):
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)})
    lm = MoEHFLM(pretrained=str(tiny_model("llama")), device="cpu", batch_size=8)
    tasks = ["moe_rbench_anli_r2", "moe_rbench_snli_hard", "moe_rbench_boss_nli_wanli", "moe_rbench_style_tweet_p0"]
    results = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=2, limit=3, task_manager=manager, log_samples=True
    )
    dev = adversarial_nli.load_docs("anli_r2", data_dir=str(FIXTURE_DATA))["train"]
    prompt = results["samples"]["moe_rbench_anli_r2"][0]["arguments"][0][0]
    assert prompt.count("Is this true ?") == 3 and sum(doc["hypothesis"] in prompt for doc in dev) == 2
    mnli_train = boss.load_docs("mnli", data_dir=str(FIXTURE_DATA))["train"]
    prompt = results["samples"]["moe_rbench_boss_nli_wanli"][0]["arguments"][0][0]
    assert prompt.count("Given the two sentences") == 3 and sum(doc["hypothesis"] in prompt for doc in mnli_train) == 2
    for task in tasks:
        assert results["configs"][task]["num_fewshot"] == 2


def test_moe_rbench_umbrella_lists_the_robustness_group():
    manager = moe_rbench_tasks.task_manager(include_defaults=False)
    assert "moe_rbench_robustness" in manager.all_groups and "moe_rbench" in manager.all_groups
    assert "moe_rbench_snli_test" in manager.all_tasks


# -- routing across sets --------------------------------------------------------------------------------------


def test_snli_and_snli_hard_records_pair_by_pair(tiny_model, tmp_path):
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)})
    lm = MoEHFLM(pretrained=str(tiny_model("qwen2_moe")), device="cpu", batch_size=8, routing_out=str(tmp_path))
    lm_eval.simple_evaluate(model=lm, tasks=["moe_rbench_snli_test", "moe_rbench_snli_hard"], task_manager=manager)
    rows = trace_routing(tmp_path, "moe_rbench_snli_test", ["moe_rbench_snli_hard"])
    assert {row.pairs for row in rows} == {12}  # the 12 hard pairs of the fixture, each also in its test slice
    assert all(0 <= row.mean_pair_l1 <= 2 for row in rows)


def test_boss_id_and_ood_documents_are_not_paired(tiny_model, tmp_path):
    """BOSS's ID and OOD sets hold different documents: tracing compares their distributions only, and says so."""
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)})
    lm = MoEHFLM(pretrained=str(tiny_model("qwen2_moe")), device="cpu", batch_size=8, routing_out=str(tmp_path / "r"))
    lm_eval.simple_evaluate(
        model=lm, tasks=["moe_rbench_boss_sa_amazon", "moe_rbench_boss_sa_dynasent"], task_manager=manager
    )
    result = run(
        [
            str(BIN / "moe-rbench"),
            "trace",
            "--routing",
            str(tmp_path / "r"),
            "--id",
            "moe_rbench_boss_sa_amazon",
            "--ood",
            "moe_rbench_boss_sa_dynasent",
            "--out",
            str(tmp_path / "trace"),
        ]
    )
    rows = json.loads((tmp_path / "trace" / "trace.json").read_text())["rows"]
    assert rows and all(row["pairs"] == 0 and row["mean_pair_l1"] is None for row in rows)
    assert all(row["distribution_l1"] >= 0 for row in rows)
    assert (
        "note: moe_rbench_boss_sa_dynasent: no document aligns with one of moe_rbench_boss_sa_amazon" in result.stderr
    )
    assert "no document aligns" in (tmp_path / "trace" / "trace.md").read_text()


# -- the paper's classifier protocol ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifiers")
    built = {}
    for architecture in ("mixtral", "llama"):
        for labels in (2, 3):
            built[architecture, labels] = build_tiny_model(
                architecture,
                root / f"{architecture}_{labels}",
                head="sequence_classification",
                num_labels=labels,
                initializer_range=0.5,
            )
    return built


@torch.no_grad()
def independent_accuracy(path, prompts: list[str], labels: list[int], classes: list[int]) -> float:
    """Class argmax of each prompt, one at a time, with the checkpoint loaded directly."""
    from moe_rbench_models.tiny import tiny_tokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    tokenizer = tiny_tokenizer()
    correct = 0
    for prompt, label in zip(prompts, labels, strict=True):
        logits = model(torch.tensor([tokenizer(prompt)["input_ids"]])).logits[0]
        correct += int(logits.argmax()) == classes[label]
    return correct / len(prompts)


@pytest.mark.parametrize("architecture", ["mixtral", "llama"])
def test_classifier_head_scores_tasks_through_class_logits(classifiers, architecture):
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)})
    nli = MoEHFLM(
        pretrained=str(classifiers[architecture, 3]), device="cpu", batch_size=4, head="sequence_classification"
    )
    results = lm_eval.simple_evaluate(
        model=nli, tasks=["moe_rbench_anli_r1", "moe_rbench_snli_hard"], task_manager=manager
    )
    for task, dataset, hard in (("moe_rbench_anli_r1", "anli_r1", False), ("moe_rbench_snli_hard", "snli_hard", True)):
        docs = adversarial_nli.load_docs(dataset, data_dir=str(FIXTURE_DATA))["test"]
        expected = independent_accuracy(
            classifiers[architecture, 3], [adversarial_prompt(d, hard) for d in docs], docs["label"], [0, 1, 2]
        )
        assert results["results"][task]["acc,none"] == pytest.approx(expected)
    # a class order given by label_map: choice 0 (negative) is class 1, choice 1 (positive) class 0
    sentiment = MoEHFLM(
        pretrained=str(classifiers[architecture, 2]), device="cpu", head="sequence_classification", label_map="1,0"
    )
    results = lm_eval.simple_evaluate(model=sentiment, tasks=["moe_rbench_sst2"], task_manager=manager)
    docs = moe_rbench_tasks.style_ood.load_docs(subset="base", data_dir=str(FIXTURE_DATA))["test"]
    prompts = [f"Given the sentences: {d['sentence']}\n what is the sentiment of this sentence ? " for d in docs]
    expected = independent_accuracy(classifiers[architecture, 2], prompts, docs["label"], [1, 0])
    assert results["results"]["moe_rbench_sst2"]["acc,none"] == pytest.approx(expected)
    assert results["config"]["moe"]["head"] == "sequence_classification"


def test_classifier_head_maps_choices_by_class_name(classifiers, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(str(classifiers["llama", 2]))
    model.config.id2label, model.config.label2id = {0: "POSITIVE", 1: "negative"}, {"POSITIVE": 0, "negative": 1}
    model.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text((classifiers["llama", 2] / "tokenizer.json").read_text())
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (classifiers["llama", 2] / name).exists():
            (tmp_path / name).write_text((classifiers["llama", 2] / name).read_text())
    lm = MoEHFLM(pretrained=str(tmp_path), device="cpu", head="sequence_classification")
    assert lm._classifier.choice_classes("t", [" negative", " positive"]) == [1, 0]
    assert MoEHFLM(
        pretrained=str(tmp_path), device="cpu", head="sequence_classification", label_map="negative,POSITIVE"
    )._classifier.label_map == [1, 0]


def test_classifier_head_errors(classifiers, tiny_model):
    manager = moe_rbench_tasks.task_manager(include_defaults=False, metadata={"data_dir": str(FIXTURE_DATA)})
    three = MoEHFLM(pretrained=str(classifiers["mixtral", 3]), device="cpu", head="sequence_classification")
    with pytest.raises(ValueError, match=r"2 choices \(negative, positive\) but the classifier has 3 classes"):
        lm_eval.simple_evaluate(model=three, tasks=["moe_rbench_sst2"], task_manager=manager, limit=2)
    with pytest.raises(ValueError, match="answers multiple-choice .* requests only; this run asks for generate_until"):
        three.generate_until([])
    from lm_eval.api.instance import Instance

    single = [Instance("loglikelihood", {}, ("The capital of France is", " Paris"), 0, ("lambada", 0, 1))]
    with pytest.raises(ValueError, match="lambada: head=sequence_classification scores multiple-choice tasks"):
        three.loglikelihood(single)
    with pytest.raises(ValueError, match="classes \\[5\\] do not exist"):
        MoEHFLM(
            pretrained=str(classifiers["mixtral", 3]), device="cpu", head="sequence_classification", label_map="0,1,5"
        )
    with pytest.raises(ValueError, match="routing_out, DoLa and SCMoE work with the causal LM head only"):
        MoEHFLM(
            pretrained=str(classifiers["mixtral", 3]), device="cpu", head="sequence_classification", routing_out="x"
        )
    with pytest.raises(ValueError, match="label_map applies to head=sequence_classification only"):
        MoEHFLM(pretrained=str(tiny_model("mixtral")), device="cpu", label_map="0,1")
