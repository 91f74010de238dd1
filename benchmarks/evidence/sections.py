"""The four measurements of the evidence pipeline; each returns JSON-ready rows (numbers of this run only)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    Cohorts,
    Sampling,
    Sizes,
    Stages,
    finetuned_model,
    generate,
    held_out_prompts,
    job_config,
    key_of,
    model_key,
    model_sampling,
    row_attributes,
)
from networks import SliceCNN, apply, train_network
from scipy.stats import pearsonr
from sklearn.metrics import roc_auc_score

from latentdrift.core.volumes import Volume, extract_slices, read_volume
from latentdrift.counterfactual.edit import EditSettings, clear_bundle_cache, load_bundle
from latentdrift.counterfactual.prompts import describe
from latentdrift.counterfactual.volume_editing import counterfactual_volume
from latentdrift.evaluation.metrics import (
    changed_region,
    frechet_distance,
    kernel_distance,
    masked_psnr,
    masked_ssim,
    ssim_outside,
    ventricle_measure,
)
from latentdrift.finetune.cohorts import CohortData, CohortRow
from latentdrift.finetune.config import FinetuneConfig
from latentdrift.finetune.drift_search import l1_distances
from latentdrift.fixtures.synthetic_cohort import tissue_volumes_ml

SCHEMES = ("basic", "lora", "textual-inversion", "dreambooth", "custom-diffusion")
CHANGE_MARGIN_VOXELS = 2
VENTRICLE_ROI_MM = 6.0


@dataclass
class Context:
    """What every section needs: sizes, cached stages, models, cohorts, the encoder and its reference."""

    sizes: Sizes
    stages: Stages
    device: str
    base: Path
    resolution: int
    cohorts: Cohorts
    encoder: SliceCNN
    reference: np.ndarray = field(repr=False)  # encoder features of the held-out slices (N, D)
    delta: float | None = None
    models: dict[str, Path] = field(default_factory=dict)
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def config(self, **fields: Any) -> FinetuneConfig:
        """A job config on the training cohort with this run's sizes."""
        return job_config(self.cohorts, self.base, self.sizes, self.resolution, self.device, **fields)


# --------------------------------------------------------------------------- generation quality


def quality(ctx: Context, slices: np.ndarray) -> dict[str, float]:
    """FID, KID (mean, std) on the encoder's features and L1 (mean image, nearest) to the held-out slices."""
    features = apply(ctx.encoder, slices, features=True)
    kid, kid_std = kernel_distance(ctx.reference, features, subsets=50, seed=ctx.sizes.seed)
    mean_l1, nearest_l1 = l1_distances(slices, ctx.cohorts.test.images)
    return {
        "fid": frechet_distance(ctx.reference, features),
        "kid": kid,
        "kid_std": kid_std,
        "mean_image_l1": mean_l1,
        "nearest_l1": nearest_l1,
        "samples": len(slices),
    }


def sampled(ctx: Context, name: str, folder: Path, model_key: str, sampling: Sampling) -> np.ndarray:
    """``samples`` slices of ``folder`` from the held-out rows' prompts (cached per model and settings)."""
    s = ctx.sizes
    prompts = held_out_prompts(ctx.cohorts.test_rows, sampling, s.samples)
    key = {
        "model": model_key,
        "prompts": prompts,
        "sampling": asdict(sampling),
        "steps": s.sample_steps,
        "guidance": s.guidance,
        "seed": s.seed,
        "size": ctx.resolution,
    }
    arrays = ctx.stages.arrays(
        f"generated-{name}",
        key,
        lambda: {"slices": generate(folder, prompts, ctx.resolution, s, sampling, ctx.device)},
    )
    ctx.samples[name] = arrays["slices"]
    return arrays["slices"]


def evaluate_job(ctx: Context, name: str, config: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune (or reuse) job ``name`` and measure its samples; the row of sections 1 and 4."""
    model = finetuned_model(ctx.stages, name, config)
    ctx.models[name] = model
    sampling = model_sampling(model)
    slices = sampled(ctx, name, model, key_of(config.to_json()), sampling)
    return {
        "name": name,
        "delta": sampling.drift,
        "drift_start": sampling.drift_start,
        **quality(ctx, slices),
    }


def reference_row(ctx: Context) -> dict[str, Any]:
    """Training-cohort slices (as many as the generated sets) against the held-out ones: the floor."""
    rng = np.random.default_rng(ctx.sizes.seed)
    images = ctx.cohorts.train.images
    chosen = rng.choice(len(images), size=min(ctx.sizes.samples, len(images)), replace=False)
    return {"name": "training-cohort slices (reference)", **quality(ctx, images[np.sort(chosen)])}


def search_row(ctx: Context) -> Any:
    """Fine-tune basic with drift first: with ``search_drift`` its job chooses δ on the base model."""
    fields: dict[str, Any] = {"scheme": "basic"}
    fields.update({"search_drift": True} if ctx.delta is None else {"drift": ctx.delta})
    row = evaluate_job(ctx, "basic-drift", ctx.config(**fields))
    ctx.delta = float(row["delta"])
    return row


def section_drift(ctx: Context) -> dict[str, Any]:
    """Section 1: every scheme with and without Latent Drift, same steps, same held-out prompts."""
    searched = ctx.delta is None
    drift_row = search_row(ctx)
    delta = ctx.delta
    assert delta is not None
    rows = []
    for scheme in SCHEMES:
        off = evaluate_job(ctx, f"{scheme}-nodrift", ctx.config(scheme=scheme))
        on = (
            drift_row
            if scheme == "basic"
            else evaluate_job(ctx, f"{scheme}-drift", ctx.config(scheme=scheme, drift=delta))
        )
        rows += [{**off, "scheme": scheme, "drift": False}, {**on, "scheme": scheme, "drift": True}]
    base_rows = []
    base_sampling = model_sampling(ctx.base)
    for label, d in (("base model, δ = 0", 0.0), ("base model, δ at inference", delta)):
        sampling = replace(base_sampling, drift=d, drift_start=False)
        slices = sampled(ctx, f"base-d{d:+g}", ctx.base, key_of(str(ctx.base)), sampling)
        base_rows.append({"name": label, "delta": d, **quality(ctx, slices)})
    curve = _search_curve(ctx.models["basic-drift"]) if searched else None
    return {
        "delta": delta,
        "delta_source": "search_drift on the base model (basic job)" if searched else "given (--drift)",
        "search_curve": curve,
        "rows": rows,
        "base_rows": base_rows,
        "reference": reference_row(ctx),
    }


def _search_curve(model: Path) -> Any:
    import json

    path = model / "drift_curve.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def section_prompts(ctx: Context) -> dict[str, Any]:
    """Section 4: basic + drift with each prompt style × patient information and each age format."""
    assert ctx.delta is not None
    styles = []
    for style in ("simple", "diverse"):
        for info in (False, True):
            name = (
                "basic-drift"
                if (style, info) == ("diverse", True)
                else f"basic-drift-{style}-{'pi' if info else 'nopi'}"
            )
            row = _shared_or_new(ctx, name, prompt_style=style, patient_info=info)
            styles.append({**row, "prompt_style": style, "patient_info": info})
    ages = []
    for age_format in ("binned", "words", "numerical"):
        name = "basic-drift" if age_format == "numerical" else f"basic-drift-age-{age_format}"
        row = _shared_or_new(ctx, name, age_format=age_format)
        ages.append({**row, "age_format": age_format})
    return {"delta": ctx.delta, "styles": styles, "ages": ages}


def _shared_or_new(ctx: Context, name: str, **fields: Any) -> dict[str, Any]:
    if name == "basic-drift":  # diverse, with patient information, numerical ages: section 1's model
        return {**quality(ctx, ctx.samples[name]), "name": name, "delta": ctx.delta}
    return evaluate_job(ctx, name, ctx.config(scheme="basic", drift=ctx.delta, **fields))


# --------------------------------------------------------------------------- counterfactuals


@dataclass(frozen=True)
class Pair:
    """A held-out subject's baseline and follow-up (same grid) with their labels."""

    subject: str
    source: CohortRow
    target: CohortRow


def pairs(rows: list[CohortRow]) -> list[Pair]:
    """Baseline → follow-up pairs of a cohort's rows."""
    by_subject: dict[str, dict[str, CohortRow]] = {}
    for row in rows:
        by_subject.setdefault(row.subject, {})[row.session] = row
    return [
        Pair(subject, sessions["baseline"], sessions["followup"])
        for subject, sessions in sorted(by_subject.items())
        if {"baseline", "followup"} <= set(sessions)
    ]


def editor_model(ctx: Context, given: Path | None) -> tuple[Path, str, str]:
    """The InstructPix2Pix editor: ``given``, else fine-tuned here on the training cohort (no drift)."""
    if given is not None:
        return given, f"given: {given}", model_key(given)
    config = ctx.config(scheme="instruct-pix2pix", steps=ctx.sizes.editor_steps)
    model = finetuned_model(ctx.stages, "editor-instruct-pix2pix", config)
    return (
        model,
        "fine-tuned here (instruct-pix2pix scheme, training cohort, no drift)",
        key_of(config.to_json()),
    )


def section_counterfactual(ctx: Context, given_editor: Path | None) -> dict[str, Any]:
    """Section 2: edit each baseline of the pairs cohort towards its follow-up at every δ; compare with the truth.

    The counterfactuals are the engine's defaults (``counterfactual_volume``: the change relative to
    the factual edit). Every δ of the sweep drifts the reverse steps only. Two variants at the
    editor's recorded δ follow (``VARIANTS``): ``recorded_settings``, its recorded drifted start too
    (when it recorded one; the demo leaves it out because of this row); ``reconstruction_reference``,
    the change relative to the VAE reconstruction instead of the factual edit (``factual_reference``
    off), i.e. with what every pass through the editor changes, whatever it is asked.
    """
    editor, editor_source, editor_key = editor_model(ctx, given_editor)
    sampling = model_sampling(editor)
    subjects = []
    montage: dict[str, np.ndarray] = {}
    for number, pair in enumerate(pairs(ctx.cohorts.pair_rows)):
        truth = _truth(pair)
        per_delta = []
        for delta in ctx.sizes.deltas:
            edited = _edited(ctx, editor, editor_key, sampling, pair, delta)
            per_delta.append({"delta": delta, **_fidelity(truth, edited)})
            if number == 0:
                montage[f"δ = {delta:+g}"] = _display_slice(truth, edited)
        variants = _variants(ctx, editor, editor_key, sampling, pair, truth)
        if number == 0:
            montage = {
                "source": _display_slice(truth, truth["source"].voxels),
                "true follow-up": _display_slice(truth, truth["target"].voxels),
                **montage,
            }
        subjects.append(
            {
                "subject": pair.subject,
                **_baselines(truth),
                "per_delta": per_delta,
                **variants,
            }
        )
    clear_bundle_cache()
    return {
        "editor": str(editor),
        "editor_source": editor_source,
        "editor_drift_recorded": sampling.drift,
        "editor_drift_start_recorded": sampling.drift_start,
        "settings": {
            "steps": ctx.sizes.cf_steps,
            "guidance": ctx.sizes.guidance,
            "image_guidance": ctx.sizes.image_guidance,
            "axis": "axial",
            "drift_start": False,
            "change_margin_voxels": CHANGE_MARGIN_VOXELS,
            "ventricle_roi_mm": VENTRICLE_ROI_MM,
        },
        "subjects": subjects,
        "summary": _summarise(subjects, ctx.sizes.deltas),
        "_montage": montage,
    }


def _truth(pair: Pair) -> dict[str, Any]:
    source, target = read_volume(pair.source.image), read_volume(pair.target.image)
    assert pair.source.label is not None and pair.target.label is not None
    source_labels, target_labels = read_volume(pair.source.label), read_volume(pair.target.label)
    measure = ventricle_measure(source, source_labels, roi_mm=VENTRICLE_ROI_MM)
    brain = (source_labels.voxels > 0) | (target_labels.voxels > 0)
    return {
        "pair": pair,
        "source": source,
        "target": target,
        "labels": source_labels,
        "brain": brain,
        "region": changed_region(source_labels.voxels, target_labels.voxels, CHANGE_MARGIN_VOXELS),
        "range": float(source.voxels.max() - source.voxels.min()),
        "measure": measure,
        "true_change_ml": tissue_volumes_ml(target_labels)[0] - tissue_volumes_ml(source_labels)[0],
        "measured_source_ml": measure.volume_ml(source.voxels),
    }


def _variants(
    ctx: Context, editor: Path, editor_key: str, sampling: Sampling, pair: Pair, truth: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Fidelity of the ``VARIANTS`` at the editor's δ (``{}`` for recorded settings without a drifted start)."""
    delta = sampling.drift
    recorded: dict[str, Any] = {}
    if sampling.drift_start:
        edited = _edited(ctx, editor, editor_key, sampling, pair, delta, drift_start=True)
        recorded = {"delta": delta, **_fidelity(truth, edited)}
    reconstruction = _edited(ctx, editor, editor_key, sampling, pair, delta, factual_reference=False)
    return {
        "recorded_settings": recorded,
        "reconstruction_reference": {"delta": delta, **_fidelity(truth, reconstruction)},
    }


VARIANTS = ("recorded_settings", "reconstruction_reference")


def _edited(
    ctx: Context,
    editor: Path,
    editor_key: str,
    sampling: Sampling,
    pair: Pair,
    delta: float,
    drift_start: bool = False,
    factual_reference: bool = True,
) -> np.ndarray:
    """The counterfactual volume of ``pair``'s baseline towards the follow-up's attributes (cached)."""
    s = ctx.sizes
    settings = EditSettings(
        mode="instruct",
        source=replace(pair.source.attributes, modality=sampling.modality),
        target=replace(pair.target.attributes, modality=sampling.modality),
        prompt_options=sampling.options,
        drift=delta,
        drift_start=drift_start,
        steps=s.cf_steps,
        guidance=s.guidance,
        image_guidance=s.image_guidance,
        seed=s.seed,
        factual_reference=factual_reference,
    )
    key = {
        "editor": editor_key,
        "subject": pair.subject,
        "settings": repr(settings),
        "image": str(pair.source.image),
    }

    def compute() -> dict[str, np.ndarray]:
        bundle = load_bundle(editor, ctx.device, full_precision=True)
        result = counterfactual_volume(read_volume(pair.source.image), bundle, settings, axis="axial")
        return {"voxels": result.counterfactual.voxels.astype(np.float32)}

    name = (
        f"counterfactual-{pair.subject}-d{delta:+g}"
        + ("-drifted-start" if drift_start else "")
        + ("" if factual_reference else "-reconstruction-reference")
    )
    return ctx.stages.arrays(name, key, compute)["voxels"]


def _fidelity(truth: dict[str, Any], edited: np.ndarray) -> dict[str, float]:
    """SSIM/PSNR to the true follow-up in the brain, SSIM to the source outside the change, ventricles."""
    target, source = truth["target"].voxels, truth["source"].voxels
    predicted = truth["measure"].volume_ml(edited) - truth["measured_source_ml"]
    return {
        "ssim": masked_ssim(edited, target, truth["brain"], truth["range"]),
        "psnr": masked_psnr(edited, target, truth["brain"], truth["range"]),
        "ssim_outside": ssim_outside(edited, source, truth["region"], truth["brain"], truth["range"]),
        "predicted_change_ml": predicted,
    }


def _baselines(truth: dict[str, Any]) -> dict[str, float]:
    """What no edit scores (the source as the prediction) and the measurement's own change on the true pair."""
    source, target = truth["source"].voxels, truth["target"].voxels
    return {
        "true_change_ml": truth["true_change_ml"],
        "measured_true_change_ml": truth["measure"].volume_ml(target) - truth["measured_source_ml"],
        "no_edit_ssim": masked_ssim(source, target, truth["brain"], truth["range"]),
        "no_edit_psnr": masked_psnr(source, target, truth["brain"], truth["range"]),
        "changed_fraction_of_brain": float((truth["region"] & truth["brain"]).sum() / truth["brain"].sum()),
    }


def _display_slice(truth: dict[str, Any], voxels: np.ndarray) -> np.ndarray:
    """The axial slice (display orientation) through most of the source's ventricle region."""
    source: Volume = truth["source"]
    roi = extract_slices(source.with_voxels(truth["measure"].roi.astype(np.float32)), "axial").slices
    index = int(roi.sum(axis=(1, 2)).argmax())
    return extract_slices(source.with_voxels(voxels.astype(np.float32)), "axial").slices[index]


def _agreement(predicted: list[float], truth: list[float]) -> dict[str, Any]:
    """Pearson r with its 95 % confidence interval (scipy, Fisher z; None below 4 subjects) and the MAE."""
    errors = np.abs(np.array(predicted) - np.array(truth))
    r, interval = None, None
    if len(predicted) >= 3 and np.ptp(predicted) > 0 and np.ptp(truth) > 0:
        result = pearsonr(predicted, truth)
        r = float(result.statistic)
        if len(predicted) >= 4:
            interval = [float(v) for v in result.confidence_interval(confidence_level=0.95)]
    return {"pearson_r": r, "pearson_r_ci95": interval, "mae_ml": float(errors.mean())}


def _summary_row(values: list[dict[str, Any]], truth: list[float]) -> dict[str, Any]:
    """Mean and SD of SSIM, PSNR and SSIM outside over subjects; agreement of the ventricle change."""
    row: dict[str, Any] = {}
    for metric in ("ssim", "psnr", "ssim_outside"):
        numbers = np.array([v[metric] for v in values])
        row[metric] = float(numbers.mean())
        row[f"{metric}_sd"] = float(numbers.std())
    return {**row, **_agreement([v["predicted_change_ml"] for v in values], truth)}


def _summarise(subjects: list[dict[str, Any]], deltas: tuple[float, ...]) -> dict[str, Any]:
    truth = [s["true_change_ml"] for s in subjects]
    rows = [
        {"delta": delta, **_summary_row([s["per_delta"][number] for s in subjects], truth)}
        for number, delta in enumerate(deltas)
    ]
    variant_rows = {}
    for variant in VARIANTS:
        values = [s[variant] for s in subjects if s.get(variant)]
        complete = values and len(values) == len(subjects)
        variant_rows[variant] = (
            {"delta": values[0]["delta"], **_summary_row(values, truth)} if complete else None
        )
    no_edit = {
        "ssim": float(np.mean([s["no_edit_ssim"] for s in subjects])),
        "psnr": float(np.mean([s["no_edit_psnr"] for s in subjects])),
        **_agreement([0.0] * len(subjects), truth),
    }
    measurement = _agreement([s["measured_true_change_ml"] for s in subjects], truth)
    return {
        "rows": rows,
        "variants": variant_rows,
        "no_edit": no_edit,
        "measurement_on_true_pairs": measurement,
        "subjects": len(subjects),
    }


# --------------------------------------------------------------------------- classifier


def diagnosis_slices(data: CohortData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slices of CN and AD rows: images (N, S, S), labels (N,) with AD = 1, row numbers (N,)."""
    numbers, labels = [], []
    for n, record in enumerate(data.slices):
        diagnosis = data.rows[record["row"]]["diagnosis"]
        if diagnosis in ("CN", "AD"):
            numbers.append(n)
            labels.append(1 if diagnosis == "AD" else 0)
    rows = np.array([data.slices[n]["row"] for n in numbers], dtype=np.int64)
    return data.images[numbers], np.array(labels, dtype=np.int64), rows


def synthetic_set(ctx: Context, generator: Path, generator_key: str) -> tuple[np.ndarray, np.ndarray]:
    """``classifier_samples`` generated slices, half from CN and half from AD prompts (training rows' ages/sexes)."""
    sampling = model_sampling(generator)
    rows = ctx.cohorts.train_rows
    half = ctx.sizes.classifier_samples // 2
    prompts, labels = [], []
    for label, dx in enumerate(("CN", "AD")):
        counts = [half // len(rows) + (1 if r < half % len(rows) else 0) for r in range(len(rows))]
        for r, row in enumerate(rows):
            if counts[r]:
                prompts.append((describe(row_attributes(row, sampling, dx), sampling.options, r), counts[r]))
                labels += [label] * counts[r]
    key = {
        "model": generator_key,
        "prompts": prompts,
        "sampling": asdict(sampling),
        "steps": ctx.sizes.sample_steps,
    }
    arrays = ctx.stages.arrays(
        "generated-classifier-set",
        key,
        lambda: {"slices": generate(generator, prompts, ctx.resolution, ctx.sizes, sampling, ctx.device)},
    )
    return arrays["slices"], np.array(labels, dtype=np.int64)


def section_classifier(
    ctx: Context, generator: Path, generator_source: str, generator_key: str
) -> dict[str, Any]:
    """Section 3: CN-vs-AD CNNs trained on synthetic, cohort and mixed slices (same count), tested held out."""
    synth_x, synth_y = synthetic_set(ctx, generator, generator_key)
    real_x, real_y, _ = diagnosis_slices(ctx.cohorts.train)
    test_x, test_y, _ = diagnosis_slices(ctx.cohorts.test)
    count = min(len(real_x), len(synth_x))
    rng = np.random.default_rng(ctx.sizes.seed)
    real_pick = rng.permutation(len(real_x))[:count]  # random order: the mixed set takes a random half
    synth_pick = rng.permutation(len(synth_x))[:count]
    half = count // 2
    sets = {
        "synthetic": (synth_x[synth_pick], synth_y[synth_pick]),
        "cohort": (real_x[real_pick], real_y[real_pick]),
        "cohort+synthetic": (
            np.concatenate([real_x[real_pick[:half]], synth_x[synth_pick[: count - half]]]),
            np.concatenate([real_y[real_pick[:half]], synth_y[synth_pick[: count - half]]]),
        ),
    }
    rows = []
    for name, (x, y) in sets.items():
        key = {
            "x": hashlib.sha256(x.tobytes()).hexdigest(),
            "y": y.tolist(),
            "test": hashlib.sha256(test_x.tobytes()).hexdigest(),
            "epochs": ctx.sizes.classifier_epochs,
            "dim": ctx.sizes.feature_dim,
            "seed": ctx.sizes.seed,
        }
        result = ctx.stages.json(
            f"classifier-{name}", key, functools.partial(_classify, ctx, x, y, test_x, test_y)
        )
        rows.append({"training_set": name, **result})
    return {
        "generator": str(generator),
        "generator_source": generator_source,
        "test_slices": len(test_y),
        "test_ad_fraction": float(test_y.mean()),
        "rows": rows,
    }


def _classify(
    ctx: Context, x: np.ndarray, y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> dict[str, Any]:
    net = SliceCNN(1, ctx.sizes.feature_dim)
    losses = train_network(net, x, y, ctx.sizes.classifier_epochs, ctx.sizes.seed, binary=True)
    scores = apply(net, test_x, features=False)[:, 0]
    return {
        "train_slices": len(y),
        "train_ad_fraction": float(y.mean()),
        "final_loss": losses[-1],
        "auc": float(roc_auc_score(test_y, scores)),
    }
