"""Prompt builder: the paper's styles, age formats, instructions, and attribute parsing."""

from __future__ import annotations

import pytest

from latentdrift.core.errors import ParameterError
from latentdrift.counterfactual.prompts import (
    DIVERSE_IMAGE_PHRASES,
    Attributes,
    PromptOptions,
    age_bin,
    describe,
    instruct,
    number_to_words,
    paraphrases,
)

SOURCE = Attributes.parse("age=70,sex=F,dx=CN")
TARGET = Attributes.parse("age=77,dx=MCI", base=SOURCE)


def test_the_papers_instruction_with_the_age_change_written_out() -> None:
    assert instruct(SOURCE, TARGET) == (
        "Age this CN 70 years old female brain MRI by 7 years into a 77 brain MRI with MCI"
    )


def test_instruction_age_formats() -> None:
    assert instruct(SOURCE, TARGET, "words") == (
        "Age this CN seventy years old female brain MRI by seven years into a seventy-seven brain MRI with MCI"
    )
    assert instruct(SOURCE, TARGET, "binned") == (
        "Age this CN 70 years old female brain MRI moderately into a brain MRI with MCI"
    )
    younger = Attributes(age=50, sex="female", diagnosis="CN")
    assert instruct(SOURCE, younger, "binned").startswith(
        "Rejuvenate this CN 70 years old female brain MRI significantly"
    )
    assert instruct(SOURCE, Attributes(age=70, diagnosis="AD")) == (
        "Turn this CN 70 years old female brain MRI into a 70 brain MRI with AD"
    )
    assert instruct(Attributes(age=70.3), Attributes(age=77.0)).startswith(
        "Age this 70.3 years old brain MRI by 6.7 years into"
    )
    assert " by 1 year into" in instruct(SOURCE, Attributes(age=71))
    assert " by one year into" in instruct(SOURCE, Attributes(age=71), "words")
    assert " by 3 years into" in instruct(SOURCE, Attributes(age=67))
    assert " by " not in instruct(Attributes(sex="F"), Attributes(age=71))


@pytest.mark.parametrize(
    ("change", "word"),
    [
        (0, "slightly"),
        (4.9, "slightly"),
        (5, "moderately"),
        (10, "moderately"),
        (10.5, "significantly"),
        (-12, "significantly"),
    ],
)
def test_age_bins(change: float, word: str) -> None:
    assert age_bin(change) == word


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (40, "forty"),
        (77, "seventy-seven"),
        (100, "one hundred"),
        (105, "one hundred five"),
        (120, "one hundred twenty"),
    ],
)
def test_number_to_words(number: int, words: str) -> None:
    assert number_to_words(number) == words


def test_number_to_words_refuses_out_of_range() -> None:
    with pytest.raises(ParameterError):
        number_to_words(121)


def test_descriptions_with_and_without_patient_information() -> None:
    simple = PromptOptions(style="simple")
    assert describe(SOURCE, simple) == "a brain MRI of a 70 year old female with CN"
    assert describe(SOURCE, PromptOptions(style="simple", patient_info=False)) == "a brain MRI"
    assert describe(SOURCE, PromptOptions(style="simple", age_format="words")) == (
        "a brain MRI of a seventy year old female with CN"
    )
    assert describe(SOURCE, PromptOptions(style="simple", age_format="binned")) == describe(SOURCE, simple)
    assert describe(Attributes(diagnosis="AD"), simple) == "a brain MRI of a patient with AD"
    assert describe(Attributes(), simple) == "a brain MRI"


def test_diverse_style_has_21_distinct_paraphrases_picked_by_index() -> None:
    options = PromptOptions(style="diverse")
    texts = paraphrases(SOURCE, options)
    assert len(texts) == len(set(texts)) == len(DIVERSE_IMAGE_PHRASES) >= 21
    assert all(text.endswith("of a 70 year old female with CN") for text in texts)
    assert describe(SOURCE, options, index=3) == describe(SOURCE, options, index=3 + 21) == texts[3]
    assert paraphrases(SOURCE, PromptOptions(style="simple")) == [
        describe(SOURCE, PromptOptions(style="simple"))
    ]


def test_attribute_parsing() -> None:
    assert Attributes(age=70.0, sex="female", diagnosis="CN") == SOURCE
    assert Attributes(age=77.0, sex="female", diagnosis="MCI") == TARGET
    assert Attributes.parse(" age = 64.5 , sex=male, diagnosis=ad, modality=knee MRI ") == Attributes(
        age=64.5, sex="male", diagnosis="AD", modality="knee MRI"
    )
    assert Attributes.parse("dx=early MCI").diagnosis == "early MCI"
    assert Attributes.parse("") == Attributes()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("weight=70", "Cannot read patient attribute 'weight=70'"),
        ("age", "Cannot read patient attribute 'age'"),
        ("age=", "Cannot read patient attribute"),
        ("age=old", "not a number"),
        ("age=130", "outside 0–120"),
        ("age=-1", "outside 0–120"),
        ("age=nan", "outside 0–120"),
        ("sex=X", "Unknown sex 'X'"),
    ],
)
def test_bad_attributes_are_refused(text: str, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        Attributes.parse(text)


def test_bad_prompt_options_are_refused() -> None:
    with pytest.raises(ParameterError, match="prompt style"):
        PromptOptions(style="fancy")
    with pytest.raises(ParameterError, match="age format"):
        PromptOptions(age_format="roman")
