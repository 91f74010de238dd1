"""Prompts from patient attributes, in the prompt styles of the Latent Drifting paper.

Two kinds of text are built here:

* **Descriptions** (text-to-image, img2img, and the source/target prompts of the direction edit):
  ``describe(Attributes(age=70, sex="female", diagnosis="CN"))`` gives
  ``"a brain MRI of a 70 year old female with CN"``.
* **Instructions** (InstructPix2Pix): ``instruct(source, target)`` gives the paper's Fig. 6 instruction
  with the age change written out, ``"Age this CN 70 years old female brain MRI by 7 years into a 77
  brain MRI with MCI"``. The paper has no ``by 7 years``: we add it because the size of an ageing
  edit follows the interval, and a small text encoder cannot subtract two ages written as digit
  tokens (``benchmarks/evidence/results.md``, section 2).

Styles (:class:`PromptOptions`), as in the paper's Tables 2–4:

* ``style="simple"``: one template. ``style="diverse"``: one of :data:`DIVERSE_IMAGE_PHRASES`
  (21 paraphrases of "a brain MRI"), picked by ``index`` (taken modulo 21, so a seed or an item
  number can be passed directly).
* ``patient_info``: append the patient clause (``"of a 70 year old female with CN"``) or not.
* ``age_format``:

  - ``"numerical"``: ``77``;
  - ``"words"``: ``seventy-seven`` (American spelling, ``one hundred five``; non-integer ages are
    rounded half up first);
  - ``"binned"``: describes an age *change*, so it exists only in instructions: the change
    ``to.age - from.age`` is written ``slightly`` (|change| < 5 years), ``moderately`` (5 to 10
    years, both included) or ``significantly`` (> 10 years) instead of the target age, e.g.
    ``"Age this CN 70 years old female brain MRI moderately into a brain MRI with MCI"``. A
    description has no change, so in descriptions ``binned`` writes the age as a number.

  In the other formats an instruction whose ages are both known and differ states the change in the
  same format: ``by 7 years``, ``by 6.5 years``, ``by seven years``, ``by 1 year``.

Instructions start with ``Age`` when the age increases, ``Rejuvenate`` when it decreases and
``Turn`` otherwise. Known diagnosis labels (CN, MCI, AD) are written in upper case; any other label
is written as given. Attributes that are unknown (``None``) are left out of the text.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Literal

from ..core.errors import ParameterError

MIN_AGE = 0.0
MAX_AGE = 120.0
KNOWN_DIAGNOSES = ("CN", "MCI", "AD")
DEFAULT_MODALITY = "brain MRI"

_SEX_NAMES = {
    "f": "female",
    "female": "female",
    "woman": "female",
    "m": "male",
    "male": "male",
    "man": "male",
}
_KEY_ALIASES = {
    "age": "age",
    "sex": "sex",
    "dx": "diagnosis",
    "diagnosis": "diagnosis",
    "modality": "modality",
}

SIMPLE_IMAGE_PHRASE = "a {modality}"

DIVERSE_IMAGE_PHRASES = (
    "a {modality}",
    "an image of a {modality}",
    "a {modality} scan",
    "a slice of a {modality}",
    "an axial slice of a {modality}",
    "a medical image showing a {modality}",
    "a photo of a {modality}",
    "a {modality} image",
    "a grayscale {modality}",
    "a clinical {modality}",
    "a single slice from a {modality}",
    "a high quality {modality}",
    "a 2D slice of a {modality}",
    "a scan showing a {modality}",
    "a radiology image of a {modality}",
    "a {modality} slice",
    "a picture of a {modality}",
    "a cross section of a {modality}",
    "a T1 weighted {modality}",
    "a diagnostic {modality}",
    "a view of a {modality}",
)

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

Style = Literal["simple", "diverse"]
AgeFormat = Literal["numerical", "words", "binned"]


@dataclass(frozen=True)
class Attributes:
    """What is known about the patient shown in a slice; ``None`` means unknown (left out of prompts).

    ``age`` in years within [0, 120]; ``sex`` is ``"female"`` or ``"male"``; ``diagnosis`` is a label
    such as CN, MCI, AD or any free text; ``modality`` names the image (default ``"brain MRI"``).
    """

    age: float | None = None
    sex: str | None = None
    diagnosis: str | None = None
    modality: str = DEFAULT_MODALITY

    def __post_init__(self) -> None:
        if self.age is not None and not (MIN_AGE <= self.age <= MAX_AGE):
            raise ParameterError(
                f"Age {self.age} is outside {MIN_AGE:g}–{MAX_AGE:g} years: give an age in years."
            )
        if self.sex is not None:
            object.__setattr__(self, "sex", _sex_name(self.sex))
        if self.diagnosis is not None:
            object.__setattr__(self, "diagnosis", _diagnosis_label(self.diagnosis))
        if not self.modality.strip():
            raise ParameterError("The modality is empty: give one such as 'brain MRI'.")

    @classmethod
    def parse(cls, text: str, base: Attributes | None = None) -> Attributes:
        """Read ``"age=70,sex=F,dx=CN"`` (keys: age, sex, dx/diagnosis, modality).

        Keys not given keep their value from ``base`` (so ``--to age=77`` can inherit the sex of
        ``--from``). Unknown keys or bad values raise :class:`ParameterError`.
        """
        values = dataclasses.asdict(base) if base is not None else {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            field = _KEY_ALIASES.get(key.strip().lower())
            if not sep or field is None or not value.strip():
                raise ParameterError(
                    f"Cannot read patient attribute '{item}': write key=value pairs separated by commas, "
                    f"keys {', '.join(sorted(_KEY_ALIASES))}, e.g. 'age=70,sex=F,dx=CN'."
                )
            values[field] = _parse_age(value) if field == "age" else value.strip()
        return cls(**values)


@dataclass(frozen=True)
class PromptOptions:
    """How prompts are written: see the module docstring for the styles and age formats."""

    style: Style = "diverse"
    patient_info: bool = True
    age_format: AgeFormat = "numerical"

    def __post_init__(self) -> None:
        if self.style not in ("simple", "diverse"):
            raise ParameterError(f"Unknown prompt style '{self.style}': use simple or diverse.")
        if self.age_format not in ("numerical", "words", "binned"):
            raise ParameterError(f"Unknown age format '{self.age_format}': use numerical, words or binned.")


def describe(attributes: Attributes, options: PromptOptions | None = None, index: int = 0) -> str:
    """A description prompt; ``index`` picks the paraphrase of the diverse style (modulo 21)."""
    options = options or PromptOptions()
    template = DIVERSE_IMAGE_PHRASES[index % len(DIVERSE_IMAGE_PHRASES)]
    if options.style == "simple":
        template = SIMPLE_IMAGE_PHRASE
    prompt = template.format(modality=attributes.modality)
    patient = _patient_clause(attributes, options.age_format) if options.patient_info else ""
    return f"{prompt} of {patient}" if patient else prompt


def paraphrases(attributes: Attributes, options: PromptOptions | None = None) -> list[str]:
    """Every distinct description of ``attributes`` in this style (1 for simple, 21 for diverse)."""
    options = options or PromptOptions()
    count = 1 if options.style == "simple" else len(DIVERSE_IMAGE_PHRASES)
    return [describe(attributes, options, index) for index in range(count)]


def instruct(source: Attributes, target: Attributes, age_format: AgeFormat = "numerical") -> str:
    """An InstructPix2Pix instruction that turns ``source`` into ``target`` (see the module docstring)."""
    change = None if source.age is None or target.age is None else target.age - source.age
    verb = "Turn" if not change else ("Age" if change > 0 else "Rejuvenate")
    source_text = " ".join(
        filter(
            None,
            [
                source.diagnosis,
                None if source.age is None else f"{format_age(source.age, age_format)} years old",
                source.sex,
                source.modality,
            ],
        )
    )
    binned = age_format == "binned" and change is not None
    target_age = None if target.age is None or binned else format_age(target.age, age_format)
    target_text = " ".join(filter(None, [target_age, target.modality]))
    if target.diagnosis is not None:
        target_text += f" with {target.diagnosis}"
    return f"{verb} this {source_text}{_how_much(change, age_format)} into a {target_text}"


def _how_much(change: float | None, age_format: AgeFormat) -> str:
    """`` moderately`` (binned) or `` by 7 years`` (the others); "" when there is no age change."""
    if not change:
        return ""
    if age_format == "binned":
        return f" {age_bin(change)}"
    years = format_age(round(abs(change), 1), age_format)
    return f" by {years} {'year' if years in ('1', 'one') else 'years'}"


def age_bin(change: float) -> str:
    """``slightly`` (|change| < 5 years), ``moderately`` (5–10 years) or ``significantly`` (> 10 years)."""
    size = abs(change)
    return "slightly" if size < 5 else ("moderately" if size <= 10 else "significantly")


def format_age(age: float, age_format: AgeFormat = "numerical") -> str:
    """``77`` or ``77.5`` (numerical and binned), ``seventy-seven`` (words)."""
    if age_format == "words":
        return number_to_words(math.floor(age + 0.5))
    return f"{age:g}"


def number_to_words(number: int) -> str:
    """English words for an integer in 0–120: ``77`` → ``seventy-seven``, ``105`` → ``one hundred five``."""
    if not 0 <= number <= 120:
        raise ParameterError(f"Cannot write {number} in words: only 0–120 are supported.")
    if number >= 100:
        rest = number - 100
        return "one hundred" + (f" {number_to_words(rest)}" if rest else "")
    if number < 20:
        return _ONES[number]
    tens, ones = divmod(number, 10)
    return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")


def prompt_words() -> set[str]:
    """Every lower-case word the builder can write with the default modality (for tiny tokenizers)."""
    texts = [
        *DIVERSE_IMAGE_PHRASES,
        DEFAULT_MODALITY,
        "of with by year years old Age Rejuvenate Turn this into",
    ]
    texts += [number_to_words(n) for n in range(121)]
    texts += [*_SEX_NAMES.values(), *KNOWN_DIAGNOSES, "slightly moderately significantly"]
    return {word for text in texts for word in re.findall(r"[a-z]+", text.lower().replace("{modality}", ""))}


def _patient_clause(attributes: Attributes, age_format: AgeFormat) -> str:
    """``a 70 year old female with CN``; parts that are unknown are left out ("" when nothing is known)."""
    age = None if attributes.age is None else f"{format_age(attributes.age, age_format)} year old"
    who = attributes.sex or ("patient" if age is not None or attributes.diagnosis is not None else None)
    if who is None:
        return ""
    clause = " ".join(filter(None, ["a", age, who]))
    return clause + (f" with {attributes.diagnosis}" if attributes.diagnosis is not None else "")


def _parse_age(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ParameterError(
            f"Age '{value.strip()}' is not a number: give the age in years, e.g. age=70."
        ) from None


def _sex_name(value: str) -> str:
    name = _SEX_NAMES.get(value.strip().lower())
    if name is None:
        raise ParameterError(f"Unknown sex '{value}': use F, M, female or male.")
    return name


def _diagnosis_label(value: str) -> str:
    label = value.strip()
    if not label:
        raise ParameterError("The diagnosis is empty: give a label such as CN, MCI or AD.")
    return label.upper() if label.upper() in KNOWN_DIAGNOSES else label
