"""The EULAR/ACR 2017 calculator: weights, cut-offs, rules, validation, citations, CLI."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.cli.main import main
from app.qa.criteria import (
    ITEM_FIELDS,
    TABLE_RESOURCE,
    Case,
    Classification,
    chat_link,
    classify,
    load_table,
    parse_table,
    score_band,
)
from app.qa.criteria_index import (
    Calculator,
    check_table,
    read_passages,
    refresh_chunk_ids,
)
from indexer.errors import MyoQAError
from indexer.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TABLE_FILE = ROOT / "app" / "qa" / TABLE_RESOURCE

#: Facts 25-31 of the domain fact sheet: (without biopsy, with biopsy); None = biopsy only.
FACT_SHEET_WEIGHTS: dict[str, tuple[float | None, float, int]] = {
    "age_18_to_40": (1.3, 1.5, 25),
    "age_40_or_over": (2.1, 2.2, 25),
    "weakness_upper_proximal": (0.7, 0.7, 26),
    "weakness_lower_proximal": (0.8, 0.5, 26),
    "neck_flexors_weaker": (1.9, 1.6, 26),
    "legs_proximal_weaker_than_distal": (0.9, 1.2, 26),
    "heliotrope_rash": (3.1, 3.2, 27),
    "gottrons_papules": (2.1, 2.7, 27),
    "gottrons_sign": (3.3, 3.7, 27),
    "dysphagia": (0.7, 0.6, 28),
    "anti_jo1": (3.9, 3.8, 29),
    "raised_muscle_enzymes": (1.3, 1.4, 30),
    "endomysial_infiltrate": (None, 1.7, 31),
    "perimysial_perivascular_infiltrate": (None, 1.2, 31),
    "perifascicular_atrophy": (None, 1.9, 31),
    "rimmed_vacuoles": (None, 3.1, 31),
}
#: Facts 22-24: the score cut-offs (without biopsy, with biopsy).
FACT_SHEET_CUTOFFS = {"possible": (5.3, 6.5), "probable": (5.5, 6.7), "definite": (7.5, 8.7)}


def case(age: float = 45, **items: bool) -> Case:
    return Case(age_at_onset=age, **items)


# --- the table is the fact sheet ------------------------------------------------------


def test_every_weight_equals_the_fact_sheet() -> None:
    table = load_table()
    found = {i.id: (i.without_biopsy, i.with_biopsy, i.fact) for i in table.items}
    assert found == FACT_SHEET_WEIGHTS


def test_the_six_cutoffs_equal_the_fact_sheet() -> None:
    table = load_table()
    found = {c.id: (c.without_biopsy, c.with_biopsy) for c in table.cutoffs}
    assert found == FACT_SHEET_CUTOFFS
    assert {c.id: c.fact for c in table.cutoffs} == {
        "possible": 24,
        "probable": 22,
        "definite": 23,
    }


def test_every_row_quotes_the_numbers_it_carries() -> None:
    table = load_table()
    for item in table.items:
        for weight in (item.without_biopsy, item.with_biopsy):
            if weight is not None:
                assert f"{weight:.1f}" in item.quote, item.id
    for cutoff in table.cutoffs:
        assert f"{cutoff.without_biopsy:.1f}" in cutoff.quote, cutoff.id
        assert f"{cutoff.with_biopsy:.1f}" in cutoff.quote, cutoff.id


def test_the_case_has_exactly_the_tables_items() -> None:
    assert set(ITEM_FIELDS) == {i.id for i in load_table().scored_items()}


def test_a_broken_table_is_refused() -> None:
    data = json.loads(TABLE_FILE.read_text(encoding="utf-8"))
    data["cutoffs"][0], data["cutoffs"][1] = data["cutoffs"][1], data["cutoffs"][0]
    with pytest.raises(ValueError, match="cutoffs must be"):
        parse_table(data)
    data = json.loads(TABLE_FILE.read_text(encoding="utf-8"))
    data["items"][-1]["without_biopsy"] = 1.0  # a biopsy item scored without a biopsy
    with pytest.raises(ValueError, match="only biopsy items"):
        parse_table(data)


# --- cut-offs and bands -----------------------------------------------------------------

EDGES = [
    # (score, biopsy, band, next cut-off id or None, distance)
    (5.2, False, "not_iim", "possible", 0.1),
    (5.3, False, "possible", "probable", 0.2),
    (5.4, False, "possible", "probable", 0.1),
    (5.5, False, "probable", "definite", 2.0),
    (7.4, False, "probable", "definite", 0.1),
    (7.5, False, "definite", None, None),
    (6.4, True, "not_iim", "possible", 0.1),
    (6.5, True, "possible", "probable", 0.2),
    (6.6, True, "possible", "probable", 0.1),
    (6.7, True, "probable", "definite", 2.0),
    (8.6, True, "probable", "definite", 0.1),
    (8.7, True, "definite", None, None),
]


@pytest.mark.parametrize(("score", "biopsy", "band", "following", "distance"), EDGES)
def test_score_bands_at_and_around_each_cutoff(
    score: float, biopsy: bool, band: str, following: str | None, distance: float | None
) -> None:
    result = score_band(score, biopsy)
    assert result.band.id == band
    if following is None:
        assert result.next_cutoff is None
    else:
        assert result.next_cutoff is not None
        assert result.next_cutoff.id == following
        assert result.next_cutoff.distance == distance


def test_a_score_lookup_carries_the_rules() -> None:
    ids = [n.id for n in score_band(6.0, False).notes]
    assert ids == ["no_better_explanation", "probable_is_minimum", "skin_or_biopsy_features"]


def test_band_probabilities_are_the_cited_ones() -> None:
    assert score_band(5.0, False).band.probability == "<50%"
    assert score_band(5.3, False).band.probability == "50% to <55%"
    assert score_band(6.0, False).band.probability == "≥55% and <90%"
    assert score_band(7.5, False).band.probability == "≥90%"


def _cases_summing_to(target: float, biopsy: bool) -> list[Case]:
    """Real cases (with a skin sign, so they classify) whose weights add up to ``target``."""
    table = load_table()
    items = [i for i in table.scored_items() if biopsy or i.group != "biopsy"]
    found = []
    for age_item, age in (("age_18_to_40", 30), ("age_40_or_over", 50)):
        base = Decimal(str(table.item(age_item).weight(biopsy)))
        for size in range(1, 5):
            for combo in itertools.combinations(items, size):
                if not any(i.group == "skin" for i in combo):
                    continue
                total = base + sum(Decimal(str(i.weight(biopsy))) for i in combo)
                if total == Decimal(str(target)):
                    found.append(
                        Case(
                            age_at_onset=age,
                            muscle_biopsy=biopsy,
                            **dict.fromkeys((i.id for i in combo), True),
                        )
                    )
                    if len(found) >= 3:
                        return found
    return found


@pytest.mark.parametrize(
    ("cutoff", "biopsy", "category"),
    [
        (5.3, False, "possible"),
        (5.5, False, "probable"),
        (7.5, False, "definite"),
        (6.5, True, "possible"),
        (6.7, True, "probable"),
        (8.7, True, "definite"),
    ],
)
def test_a_case_exactly_on_a_cutoff_reaches_it(cutoff: float, biopsy: bool, category: str) -> None:
    cases = _cases_summing_to(cutoff, biopsy)
    assert cases, f"no case sums to {cutoff}"
    for found in cases:
        result = classify(found)
        assert result.score == cutoff  # summed exactly, not 5.299999
        assert result.category == category, found.present()


def test_a_worked_case_without_biopsy() -> None:
    result = classify(case(45, gottrons_sign=True, raised_muscle_enzymes=True))
    assert [(i.id, i.weight) for i in result.items] == [
        ("age_40_or_over", 2.1),
        ("gottrons_sign", 3.3),
        ("raised_muscle_enzymes", 1.3),
    ]
    assert result.score == 6.7
    assert result.column == "without muscle biopsy"
    assert result.category == "probable" and result.meets_minimum
    assert result.next_cutoff is not None
    assert (result.next_cutoff.id, result.next_cutoff.distance) == ("definite", 0.8)


def test_the_biopsy_column_changes_the_weights() -> None:
    without = classify(case(30, heliotrope_rash=True, weakness_lower_proximal=True))
    with_biopsy = classify(
        case(30, muscle_biopsy=True, heliotrope_rash=True, weakness_lower_proximal=True)
    )
    assert [i.weight for i in without.items] == [1.3, 0.8, 3.1]
    assert [i.weight for i in with_biopsy.items] == [1.5, 0.5, 3.2]
    assert without.score == 5.2 and without.category == "not_iim"
    assert with_biopsy.score == 5.2 and with_biopsy.category == "not_iim"
    assert with_biopsy.next_cutoff is not None and with_biopsy.next_cutoff.distance == 1.3


def test_every_number_shown_is_a_cited_weight_or_cutoff_or_their_sum() -> None:
    table = load_table()
    result = classify(
        case(
            62,
            muscle_biopsy=True,
            rimmed_vacuoles=True,
            weakness_upper_proximal=True,
            gottrons_papules=True,
        )
    )
    for item in result.items:
        assert item.weight == table.item(item.id).with_biopsy
        assert item.quote == table.item(item.id).quote
    assert Decimal(str(result.score)) == sum(Decimal(str(i.weight)) for i in result.items)
    assert [c.score for c in result.cutoffs] == [6.5, 6.7, 8.7]
    assert result.next_cutoff is None or Decimal(str(result.next_cutoff.distance)) == Decimal(
        str(result.next_cutoff.score)
    ) - Decimal(str(result.score))


# --- the rules ----------------------------------------------------------------------------


def test_no_skin_sign_and_no_biopsy_is_not_classifiable_whatever_the_score() -> None:
    result = classify(case(50, anti_jo1=True, neck_flexors_weaker=True, raised_muscle_enzymes=True))
    assert result.score == 9.2 and result.band.id == "definite"
    assert result.category == "not_classifiable" and result.category_label == "not classifiable"
    assert not result.classifiable and not result.meets_minimum
    note = next(n for n in result.notes if n.id == "skin_or_biopsy_features")
    assert "muscle-biopsy features are needed" in note.text
    assert note.fact == 33


def test_a_biopsy_without_any_feature_does_not_make_it_classifiable() -> None:
    result = classify(case(50, muscle_biopsy=True, anti_jo1=True, raised_muscle_enzymes=True))
    assert result.category == "not_classifiable"
    with_feature = classify(
        case(
            50,
            muscle_biopsy=True,
            anti_jo1=True,
            raised_muscle_enzymes=True,
            endomysial_infiltrate=True,
        )
    )
    assert with_feature.classifiable and with_feature.score == 9.1
    assert with_feature.category == "definite"


def test_every_result_reminds_to_apply_only_without_a_better_explanation() -> None:
    for result in (classify(case(45, gottrons_sign=True)), classify(case(45))):
        ids = [n.id for n in result.notes]
        assert ids[0] == "no_better_explanation"
        assert result.notes[0].fact == 32
        assert "subgroup_tree" in ids
        assert "not covered" in result.subgroup
        assert "not a diagnostic device" in result.disclaimer


# --- invalid cases ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "message"),
    [(17.9, "out of range"), (5, "before 18"), (-1, "out of range"), (130, "out of range")],
)
def test_an_age_out_of_range_is_refused(age: float, message: str) -> None:
    with pytest.raises(MyoQAError, match=message):
        classify(case(age, gottrons_sign=True))


def test_an_age_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(MyoQAError, match="number of years"):
        classify(case(math.nan, gottrons_sign=True))


def test_the_age_item_follows_the_age() -> None:
    assert classify(case(18)).items[0].id == "age_18_to_40"
    assert classify(case(39.9)).items[0].id == "age_18_to_40"
    assert classify(case(40)).items[0].id == "age_40_or_over"


def test_biopsy_items_without_a_biopsy_are_refused() -> None:
    with pytest.raises(MyoQAError, match=r"without a muscle biopsy \(Perifascicular atrophy\)"):
        classify(case(45, gottrons_sign=True, perifascicular_atrophy=True))


def test_a_score_that_cannot_be_reached_is_refused() -> None:
    with pytest.raises(MyoQAError, match="cannot be reached"):
        score_band(40.0, False)
    with pytest.raises(MyoQAError, match="cannot be reached"):
        score_band(-0.1, True)


# --- the chat link --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "items", "biopsy", "score"),
    [
        ("How many points is Gottron's sign without a biopsy?", ["gottrons_sign"], False, None),
        ("How many points is Gottron’s sign with a muscle biopsy?", ["gottrons_sign"], True, None),
        ("What do rimmed vacuoles score?", ["rimmed_vacuoles"], True, None),
        ("Does anti-Jo-1 count in the EULAR/ACR criteria?", ["anti_jo1"], None, None),
        ("Is 6.0 without biopsy probable IIM?", [], False, 6.0),
        ("What does a score of 8.7 with biopsy mean?", [], True, 8.7),
        (
            "What's the weighting for Gottron's sign when biopsy data are used?",
            ["gottrons_sign"],
            True,
            None,
        ),
        (
            "Gottron's sign weight in the EULAR/ACR score, no-biopsy column?",
            ["gottrons_sign"],
            False,
            None,
        ),
    ],
)
def test_chat_link_recognises_scoring_questions(
    question: str, items: list[str], biopsy: bool | None, score: float | None
) -> None:
    link = chat_link(question)
    assert link is not None
    assert (link.items, link.muscle_biopsy, link.score) == (items, biopsy, score)


@pytest.mark.parametrize(
    "question",
    [
        "What is Gottron's sign?",
        "Which antibody goes with rapidly progressive ILD in dermatomyositis?",
        "How is inclusion body myositis treated?",
        "What score defines probable IIM?",
        "If there's no heliotrope or Gottron's sign, can you still classify someone as IIM?",
    ],
)
def test_chat_link_ignores_other_questions(question: str) -> None:
    assert chat_link(question) is None


def test_chat_link_label_names_the_age_item() -> None:
    link = chat_link(
        "How many points for onset at age 40 or older (no biopsy) in the EULAR/ACR criteria?"
    )
    assert link is not None and link.age_at_onset == 40
    assert link.label() == (
        "Open in the classification calculator: Age at onset of the first symptom ≥40 years, "
        "without muscle biopsy"
    )


# --- citations against the index built from the bundled corpus -----------------------------


@pytest.mark.slow
def test_every_cited_chunk_is_in_the_bundled_index_and_states_its_numbers(
    bundled_index: Settings,
) -> None:
    passages = read_passages(bundled_index.paths.index_dir)
    problems = check_table(load_table(), passages)
    assert problems == [], (
        "The calculator cites passages that are not in the index built from corpus/ "
        "(a digest changed?). Run `myositis-qa index` then `myositis-qa criteria-ids` "
        "and review the diff of app/qa/data/eular_acr_2017.json:\n" + "\n".join(problems)
    )


@pytest.mark.slow
def test_results_carry_the_full_passages(bundled_index: Settings) -> None:
    result = Calculator(bundled_index.paths.index_dir).classify(case(45, gottrons_sign=True))
    assert result.citations
    by_n = {c.n: c for c in result.citations}
    for row in [*result.items, *result.cutoffs, *result.notes]:
        assert row.cite is not None, row
        citation = by_n[row.cite]
        assert row.quote in citation.passage and row.quote in citation.highlights
        assert citation.chunk_id == row.chunk_id
    gottron = next(i for i in result.items if i.id == "gottrons_sign")
    assert "3.3" in by_n[gottron.cite or 0].passage
    assert by_n[gottron.cite or 0].reference_key == "EULAR17T"  # the score table it reports


@pytest.mark.slow
def test_refresh_repoints_a_stale_chunk_id_and_reports_a_lost_quote(
    bundled_index: Settings,
) -> None:
    passages = read_passages(bundled_index.paths.index_dir)
    data = json.loads(TABLE_FILE.read_text(encoding="utf-8"))
    right = data["items"][8]["chunk_id"]
    data["items"][8]["chunk_id"] = "0" * 20
    data["statements"][0]["quote"] = "A sentence that no digest contains"
    refresh = refresh_chunk_ids(data, passages)
    assert refresh.data["items"][8]["chunk_id"] == right
    assert refresh.changed == [f"gottrons_sign: {'0' * 20} -> {right}"]
    assert len(refresh.problems) == 1 and "possible_band" in refresh.problems[0]
    assert data["items"][8]["chunk_id"] == "0" * 20  # the input is not modified


@pytest.mark.slow
def test_criteria_ids_command_checks_and_rewrites_the_table(
    bundled_index: Settings, tmp_path: Path
) -> None:
    table = tmp_path / "table.json"
    shutil.copy(TABLE_FILE, table)
    data = json.loads(table.read_text(encoding="utf-8"))
    data["cutoffs"][1]["chunk_id"] = "f" * 20
    table.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    index = str(bundled_index.paths.index_dir)
    runner = CliRunner()

    checked = runner.invoke(
        main, ["criteria-ids", "--index-dir", index, "--table", str(table), "--check"]
    )
    assert checked.exit_code == 1
    assert "stale probable" in checked.output and "1 stale chunk id" in checked.output
    assert json.loads(table.read_text(encoding="utf-8")) == data  # --check writes nothing

    fixed = runner.invoke(main, ["criteria-ids", "--index-dir", index, "--table", str(table)])
    assert fixed.exit_code == 0, fixed.output
    assert "updated probable" in fixed.output
    assert table.read_text(encoding="utf-8") == TABLE_FILE.read_text(encoding="utf-8")

    again = runner.invoke(
        main, ["criteria-ids", "--index-dir", index, "--table", str(table), "--check"]
    )
    assert again.exit_code == 0 and "match the index" in again.output


# --- the command line --------------------------------------------------------------------------


def _run(*args: str, tmp_path: Path) -> Any:
    return CliRunner().invoke(main, ["classify", "--index-dir", str(tmp_path / "none"), *args])


def test_classify_command_prints_the_score_band_category_and_quotes(tmp_path: Path) -> None:
    out = _run(
        "--age-at-onset", "45", "--gottrons-sign", "--raised-muscle-enzymes", tmp_path=tmp_path
    )
    assert out.exit_code == 0, out.output
    assert "Total score: 6.7" in out.output
    assert "Probability band: ≥55% and <90% (probable IIM)" in out.output
    assert "Category: probable IIM" in out.output
    assert "Next cut-off: definite IIM (≥90%) at 7.5, 0.8 points away" in out.output
    assert (
        '"Gottron\'s sign scores 3.3 without muscle biopsy and 3.7 with muscle biopsy"'
        in out.output
    )


def test_classify_command_json_is_the_result_model(tmp_path: Path) -> None:
    out = _run(
        "--age-at-onset", "30", "--muscle-biopsy", "--rimmed-vacuoles", "--json", tmp_path=tmp_path
    )
    assert out.exit_code == 0, out.output
    result = Classification.model_validate_json(out.output[out.output.index("{") :])
    assert result.score == 4.6 and result.category == "not_iim"
    assert result.column == "with muscle biopsy"


def test_classify_command_errors_are_clear(tmp_path: Path) -> None:
    young = _run("--age-at-onset", "15", "--gottrons-sign", tmp_path=tmp_path)
    assert young.exit_code == 1 and "out of range" in young.output
    no_biopsy = _run("--age-at-onset", "45", "--rimmed-vacuoles", tmp_path=tmp_path)
    assert (
        no_biopsy.exit_code == 1 and "without a muscle biopsy (Rimmed vacuoles)" in no_biopsy.output
    )
    no_age = _run("--gottrons-sign", tmp_path=tmp_path)
    assert no_age.exit_code == 1 and "--age-at-onset" in no_age.output
    both = _run("--score", "6", "--gottrons-sign", tmp_path=tmp_path)
    assert both.exit_code == 1 and "not both" in both.output
    assert "Traceback" not in young.output + no_biopsy.output + no_age.output


def test_classify_command_says_what_a_score_means(tmp_path: Path) -> None:
    out = _run("--score", "6.0", tmp_path=tmp_path)
    assert out.exit_code == 0, out.output
    assert "Total score 6.0 (without muscle biopsy)" in out.output
    assert "probable IIM" in out.output and "1.5 points away" in out.output
