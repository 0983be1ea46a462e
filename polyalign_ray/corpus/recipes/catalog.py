"""The PolyAlign paper's 14 corpora: one :class:`Recipe` each, by the name ``polyalign prepare --source`` takes.

This table is the one place that says, per dataset, what the paper assigns (language, track, family, style),
which answer it uses, and where the dataset is loaded from when no local copy is given (``hub``: the
``datasets.load_dataset`` calls). Repositories whose loader is a dataset script, which current ``datasets``
versions refuse to run, are read through their raw files or the Hub's Parquet export. DRCD is not on the Hub
under its authors' name, so its official JSON files are read from the authors' GitHub repository.
"""

from __future__ import annotations

from polyalign_ray.corpus.recipes.chinese import coig_cqia_examples, hc3_chinese_examples
from polyalign_ray.corpus.recipes.english import (
    coqa_examples,
    dailydialog_examples,
    dolly_examples,
    eli5_examples,
    ms_marco_examples,
    multiwoz_examples,
    natural_questions_examples,
)
from polyalign_ray.corpus.recipes.oasst import assemble_trees, oasst_tree_examples
from polyalign_ray.corpus.recipes.passage_qa import flatten_article_units, passage_qa_examples
from polyalign_ray.corpus.recipes.recipe import HubLoad, Recipe, hub_files, parquet_export

COIG_CQIA_SUBSETS: tuple[str, ...] = (
    "chinese_traditional",
    "coig_pc",
    "douban",
    "exam",
    "finance",
    "human_value",
    "logi_qa",
    "ruozhiba",
    "segmentfault",
    "wiki",
    "wikihow",
    "xhs",
    "zhihu",
)
DRCD_FILES = "https://raw.githubusercontent.com/DRCKnowledgeTeam/DRCD/master"

_RECIPES: tuple[Recipe, ...] = (
    Recipe(
        name="dolly",
        dataset="Dolly (databricks/databricks-dolly-15k)",
        language="en",
        track="single",
        family="assistant",
        style="assistant_like",
        answer_rule="the response; the reference text as context",
        map_row=dolly_examples,
        hub=(HubLoad("databricks/databricks-dolly-15k"),),
        license="CC-BY-SA-3.0",
        single_split="train",
    ),
    Recipe(
        name="eli5_category",
        dataset="ELI5-Category (rexarski/eli5_category)",
        language="en",
        track="single",
        family="qa",
        style="longform_qa",
        answer_rule="the highest-scored answer; the question is the title and the body",
        map_row=eli5_examples,
        hub=(
            HubLoad(
                "rexarski/eli5_category",
                files=hub_files(
                    "rexarski/eli5_category",
                    {
                        "train": "eli5-category-train.json.gz",
                        "validation1": "eli5-category-validation-1.json.gz",
                        "validation2": "eli5-category-validation-2.json.gz",
                        "test": "eli5-category-test.json.gz",
                    },
                ),
                file_format="json",
            ),
        ),
    ),
    Recipe(
        name="ms_marco",
        dataset="MS MARCO v1.1 (microsoft/ms_marco, v1.1)",
        language="en",
        track="single",
        family="qa",
        style="qa_search",
        answer_rule="the first well-formed answer, else the first answer; the selected passages as context",
        map_row=ms_marco_examples,
        hub=(HubLoad("microsoft/ms_marco", "v1.1"),),
    ),
    Recipe(
        name="squad_v2",
        dataset="SQuAD v2 (rajpurkar/squad_v2)",
        language="en",
        track="single",
        family="qa",
        style="qa_search",
        answer_rule="the first answer, the passage as context; unanswerable questions quarantined",
        map_row=passage_qa_examples,
        assemble=flatten_article_units,
        hub=(HubLoad("rajpurkar/squad_v2"),),
        license="CC-BY-SA-4.0",
    ),
    Recipe(
        name="natural_questions",
        dataset="Natural Questions (sentence-transformers/natural-questions, pair)",
        language="en",
        track="single",
        family="qa",
        style="qa_search",
        answer_rule="the answer passage",
        map_row=natural_questions_examples,
        hub=(HubLoad("sentence-transformers/natural-questions", "pair"),),
        license="CC-BY-SA-3.0",
        single_split="train",
    ),
    Recipe(
        name="coqa",
        dataset="CoQA (stanfordnlp/coqa)",
        language="en",
        track="multi",
        family="qa",
        style="qa_search",
        answer_rule="one record per turn; the story as context, earlier questions and answers as history",
        map_row=coqa_examples,
        hub=(HubLoad("stanfordnlp/coqa"),),
    ),
    Recipe(
        name="dailydialog",
        dataset="DailyDialog (li2017dailydialog/daily_dialog)",
        language="en",
        track="multi",
        family="dialogue",
        style="open_chat",
        answer_rule="every even turn, answering the turn before it; earlier turns as history",
        map_row=dailydialog_examples,
        hub=(
            HubLoad(
                "li2017dailydialog/daily_dialog",
                files=parquet_export(
                    "li2017dailydialog/daily_dialog", "default", ("train", "validation", "test")
                ),
                file_format="parquet",
            ),
        ),
        license="CC-BY-NC-SA-4.0",
    ),
    Recipe(
        name="multiwoz",
        dataset="MultiWOZ 2.2 (pfb30/multi_woz_v22, v2.2)",
        language="en",
        track="multi",
        family="dialogue",
        style="task_dialogue",
        answer_rule="every system turn; earlier turns as history",
        map_row=multiwoz_examples,
        hub=(
            HubLoad(
                "pfb30/multi_woz_v22",
                files=parquet_export("pfb30/multi_woz_v22", "v2.2", ("train", "validation", "test")),
                file_format="parquet",
            ),
        ),
        license="Apache-2.0",
    ),
    Recipe(
        name="coig_cqia",
        dataset="COIG-CQIA (m-a-p/COIG-CQIA, every subset)",
        language="zh",
        track="single",
        family="assistant",
        style="assistant_like",
        answer_rule="human-written or human-verified answers only; the input as context",
        map_row=coig_cqia_examples,
        hub=tuple(HubLoad("m-a-p/COIG-CQIA", subset) for subset in COIG_CQIA_SUBSETS),
        single_split="train",
    ),
    Recipe(
        name="hc3_chinese",
        dataset="HC3-Chinese (Hello-SimpleAI/HC3-Chinese, all)",
        language="zh",
        track="single",
        family="qa",
        style="longform_qa",
        answer_rule="every human answer, one record each",
        map_row=hc3_chinese_examples,
        hub=(
            HubLoad(
                "Hello-SimpleAI/HC3-Chinese",
                files=hub_files("Hello-SimpleAI/HC3-Chinese", {"train": "all.jsonl"}),
                file_format="json",
            ),
        ),
        license="CC-BY-SA-4.0",
        single_split="train",
    ),
    Recipe(
        name="oasst2_zh",
        dataset="OASST2, Chinese subset (OpenAssistant/oasst2)",
        language="zh",
        track="multi",
        family="dialogue",
        style="open_chat",
        answer_rule="reviewed, non-deleted human assistant messages; their ancestor chain as history",
        map_row=oasst_tree_examples,
        hub=(HubLoad("OpenAssistant/oasst2"),),
        license="Apache-2.0",
        assemble=assemble_trees,
    ),
    Recipe(
        name="cmrc2018",
        dataset="CMRC2018 (hfl/cmrc2018)",
        language="zh",
        track="single",
        family="qa",
        style="qa_search",
        answer_rule="the first answer, the passage as context",
        map_row=passage_qa_examples,
        assemble=flatten_article_units,
        hub=(HubLoad("hfl/cmrc2018"),),
        license="CC-BY-SA-4.0",
    ),
    Recipe(
        name="drcd",
        dataset="DRCD (DRCKnowledgeTeam/DRCD on GitHub)",
        language="zh-Hant",
        track="single",
        family="qa",
        style="qa_search",
        answer_rule="the first answer, the passage as context",
        map_row=passage_qa_examples,
        assemble=flatten_article_units,
        hub=(
            HubLoad(
                "DRCKnowledgeTeam/DRCD",
                files=(
                    ("train", f"{DRCD_FILES}/DRCD_training.json"),
                    ("validation", f"{DRCD_FILES}/DRCD_dev.json"),
                    ("test", f"{DRCD_FILES}/DRCD_test.json"),
                ),
                file_format="json",
                json_field="data",
            ),
        ),
        license="CC-BY-SA-3.0",
    ),
    Recipe(
        name="dureader",
        dataset="DuReader-robust (luozhouyang/question-answering-datasets)",
        language="zh",
        track="single",
        family="qa",
        style="qa_search",
        answer_rule="the first answer, the passage as context; unanswerable rows (and the test split, whose "
        "answers are withheld) quarantined",
        map_row=passage_qa_examples,
        assemble=flatten_article_units,
        hub=(
            HubLoad(
                "luozhouyang/question-answering-datasets",
                files=hub_files(
                    "luozhouyang/question-answering-datasets",
                    {
                        "train": "dureader_robust.train.json",
                        "validation": "dureader_robust.dev.json",
                        "test": "dureader_robust.test.json",
                    },
                ),
                file_format="json",
                json_field="data",
            ),
        ),
        license="Apache-2.0",
    ),
)

RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in _RECIPES}


class UnknownSourceError(ValueError):
    """A ``--source`` / ``data.source`` that names no recipe."""


def recipe_named(name: str) -> Recipe:
    """The recipe called ``name``; raises :class:`UnknownSourceError` listing the valid names."""
    if name not in RECIPES:
        raise UnknownSourceError(f"unknown source {name!r}; the recipes are: {', '.join(RECIPES)}")
    return RECIPES[name]
