"""Choose the bundled LDSeg model's sampler (DDIM steps, first timestep, mirroring) on its validation subjects.

    .venv/bin/python benchmarks/ldseg/choose_sampling.py           # measure, write the choice
    .venv/bin/python benchmarks/ldseg/choose_sampling.py --apply   # put the written choice into the model

Segments the 6 validation subjects of ``scripts/train_default_ldseg.py`` (the same subject split as
training: seeds below 30 that training held out, never the benchmark's seeds from 1000) as whole volumes
with 8 samples, for each candidate (steps, first timestep), then the best of them with half of the
samples on the mirrored slice (``mirror_samples``), and writes ``sampling_choice.json`` and
``sampling_choice.md`` next to this file. The choice is the candidate with the highest mean Dice (on a
tie within 0.001, the fewest steps, then the first listed, so mirroring must win by more than 0.001). ``--apply`` writes the choice recorded in
``sampling_choice.json`` into the bundled model's ``config.json`` and the sampling sentence of its
model card; the held-out benchmark (``run.py``) then measures it on data the choice never saw.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import accuracy  # noqa: E402

from latentdrift.core.atomic_files import write_json_atomic  # noqa: E402
from latentdrift.core.models import resolve_model  # noqa: E402
from latentdrift.fixtures.synthetic import synthetic_subject  # noqa: E402
from latentdrift.segmentation.data import VolumePair, split_by_subject  # noqa: E402
from latentdrift.segmentation.ldseg import load_ldseg_model, sampling_scheduler  # noqa: E402
from latentdrift.segmentation.ldseg.model_io import CARD_FILE, CONFIG_FILE, config_document  # noqa: E402
from latentdrift.segmentation.ldseg.sampler import describe_sampling  # noqa: E402
from latentdrift.segmentation.segmenters.ldseg import LDSegSegmenter  # noqa: E402
from latentdrift.segmentation.volume_segmentation import SegmentSettings, segment_volume  # noqa: E402

TRAINING_SUBJECTS = 30  # scripts/train_default_ldseg.py --subjects
VALIDATION_FRACTION = 0.2  # and its validation fraction and seed
TRAINING_SEED = 0
CANDIDATES = ((1, 860), (1, 924), (1, 960))
"""Where one step starts. Longer schedules lost on the earlier 128² model by 0.011 (2 steps) to 0.030
(15 steps) (``sampling_choice.md`` as committed in 1533ba9); the held-out steps curve in ``results.md``
still measures 1 to 50 steps."""
SAMPLES = 8
CHOICE_TABLE = "benchmarks/ldseg/sampling_choice.md"


def validation_seeds() -> list[int]:
    """Synthetic-subject seeds that the bundled model's training held out for validation."""
    pairs = [VolumePair(f"subject{seed:04d}", Path(), Path()) for seed in range(TRAINING_SUBJECTS)]
    held_out = split_by_subject(pairs, VALIDATION_FRACTION, TRAINING_SEED)[1]
    return sorted(int(pair.subject.removeprefix("subject")) for pair in held_out)


def evaluate(model, data, steps: int, first_timestep: int | None, mirror: bool = False) -> dict:  # type: ignore[no-untyped-def]
    """Mean Dice and entropy AUROC over ``data`` with the given sampler."""
    model.config = replace(
        model.config, sampling_steps=steps, first_timestep=first_timestep, mirror_samples=mirror
    )
    settings = SegmentSettings(samples=SAMPLES, seed=0, device="cpu")
    dice, auroc, seconds = [], [], []
    for image, truth in data:
        started = time.perf_counter()
        result = segment_volume(image, LDSegSegmenter(model), settings)
        seconds.append(time.perf_counter() - started)
        scores = accuracy(result, truth, model.config.num_classes)
        dice.append(float(np.nanmean(list(scores["dice"].values()))))
        auroc.append(scores["entropy_auroc"])
    return {
        "steps": steps,
        "first_timestep": first_timestep,
        "mirror_samples": mirror,
        "start": int(sampling_scheduler(model.config, steps).timesteps[0]),
        "mean_dice": float(np.mean(dice)),
        "dice_per_subject": dice,
        "entropy_auroc": float(np.mean(auroc)),
        "seconds_per_volume": float(np.mean(seconds)),
    }


def choose(rows: list[dict]) -> dict:
    """Highest mean Dice; among those within 0.001 of it, the fewest steps (then the first listed)."""
    best = max(row["mean_dice"] for row in rows)
    return min((row for row in rows if row["mean_dice"] >= best - 0.001), key=lambda row: row["steps"])


def markdown(results: dict) -> str:
    rows = "\n".join(
        f"| {r['steps']} | {r['start']} | {'yes' if r['mirror_samples'] else 'no'} | {r['mean_dice']:.3f} | {r['entropy_auroc']:.3f} | "
        f"{r['seconds_per_volume']:.1f} |"
        for r in results["candidates"]
    )
    chosen = results["chosen"]
    return f"""# LDSeg sampler choice (validation subjects)

Command: `{results["command"]}`. Bundled brain-tissue model; the {len(results["validation_seeds"])} validation
subjects of its training (synthetic seeds {results["validation_seeds"]}, never the benchmark's held-out
seeds), whole volumes, {SAMPLES} samples per slice.

| DDIM steps | starts at t | half of the samples mirrored | mean Dice | entropy AUROC | seconds per volume |
| --- | --- | --- | --- | --- | --- |
{rows}

Chosen (highest mean Dice; on a tie within 0.001 the fewest steps, then the first listed): **{chosen["steps"]} step(s) from t = {chosen["start"]}{", half of the samples mirrored" if chosen["mirror_samples"] else ""}**.
Only one-step candidates are tried: on the earlier 128² model 2, 5 and 15 steps lost by 0.011 to 0.030
(this file as committed in 1533ba9). Measured on held-out subjects by `benchmarks/ldseg/run.py`
(`results.md`, which also has the steps curve).
"""


def apply(folder: Path, steps: int, first_timestep: int | None, mirror: bool, mean_dice: float) -> None:
    """Write the chosen sampler into ``folder``'s config.json and the model card's sampling sentence.

    The sentence gives the choice's validation ``mean_dice`` (whole volumes, :data:`SAMPLES` samples),
    next to the card's per-epoch figures, which use one sample of a 5-step sampler.
    """
    model = load_ldseg_model(folder)
    old = describe_sampling(model.config)
    config = replace(model.config, sampling_steps=steps, first_timestep=first_timestep, mirror_samples=mirror)
    write_json_atomic(folder / CONFIG_FILE, config_document(config))
    card = folder / CARD_FILE
    sentence = re.compile(re.escape(f"{old} by default") + r"( \(chosen on [^)]*\))?")
    if not sentence.search(card.read_text()):
        raise SystemExit(f"{card} does not say '{old} by default': edit it by hand.")
    new = (
        f"{describe_sampling(config)} by default (chosen on the validation subjects, where it scored mean "
        f"Dice {mean_dice:.3f} on whole volumes with {SAMPLES} samples per slice: `{CHOICE_TABLE}`)"
    )
    card.write_text(sentence.sub(new, card.read_text()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--apply", action="store_true", help="write the choice in sampling_choice.json into the bundled model"
    )
    args = parser.parse_args()
    folder = Path(resolve_model("brain-tissue-ldseg", ("ldseg",)).path)
    if args.apply:
        chosen = json.loads((HERE / "sampling_choice.json").read_text())["chosen"]
        apply(
            folder,
            chosen["steps"],
            chosen["first_timestep"],
            chosen["mirror_samples"],
            chosen["mean_dice"],
        )
        print(f"{folder}: {describe_sampling(load_ldseg_model(folder).config)} by default")
        return 0
    model = load_ldseg_model(folder)
    seeds = validation_seeds()
    data = [synthetic_subject(seed) for seed in seeds]
    rows = []
    for steps, first_timestep in CANDIDATES:
        rows.append(evaluate(model, data, steps, first_timestep))
        print(json.dumps(rows[-1]), flush=True)
    best = choose(rows)
    rows.append(evaluate(model, data, best["steps"], best["first_timestep"], mirror=True))
    print(json.dumps(rows[-1]), flush=True)
    results = {
        "command": " ".join(["python", "benchmarks/ldseg/choose_sampling.py", *sys.argv[1:]]),
        "validation_seeds": seeds,
        "candidates": rows,
        "chosen": choose(rows),
    }
    (HERE / "sampling_choice.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "sampling_choice.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
