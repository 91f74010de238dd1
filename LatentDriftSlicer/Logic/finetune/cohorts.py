"""Fine-tuning cohorts: rows of volumes with patient attributes → validated, cached, model-ready slices.

A cohort is a CSV file or a folder:

* **CSV** (paths relative to the CSV): ``path`` (or ``image``/``volume``/``file``; a volume file or a
  DICOM series folder), and optionally ``subject``, ``session`` (or ``timepoint``/``visit``), ``age``,
  ``sex``, ``diagnosis`` (or ``dx``/``group``), ``label`` (a label volume, for segmentation cohorts).
  Any other column is kept as a free column.
* **Folder**: ``cohort.csv`` inside it when there is one, otherwise every volume file and DICOM series
  folder in it, one row each (subject = file name, no attributes).

Bad rows never stop a job: a malformed row (no path, an age that is not a number or outside 0–120, an
unknown sex), a missing or unreadable file, a 4D/vector volume, a label map given as the image, NaN
voxels, a label volume on another grid or with unknown labels is skipped and reported with the reason
(:func:`write_report` writes ``cohort_report.json`` and ``cohort_report.md``).

Slices (:func:`prepare_cohort`) are cut once along the chosen axis, windowed with
:class:`~latentdrift.core.volumes.IntensityWindow` (per-volume percentiles → [-1, 1]), padded and resized
with :class:`~latentdrift.core.resampling.SliceResizer`, and only slices that contain anatomy are kept (at least
``min_anatomy`` of their pixels above the bottom 5 % of the window). The result is cached as
``slices.npz`` (arrays, no pickle) and ``index.json`` under a key hashed from the cohort rows, each
file's size and modification time, and the slice settings: a changed file or setting re-extracts.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.atomic_files import write_folder_atomic
from ..core.errors import InputError, LatentDriftError, MissingFileError
from ..core.values import Axis
from ..core.volumes import (
    VOLUME_SUFFIXES,
    IntensityWindow,
    Volume,
    check_image_volume,
    extract_slices,
    foreground_fraction,
    read_volume,
)
from ..counterfactual.prompts import Attributes, PromptOptions, describe

CACHE_FORMAT = "latentdrift-cohort-slices-1"
ANATOMY_LEVEL = -0.9  # model range [-1, 1]: above the bottom 5 % of the window
_COLUMNS = {
    "path": ("path", "image", "volume", "file"),
    "subject": ("subject", "subject_id", "participant"),
    "session": ("session", "timepoint", "visit"),
    "age": ("age",),
    "sex": ("sex", "gender"),
    "diagnosis": ("diagnosis", "dx", "group"),
    "label": ("label", "label_path", "segmentation"),
}


@dataclass(frozen=True)
class CohortRow:
    """One usable-looking row: where the volume is and what is known about it (``line``: CSV line number)."""

    line: int
    subject: str
    session: str
    image: Path
    attributes: Attributes
    label: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Problem:
    """A skipped row (or pair) and why."""

    line: int
    subject: str
    path: str
    reason: str


@dataclass(frozen=True)
class SliceSettings:
    """How volumes become training slices (see the module docstring)."""

    axis: Axis = "axial"
    size: int = 64
    percentiles: tuple[float, float] = (0.5, 99.5)
    min_anatomy: float = 0.05


@dataclass
class CohortData:
    """Model-ready slices ``images`` (N, S, S) float32 in [-1, 1] and one ``slices`` record per slice.

    Each slice record: ``row`` (index into ``rows``), ``index`` (slice index along the axis). Each row
    record: ``line``, ``subject``, ``session``, ``path``, ``age``, ``sex``, ``diagnosis``, ``grid``.
    """

    images: np.ndarray
    slices: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    report: dict[str, Any]
    key: str

    def attributes(self, slice_number: int, modality: str | None = None) -> Attributes:
        """The patient attributes of slice ``slice_number`` (``modality`` overrides the default)."""
        row = self.rows[self.slices[slice_number]["row"]]
        extra = {"modality": modality} if modality else {}
        return Attributes(age=row["age"], sex=row["sex"], diagnosis=row["diagnosis"], **extra)

    def prompt(self, slice_number: int, options: PromptOptions, modality: str | None = None) -> str:
        """The description of slice ``slice_number`` (the diverse style picks paraphrase ``slice_number``)."""
        return describe(self.attributes(slice_number, modality), options, slice_number)

    def subject(self, slice_number: int) -> str:
        """The subject slice ``slice_number`` belongs to."""
        return str(self.rows[self.slices[slice_number]["row"]]["subject"])


# --------------------------------------------------------------------------- reading rows


def read_cohort(source: str | Path) -> tuple[list[CohortRow], list[Problem]]:
    """The rows of a cohort CSV or folder, and the malformed rows skipped (see the module docstring)."""
    source = Path(source).expanduser()
    if not source.exists():
        raise MissingFileError(f"Cohort '{source}' does not exist: give a CSV file or a folder of volumes.")
    if source.is_dir() and not (source / "cohort.csv").is_file():
        return _rows_from_folder(source), []
    csv_path = source / "cohort.csv" if source.is_dir() else source
    return _rows_from_csv(csv_path)


def _rows_from_folder(folder: Path) -> list[CohortRow]:
    entries = [
        p for p in sorted(folder.iterdir()) if p.name.lower().endswith(VOLUME_SUFFIXES) or _is_dicom_folder(p)
    ]
    if not entries:
        raise InputError(
            f"Cohort folder '{folder}' holds no volume files or DICOM folders (nor a cohort.csv)."
        )
    return [
        CohortRow(number, _stem(path), "", path.absolute(), Attributes())
        for number, path in enumerate(entries, start=1)
    ]


def _is_dicom_folder(path: Path) -> bool:
    return path.is_dir() and any(child.suffix.lower() == ".dcm" for child in path.iterdir())


def _stem(path: Path) -> str:
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _rows_from_csv(path: Path) -> tuple[list[CohortRow], list[Problem]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip().lower() for name in next(reader, [])]
        records = list(reader)
    columns = {
        key: next((header.index(a) for a in aliases if a in header), None)
        for key, aliases in _COLUMNS.items()
    }
    if columns["path"] is None:
        raise InputError(f"Cohort '{path}' has no path column: name one of {', '.join(_COLUMNS['path'])}.")
    rows, problems = [], []
    for line, record in enumerate(records, start=2):
        if not any(cell.strip() for cell in record):
            continue
        try:
            rows.append(_parse_record(record, header, columns, path.parent, line))
        except LatentDriftError as error:
            subject = _cell(record, columns["subject"]) or "?"
            problems.append(Problem(line, subject, _cell(record, columns["path"]), str(error)))
    return rows, problems


def _cell(record: list[str], index: int | None) -> str:
    return record[index].strip() if index is not None and index < len(record) else ""


def _parse_record(
    record: list[str], header: list[str], columns: dict[str, int | None], base: Path, line: int
) -> CohortRow:
    if len(record) != len(header):
        raise InputError(f"malformed row: {len(record)} fields where the header has {len(header)}")
    path = _cell(record, columns["path"])
    if not path:
        raise InputError("malformed row: the path is empty")
    age_text = _cell(record, columns["age"])
    attributes = Attributes.parse(
        ",".join(
            f"{key}={value}"
            for key, value in (
                ("age", age_text),
                ("sex", _cell(record, columns["sex"])),
                ("dx", _cell(record, columns["diagnosis"])),
            )
            if value
        )
    )
    label = _cell(record, columns["label"])
    known = {index for index in columns.values() if index is not None}
    image = (base / path).expanduser().absolute()
    return CohortRow(
        line=line,
        subject=_cell(record, columns["subject"]) or _stem(image),
        session=_cell(record, columns["session"]),
        image=image,
        attributes=attributes,
        label=(base / label).absolute() if label else None,
        extra={header[i]: record[i] for i in range(len(header)) if i not in known},
    )


# --------------------------------------------------------------------------- validation


def load_row(row: CohortRow, label_classes: int | None = None) -> tuple[Volume, Volume | None]:
    """Read and check a row's image (and label volume when ``label_classes`` is given); raises InputError.

    Labels must lie on the image's grid and hold integers in ``[0, label_classes)``.
    """
    volume = read_volume(row.image)
    check_image_volume(volume)
    if label_classes is None:
        return volume, None
    if row.label is None:
        raise InputError("no label path (segmentation cohorts need a 'label' column)")
    labels = read_volume(row.label)
    if labels.voxels.shape != volume.voxels.shape or not labels.geometry.is_close(volume.geometry, 1e-4):
        raise InputError(f"inconsistent geometry: label '{row.label.name}' is not on the image's grid")
    values = np.unique(labels.voxels)
    bad = [v for v in values.tolist() if v != int(v) or not 0 <= v < label_classes]
    if bad:
        raise InputError(f"unknown labels {bad[:8]} (the model has classes 0..{label_classes - 1})")
    return volume, labels


def validate_rows(
    rows: list[CohortRow], label_classes: int | None = None
) -> tuple[list[CohortRow], list[Problem]]:
    """Rows whose volumes load and pass the checks of :func:`load_row`, and a problem for each other row."""
    good, problems = [], []
    for row in rows:
        try:
            load_row(row, label_classes)
        except LatentDriftError as error:
            problems.append(Problem(row.line, row.subject, str(row.image), str(error)))
        else:
            good.append(row)
    return good, problems


# --------------------------------------------------------------------------- slices and cache


def default_cache_dir() -> Path:
    """``$LATENTDRIFT_CACHE/cohorts`` or ``~/.cache/latentdrift/cohorts``."""
    root = os.environ.get("LATENTDRIFT_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "latentdrift") / "cohorts"


def cohort_key(rows: list[CohortRow], problems: list[Problem], settings: SliceSettings) -> str:
    """A hash of the rows, every referenced file's size and mtime, and the slice settings."""
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    for row in rows:
        digest.update(json.dumps(_row_record(row), sort_keys=True, default=str).encode())
        for path in (row.image, row.label):
            digest.update(json.dumps(_file_stats(path)).encode())
    digest.update(json.dumps([asdict(p) for p in problems], sort_keys=True).encode())
    digest.update(json.dumps(asdict(settings), sort_keys=True).encode())
    return digest.hexdigest()[:20]


def _file_stats(path: Path | None) -> list[Any]:
    if path is None or not path.exists():
        return [str(path), None]
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return [str(path)] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]


def _row_record(row: CohortRow) -> dict[str, Any]:
    return {
        "line": row.line,
        "subject": row.subject,
        "session": row.session,
        "path": str(row.image),
        "age": row.attributes.age,
        "sex": row.attributes.sex,
        "diagnosis": row.attributes.diagnosis,
    }


def prepare_cohort(
    source: str | Path, settings: SliceSettings | None = None, cache_dir: str | Path | None = None
) -> CohortData:
    """Validated, model-ready slices of a cohort, from the cache when nothing changed.

    Raises :class:`InputError` only when no row at all gives a slice (the report says why).
    """
    settings = settings or SliceSettings()
    rows, problems = read_cohort(source)
    key = cohort_key(rows, problems, settings)
    folder = Path(cache_dir or default_cache_dir()) / key
    if not (folder / "index.json").is_file():
        _write_cache(folder, _extract(rows, problems, settings, str(source), key))
    return _read_cache(folder)


def _extract(
    rows: list[CohortRow], problems: list[Problem], settings: SliceSettings, source: str, key: str
) -> CohortData:
    images: list[np.ndarray] = []
    slices: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    total = len(rows) + len(problems)
    problems = list(problems)
    for row in rows:
        try:
            volume, _ = load_row(row)
            row_images, indices = volume_slices(volume, settings)
        except LatentDriftError as error:
            problems.append(Problem(row.line, row.subject, str(row.image), str(error)))
            continue
        if not indices:
            problems.append(Problem(row.line, row.subject, str(row.image), "no slice contains anatomy"))
            continue
        slices += [{"row": len(kept), "index": index} for index in indices]
        kept.append({**_row_record(row), "grid": _grid(volume)})
        images.append(row_images)
    report = _report(source, key, total, kept, slices, problems)
    stacked = np.concatenate(images) if images else np.zeros((0, settings.size, settings.size), np.float32)
    return CohortData(stacked, slices, kept, report, key)


def volume_slices(volume: Volume, settings: SliceSettings) -> tuple[np.ndarray, list[int]]:
    """Model-ready slices (n, S, S) of one volume that contain anatomy, and their indices along the axis."""
    window = IntensityWindow.from_percentiles(volume.voxels, settings.percentiles)
    stack = extract_slices(volume, settings.axis)
    windowed = window.forward(stack.slices)
    keep = foreground_fraction(windowed, ANATOMY_LEVEL) >= settings.min_anatomy
    from ..core.resampling import (
        SliceResizer,  # torch: loaded in the training process only, not with the config
    )

    resizer = SliceResizer(windowed.shape[1:], stack.layout.pixel_spacing, settings.size)
    if not keep.any():
        return np.zeros((0, settings.size, settings.size), np.float32), []
    images = resizer.to_model(windowed[keep], background=-1.0)
    return np.clip(images, -1.0, 1.0).astype(np.float32), [stack.indices[i] for i in np.flatnonzero(keep)]


def _grid(volume: Volume) -> list[Any]:
    geometry = volume.geometry
    return [
        list(volume.voxels.shape),
        np.round(np.asarray(geometry.origin, float), 4).tolist(),
        np.round(np.asarray(geometry.spacing, float), 4).tolist(),
        np.round(np.asarray(geometry.direction, float), 4).ravel().tolist(),
    ]


def _report(
    source: str,
    key: str,
    total: int,
    kept: list[dict[str, Any]],
    slices: list[dict[str, Any]],
    problems: list[Problem],
) -> dict[str, Any]:
    return {
        "cohort": source,
        "key": key,
        "rows_total": total,
        "rows_used": len(kept),
        "subjects": len({row["subject"] for row in kept}),
        "slices": len(slices),
        "problems": [asdict(p) for p in sorted(problems, key=lambda p: p.line)],
    }


def _write_cache(folder: Path, data: CohortData) -> None:
    """Store ``data`` as the cache ``folder`` (atomically; another process storing it first is fine)."""

    def fill(staging: Path) -> None:
        np.savez(staging / "slices.npz", images=data.images)
        index = {"format": CACHE_FORMAT, "slices": data.slices, "rows": data.rows, "report": data.report}
        (staging / "index.json").write_text(json.dumps(index) + "\n", encoding="utf-8")

    try:
        write_folder_atomic(folder, fill)
    except OSError:
        if not (folder / "index.json").is_file():
            raise


def _read_cache(folder: Path) -> CohortData:
    index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    with np.load(folder / "slices.npz", allow_pickle=False) as arrays:
        images = arrays["images"]
    report = index["report"]
    if not index["slices"]:
        reasons = "; ".join(f"line {p['line']}: {p['reason']}" for p in report["problems"][:5])
        raise InputError(f"No usable slice in cohort '{report['cohort']}': {reasons or 'no rows'}.")
    return CohortData(images, index["slices"], index["rows"], report, folder.name)


# --------------------------------------------------------------------------- pairs, split, report


def longitudinal_pairs(data: CohortData) -> tuple[list[tuple[int, int]], list[Problem]]:
    """(source, target) slice numbers of the same subject at two timepoints, earlier → later.

    Rows of a subject are ordered by age, then session; every earlier/later combination of rows on
    the same voxel grid gives one pair per slice index both kept. Rows on different grids are
    reported (they would need registration first).
    """
    by_row: dict[int, dict[int, int]] = {}
    for number, record in enumerate(data.slices):
        by_row.setdefault(record["row"], {})[record["index"]] = number
    subjects: dict[str, list[int]] = {}
    for index, row in enumerate(data.rows):
        subjects.setdefault(row["subject"], []).append(index)
    pairs: list[tuple[int, int]] = []
    problems: list[Problem] = []
    for rows in subjects.values():
        ordered = sorted(rows, key=lambda r: (_age_key(data.rows[r]["age"]), data.rows[r]["session"]))
        for position, first in enumerate(ordered):
            for second in ordered[position + 1 :]:
                a, b = data.rows[first], data.rows[second]
                if a["grid"] != b["grid"]:
                    reason = f"inconsistent geometry: session '{b['session']}' is not on the grid of '{a['session']}'"
                    problems.append(Problem(b["line"], b["subject"], b["path"], reason))
                    continue
                common = sorted(set(by_row.get(first, {})) & set(by_row.get(second, {})))
                pairs += [(by_row[first][i], by_row[second][i]) for i in common]
    return pairs, problems


def _age_key(age: float | None) -> float:
    return -1.0 if age is None else float(age)


def split_subjects(subjects: list[str], validation_fraction: float, seed: int) -> set[str]:
    """The held-out subjects: a seeded share of the distinct subjects (none when only one subject)."""
    names = sorted(set(subjects))
    if len(names) < 2 or validation_fraction <= 0:
        return set()
    rng = np.random.default_rng(seed)
    rng.shuffle(names)
    return set(names[: max(1, round(len(names) * validation_fraction))])


def write_report(report: dict[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """Write ``cohort_report.json`` and ``cohort_report.md`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "cohort_report.json", folder / "cohort_report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"# Cohort report: {report['cohort']}",
        "",
        f"- rows: {report['rows_used']} used of {report['rows_total']}",
        f"- subjects: {report['subjects']}, slices: {report['slices']}",
        f"- cache key: `{report['key']}`",
        "",
    ]
    problems = report.get("problems", [])
    if problems:
        lines += ["| line | subject | path | skipped because |", "|---|---|---|---|"]
        lines += [f"| {p['line']} | {p['subject']} | {p['path']} | {p['reason']} |" for p in problems]
    else:
        lines.append("Every row was used.")
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return json_path, md_path
