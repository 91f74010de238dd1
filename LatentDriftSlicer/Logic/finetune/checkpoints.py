"""Atomic, self-checking training checkpoints in ``JOB_DIR/checkpoints/step-NNNNNNNN``.

Writing (:func:`save_checkpoint`, every process calls it): ``accelerator.save_state`` fills a hidden
``.partial-step-…`` folder (models and optimizer in safetensors / torch files, RNG states), the main
process adds ``trainer.json`` (step and loss history) and then ``checkpoint.json``, a manifest of
every file with its size, fsyncs everything and renames the folder into place (``os.replace``: a
checkpoint folder exists whole or not at all). Only the newest ``keep`` checkpoints are kept.

Reading (:func:`resume_from`): checkpoints newest first; one whose manifest is missing,
unreadable or disagrees with the files is skipped (logged), as is one ``load_state`` fails on.

Every training run writes these checkpoints: the fine-tuning schemes (:mod:`.loop`) and LDSeg
(:mod:`latentdrift.segmentation.ldseg.training`, which adds its EMA weights as ``ema.safetensors``).

Fine-tuning checkpoints hold only the weights that train (:func:`save_trainable_weights_only`): the
frozen rest is the base model's, which every start and resume loads anyway.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.atomic_files import fsync_file, fsync_folder
from ..core.errors import JobError

LOG = logging.getLogger(__name__)

MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer.json"
_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_name(step: int) -> str:
    """``step-00000042``."""
    return f"step-{step:08d}"


def save_checkpoint(
    accelerator: Any, folder: Path, step: int, trainer: dict[str, Any], keep: int = 2
) -> Path:
    """Write the checkpoint of ``step`` atomically (see the module docstring); returns its folder."""
    final = folder / checkpoint_name(step)
    staging = folder / f".partial-{checkpoint_name(step)}"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / TRAINER_STATE).write_text(json.dumps(trainer) + "\n", encoding="utf-8")
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        for path in files:
            fsync_file(path)
        manifest = {"step": step, "files": {str(p.relative_to(staging)): p.stat().st_size for p in files}}
        (staging / MANIFEST).write_text(json.dumps(manifest) + "\n", encoding="utf-8")
        fsync_file(staging / MANIFEST)
        fsync_folder(staging)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        fsync_folder(folder)
        prune(folder, keep)
    accelerator.wait_for_everyone()
    return final


def save_trainable_weights_only(accelerator: Any) -> None:
    """Make ``accelerator.save_state`` write, of each prepared model, only the parameters that train.

    A LoRA or textual-inversion checkpoint of Stable Diffusion then holds the adapters or the token
    embeddings (megabytes), not the frozen UNet or text encoder (gigabytes). The weights of a
    prepared model whose every parameter trains are written whole, as before. Resume must load with
    ``strict=False`` (see :func:`load_trainable_weights`), since the frozen weights are absent.
    """

    def keep_trainable(models: list[Any], weights: list[dict[str, Any]], _output_dir: str) -> None:
        for index, model in enumerate(models):
            trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
            weights[index] = {key: value for key, value in weights[index].items() if key in trainable}

    accelerator.register_save_state_pre_hook(keep_trainable)


def load_trainable_weights(accelerator: Any, path: Path) -> None:
    """``accelerator.load_state`` of a checkpoint written with :func:`save_trainable_weights_only`."""
    accelerator.load_state(str(path), strict=False)


def prune(folder: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints, and leftover partial folders.

    A checkpoint is first renamed out of the ``step-*`` names (atomic), then deleted, so a kill in the
    middle of a deletion never leaves a half-deleted checkpoint that looks like one.
    """
    for path in checkpoints(folder)[keep:]:
        os.replace(path, folder / f".deleting-{path.name}")
    for pattern in (".partial-*", ".deleting-*"):
        for path in folder.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


def checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders, newest first (by step; not checked)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def is_complete(path: Path) -> bool:
    """True when the manifest reads and every file it lists exists with its size."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        return bool(files) and all((path / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint folder holds."""
    match = _NAME.match(path.name)
    if match is None:
        raise ValueError(f"'{path}' is not a checkpoint folder")
    return int(match.group(1))


def resume_from(folder: Path, load: Callable[[Path], None]) -> dict[str, Any] | None:
    """Load the newest good checkpoint with ``load(path)``; its ``trainer.json``, or None when none loads.

    Incomplete checkpoints and ones ``load`` raises on are skipped with a warning; a :class:`JobError`
    from ``load`` (a checkpoint of another run: other settings, model or version) stops the resume.
    """
    for path in checkpoints(folder):
        if not is_complete(path):
            LOG.warning("Skipping incomplete checkpoint %s", path.name)
            continue
        try:
            load(path)
            return dict(json.loads((path / TRAINER_STATE).read_text(encoding="utf-8")))
        except JobError:
            raise
        except Exception as error:  # a damaged file of any kind: fall back to the previous checkpoint
            LOG.warning("Skipping checkpoint %s: %s", path.name, error)
    return None
