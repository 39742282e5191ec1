"""The BOSS family (Yuan et al. 2023): in-distribution and OOD test sets for sentiment (sa), NLI (nli) and toxicity
(td), three suites, each a `Family` with its own group.

This file declares the suites (`FAMILIES`) and the data they read (`SOURCES`); `loader.py` reads the documents,
`_template_<suite>_yaml` hold the prompts, README.md describes the tasks.
"""

from moe_rbench_tasks.data import Source
from moe_rbench_tasks.family import ID, OOD, ROBUSTNESS, Family, Member, names_of_loader


def _boss(suite: str, title: str, id_set: str, ood: tuple[str, ...], choices: tuple[str, ...]) -> Family:
    return Family(
        key=f"boss_{suite}",
        folder="boss",
        group=f"moe_rbench_boss_{suite}",
        title=f"BOSS {title} (MoE-RBench)",
        report_title=f"BOSS {title} (accuracy)",
        members=tuple(
            Member(
                f"moe_rbench_boss_{suite}_{name}",
                name,
                f"ID {name}" if role == ID else name,
                role,
                template=f"_template_{suite}_yaml",
            )
            for name, role in ((id_set, ID), *((name, OOD) for name in ood))
        ),
        choices=choices,
        ood_group=f"moe_rbench_boss_{suite}_ood",
        ood_title=f"BOSS {title}: OOD mean over {len(ood)} sets",
        version=2.0,
        umbrella=ROBUSTNESS,
    )


BOSS_SA = _boss("sa", "sentiment", "amazon", ("dynasent", "semeval", "sst5"), ("negative", "positive", "neutral"))
BOSS_NLI = _boss("nli", "NLI", "mnli", ("anli", "contract_nli", "wanli"), ("Yes", "Maybe", "No"))
BOSS_TD = _boss("td", "toxicity", "civil_comments", ("adv_civil", "implicit_hate", "toxigen"), ("benign", "toxic"))
BOSS = Source(
    name="boss",
    tasks="moe_rbench_boss_* (test.tsv; few-shot: train.tsv of the suite's ID set)",
    local_path="boss",
    files=tuple(f"{member.subset}/test.tsv" for suite in (BOSS_SA, BOSS_NLI, BOSS_TD) for member in suite.members),
    hub=None,
    obtain="the BOSS benchmark bundle (Yuan et al., NeurIPS 2023 Datasets and Benchmarks, 'Revisiting "
    "Out-of-distribution Robustness in NLP'), whose download link its authors publish at "
    "https://github.com/lifan-yuan/OOD_NLP; unpack its SentimentAnalysis, NaturalLanguageInference and "
    "ToxicDetection folders so that each dataset is <data dir>/boss/<name>/{train,test}.tsv",
    license="per dataset (see the BOSS README)",
)
FAMILIES = (BOSS_SA, BOSS_NLI, BOSS_TD)
SOURCES = (BOSS,)

__getattr__ = names_of_loader(__name__)  # moe_rbench_tasks.boss.load_docs, as before the family was a folder
