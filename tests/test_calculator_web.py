"""The calculator on the web: POST /api/classify, the tab's handlers and the chat link."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import pytest
from fastapi.testclient import TestClient

from app.feedback import FeedbackStore
from app.qa.criteria import ChatLink, load_table
from app.qa.criteria_index import Calculator
from app.web.api import create_app
from app.web.calculator_tab import (
    OPTION_PREFIX,
    TAB_ID,
    CalculatorHandlers,
    link_from_query,
    option_for,
    render_result,
)
from app.web.ui import build_app, render_chat
from indexer.settings import Settings
from tests.fixtures.fake_chain import FakeChain, mda5_answer
from tests.fixtures.live import chat_settings

GOTTRON_CASE = {"age_at_onset": 45, "gottrons_sign": True, "raised_muscle_enzymes": True}
#: The tab's checkbox groups for the same case: weakness, skin, other + laboratory, biopsy.
GOTTRON_TAB = (45, False, [], ["gottrons_sign"], ["raised_muscle_enzymes"], [])


def make_client(settings: Settings, tmp_path: Path) -> TestClient:
    store = FeedbackStore(tmp_path / "feedback.sqlite3")
    return TestClient(create_app(FakeChain(), settings, store, ui=False))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(chat_settings(tmp_path), tmp_path) as test_client:
        yield test_client


@pytest.fixture
def handlers(tmp_path: Path) -> CalculatorHandlers:
    return CalculatorHandlers(Calculator(tmp_path / "index"))


# --- POST /api/classify ---------------------------------------------------------------------


def test_api_classify_scores_a_case(client: TestClient) -> None:
    response = client.post("/api/classify", json=GOTTRON_CASE)
    assert response.status_code == 200
    body = response.json()
    assert body["score"] == 6.7
    assert body["category"] == "probable" and body["category_label"] == "probable IIM"
    assert body["band"]["probability"] == "≥55% and <90%"
    assert body["next_cutoff"] == {
        "id": "definite",
        "category": "definite IIM",
        "probability": "≥90%",
        "score": 7.5,
        "distance": 0.8,
    }
    assert [(i["id"], i["weight"]) for i in body["items"]] == [
        ("age_40_or_over", 2.1),
        ("gottrons_sign", 3.3),
        ("raised_muscle_enzymes", 1.3),
    ]
    assert all(i["chunk_id"] and i["quote"] for i in body["items"])


def test_api_and_tab_return_the_same_numbers(
    client: TestClient, handlers: CalculatorHandlers
) -> None:
    api = client.post("/api/classify", json=GOTTRON_CASE).json()
    tab = handlers.compute(*GOTTRON_TAB).model_dump(mode="json")
    assert api == tab
    biopsy_case = {
        "age_at_onset": 30,
        "muscle_biopsy": True,
        "heliotrope_rash": True,
        "perifascicular_atrophy": True,
        "weakness_upper_proximal": True,
    }
    api = client.post("/api/classify", json=biopsy_case).json()
    tab = handlers.compute(
        30, True, ["weakness_upper_proximal"], ["heliotrope_rash"], [], ["perifascicular_atrophy"]
    ).model_dump(mode="json")
    assert api == tab and api["score"] == 7.3 and api["category"] == "probable"


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"age_at_onset": 15, "gottrons_sign": True}, 400, "out of range"),
        ({"age_at_onset": 50, "rimmed_vacuoles": True}, 400, "without a muscle biopsy"),
        ({"gottrons_sign": True}, 422, "Malformed case"),
        ({"age_at_onset": "45"}, 422, "Malformed case"),
        ({"age_at_onset": 45, "gottrons_sign": "yes"}, 422, "Malformed case"),
        ({"age_at_onset": 45, "gottron": True}, 422, "Malformed case"),
        ([1, 2], 422, "Malformed case"),
    ],
)
def test_api_classify_rejects_bad_cases_with_json(
    client: TestClient, body: Any, status: int, says: str
) -> None:
    response = client.post("/api/classify", json=body)
    assert response.status_code == status
    assert says in response.json()["error"]


def test_api_classify_names_the_bad_field(client: TestClient) -> None:
    response = client.post("/api/classify", json={"age_at_onset": 45, "gottron": True})
    assert response.json()["detail"][0]["loc"] == ["gottron"]


def test_api_classify_rejects_unparseable_bodies(client: TestClient) -> None:
    response = client.post(
        "/api/classify", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    empty = client.post("/api/classify", content=b"", headers={"content-type": "application/json"})
    assert empty.status_code == 400
    # like every state-changing route, the calculator takes JSON only
    assert client.post("/api/classify", content=b"age=45").status_code == 415


def test_api_classify_is_rate_limited(tmp_path: Path) -> None:
    settings = chat_settings(tmp_path, server={"rate_limit_per_minute": 2})
    with make_client(settings, tmp_path) as limited:
        codes = [limited.post("/api/classify", json=GOTTRON_CASE).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


# --- the tab's handlers ---------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.tags.add(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parsed(markup: str) -> _Tags:
    parser = _Tags()
    parser.feed(markup)
    return parser


def _shown(markup: str) -> str:
    """The text a reader sees, whitespace collapsed."""
    return " ".join("".join(_parsed(markup).text).split())


def test_tab_shows_score_band_category_and_quotes_without_an_index(
    handlers: CalculatorHandlers,
) -> None:
    markup = handlers.calculate(*GOTTRON_TAB)
    text = _shown(markup)
    assert "Total score 6.7" in text
    assert "probable IIM" in text and "≥55% and <90%" in text
    assert "0.8 points away" in text
    assert "Gottron's sign scores 3.3 without muscle biopsy and 3.7 with muscle biopsy" in text
    assert "cannot be shown" in text  # and it says why the full passages are missing
    assert "script" not in _parsed(markup).tags


def test_tab_errors_keep_the_inputs(handlers: CalculatorHandlers) -> None:
    with pytest.raises(gr.Error, match="age at onset"):
        handlers.calculate(None, False, [], ["gottrons_sign"], [], [])
    with pytest.raises(gr.Error, match="out of range"):
        handlers.calculate(12, False, [], ["gottrons_sign"], [], [])
    with pytest.raises(gr.Error, match="without a muscle biopsy"):
        handlers.calculate(50, False, [], [], [], ["rimmed_vacuoles"])
    with pytest.raises(gr.Error, match="Unknown items"):
        handlers.calculate(50, False, ["<b>x</b>"], [], [], [])


def test_tab_says_not_classifiable_without_skin_signs_or_biopsy(
    handlers: CalculatorHandlers,
) -> None:
    text = _shown(handlers.calculate(50, False, ["neck_flexors_weaker"], [], ["anti_jo1"], []))
    assert "not classifiable" in text
    assert "muscle-biopsy features are needed" in text


def test_tab_score_lookup(handlers: CalculatorHandlers) -> None:
    text = _shown(handlers.lookup(6.0, False))
    assert "A total score of 6.0 without muscle biopsy" in text
    assert "probable IIM" in text and "1.5 points away" in text
    with pytest.raises(gr.Error, match="cannot be reached"):
        handlers.lookup(99, False)


def test_tab_clear_empties_every_input(handlers: CalculatorHandlers) -> None:
    assert handlers.clear() == (None, False, [], [], [], [], None, "")


# --- the chat link ---------------------------------------------------------------------------


def test_chat_answer_about_an_item_offers_the_calculator() -> None:
    question = "How many points is Gottron's sign without a biopsy?"
    turns = [{"question": question, "answer": mda5_answer().contract()}]
    messages = render_chat(turns)
    reply = messages[1]
    assert reply["content"].startswith('<div class="myoqa-answer')  # the answer is unchanged
    (option,) = reply["options"]
    assert option["label"] == (
        "Open in the classification calculator: Gottron's sign, without muscle biopsy"
    )
    assert option["value"].startswith(OPTION_PREFIX)
    other = render_chat([{"question": "Tell me about IBM", "answer": mda5_answer().contract()}])
    assert "options" not in other[1]


def test_choosing_the_option_opens_the_tab_filled_in(handlers: CalculatorHandlers) -> None:
    option = option_for("How many points is Gottron's sign without a biopsy?")
    assert option is not None
    updates = handlers.from_option(SimpleNamespace(value=option))  # type: ignore[arg-type]
    assert len(updates) == 9
    tabs, age, biopsy, weakness, skin, *_, shown = updates
    assert tabs.selected == TAB_ID
    assert skin["value"] == ["gottrons_sign"] and weakness["value"] == []
    assert biopsy["value"] is False
    assert "value" not in age  # the age is the user's to enter
    text = _shown(shown)
    assert "Gottron's sign scores 3.3 without muscle biopsy" in text


def test_a_score_question_opens_the_lookup(handlers: CalculatorHandlers) -> None:
    option = option_for("Is 6.0 without biopsy probable IIM?")
    assert option is not None
    updates = handlers.from_option(SimpleNamespace(value=option["value"]))  # type: ignore[arg-type]
    assert updates[-2]["value"] == 6.0
    assert "probable IIM" in _shown(updates[-1])


def test_an_option_with_unknown_items_ignores_them(handlers: CalculatorHandlers) -> None:
    forged = OPTION_PREFIX + ChatLink(items=["<script>", "anti_jo1"]).model_dump_json()
    updates = handlers.from_option(SimpleNamespace(value=forged))  # type: ignore[arg-type]
    assert updates[5]["value"] == ["anti_jo1"]  # other clinical and laboratory items
    assert "<script>" not in updates[-1]


def test_a_foreign_option_changes_nothing(handlers: CalculatorHandlers) -> None:
    updates = handlers.from_option(SimpleNamespace(value="something else"))  # type: ignore[arg-type]
    assert len(updates) == 9  # tabs, age, biopsy, four item groups, score, result
    assert all(u == gr.update() for u in updates)


def test_query_string_link() -> None:
    table = load_table()
    link = link_from_query(
        {"calculator": "gottrons_sign,bogus", "biopsy": "no", "age": "45"}, table
    )
    assert link == ChatLink(items=["gottrons_sign"], muscle_biopsy=False, age_at_onset=45.0)
    assert link_from_query({"calculator": "rimmed_vacuoles"}, table) == ChatLink(
        items=["rimmed_vacuoles"], muscle_biopsy=True
    )
    assert link_from_query({}, table) is None


def test_the_app_has_the_calculator_tab(tmp_path: Path) -> None:
    settings = chat_settings(tmp_path)
    demo = build_app(FakeChain(), settings, FeedbackStore(tmp_path / "f.sqlite3"))
    labels = [getattr(block, "label", None) for block in demo.blocks.values()]
    assert "Classification calculator" in labels and "Chat" in labels


@pytest.mark.slow
def test_tab_and_api_show_the_passages_from_the_index(
    bundled_index: Settings, tmp_path: Path
) -> None:
    calculator = Calculator(bundled_index.paths.index_dir)
    result = CalculatorHandlers(calculator).compute(*GOTTRON_TAB)
    assert len(result.citations) >= 5
    markup = render_result(result)
    text = _shown(markup)
    assert "Passages behind each number" in text
    assert (
        "Gottron's sign the most heavily weighted skin item" in text
    )  # the passage, not the quote
    settings = chat_settings(tmp_path, paths={"index_dir": bundled_index.paths.index_dir})
    with make_client(settings, tmp_path) as api:
        body = api.post("/api/classify", json=GOTTRON_CASE).json()
    assert body == result.model_dump(mode="json")
