"""What one edit (or generation) run does: :class:`EditSettings`, checked when it is made."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from ..drift import Drift, validate_drift
from ..errors import ParameterError
from ..prompts import Attributes, PromptOptions, describe, instruct

Mode = Literal["generate", "img2img", "instruct", "direction"]
SchedulerName = Literal["ddim", "ddpm"]
MODES: tuple[Mode, ...] = ("generate", "img2img", "instruct", "direction")
SCHEDULERS: tuple[SchedulerName, ...] = ("ddim", "ddpm")


@dataclass(frozen=True)
class EditSettings:
    """Settings shared by every mode; each mode reads the ones it needs.

    * ``mode``: ``generate`` (text-to-image), ``img2img`` (SDEdit: noise the slice to ``strength``
      and denoise with the prompt), ``instruct`` (InstructPix2Pix: slice + instruction), ``direction``
      (DDIM inversion with the source prompt, then sampling with the prompt embedding moved by the
      edit direction mean(target paraphrases) − mean(source paraphrases)).
    * Text: ``prompt`` (generate, img2img; in direction the prompt used for inversion) defaults to
      ``describe(target)`` (``describe(source)`` in direction); ``instruction`` (instruct) defaults to
      ``instruct(source, target)``; ``prompt_options`` sets the prompt style (a description uses
      paraphrase 0; the direction edit averages all 21).
    * ``drift``: δ, a float or one float per latent channel (see :mod:`latentdrift.drift`);
      ``drift_start``: start from N(δ, I) (generate, instruct) or noise the image with ε + δ (img2img).
    * ``strength`` in (0, 1] (img2img only); ``steps`` ≥ 1 denoising steps (before strength);
      ``guidance`` text guidance (classifier-free when > 1); ``image_guidance`` (instruct only;
      InstructPix2Pix uses guidance only when ``guidance > 1`` and ``image_guidance ≥ 1``).
    * ``seed``: every slice of an edit uses the noise of ``torch.Generator().manual_seed(seed)``;
      generated sample *i* uses ``seed + i``. ``batch_size``: slices in flight at once (halved on
      out-of-memory). ``workers``: threads the slices are shared among, each with its own pipeline
      calls of ``batch_size // workers`` slices (None: 2 on a multi-core CPU, else 1;
      :func:`latentdrift.devices.parallel_workers`); 1 makes the same calls as one stock pipeline
      given ``batch_size`` slices. ``scheduler``: ``ddim`` (deterministic, eta 0) or ``ddpm`` (ancestral).
    * ``factual_reference`` (instruct with source attributes; read by
      :func:`latentdrift.counterfactual.counterfactual_volume`): measure the edit's change against
      :meth:`factual`, the same edit asked to keep the source's attributes, instead of against the
      VAE reconstruction. What the editor changes on every pass, whatever it is asked, then cancels.
    """

    mode: Mode = "img2img"
    prompt: str | None = None
    instruction: str | None = None
    source: Attributes | None = None
    target: Attributes | None = None
    prompt_options: PromptOptions = field(default_factory=PromptOptions)
    negative_prompt: str = ""
    drift: Drift = 0.0
    drift_start: bool = False
    strength: float = 0.5
    steps: int = 50
    guidance: float = 7.5
    image_guidance: float = 1.5
    seed: int = 0
    batch_size: int = 4
    workers: int | None = None
    scheduler: SchedulerName = "ddim"
    factual_reference: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ParameterError(f"Unknown edit mode '{self.mode}': use one of {', '.join(MODES)}.")
        if self.scheduler not in SCHEDULERS:
            raise ParameterError(
                f"Scheduler '{self.scheduler}' cannot carry Latent Drift: use ddim or ddpm "
                "(the mean shift of Eq. 4 is not defined for multistep or ODE solvers)."
            )
        validate_drift(self.drift)
        self._check_numbers()
        self._check_mode()

    def _check_numbers(self) -> None:
        if not 1 <= self.steps <= 1000:
            raise ParameterError(f"steps={self.steps} is outside 1–1000: use e.g. 50.")
        if not 0 < self.strength <= 1:
            raise ParameterError(f"strength={self.strength} is outside (0, 1]: use e.g. 0.5.")
        if self.guidance < 0 or self.image_guidance < 0:
            raise ParameterError("Guidance scales must be ≥ 0: use e.g. guidance 7.5 and image guidance 1.5.")
        if self.batch_size < 1:
            raise ParameterError(f"batch_size={self.batch_size}: use 1 or more slices per batch.")
        if self.workers is not None and self.workers < 1:
            raise ParameterError(
                f"workers={self.workers}: use 1 or more, or leave it out to choose by device."
            )
        if not 0 <= self.seed < 2**63:
            raise ParameterError(f"seed={self.seed} is outside 0 to 2^63-1: use a non-negative integer.")

    def _check_mode(self) -> None:
        if self.mode == "img2img" and int(self.steps * self.strength) < 1:
            raise ParameterError(
                f"steps={self.steps} × strength={self.strength} gives no denoising step: "
                "raise steps or strength so that steps × strength ≥ 1."
            )
        if self.mode in ("generate", "img2img") and self.prompt is None and self.target is None:
            raise ParameterError(
                f"Mode {self.mode} needs a prompt or target attributes (e.g. age=77,dx=MCI)."
            )
        if (
            self.mode == "instruct"
            and self.instruction is None
            and (self.source is None or self.target is None)
        ):
            raise ParameterError("Mode instruct needs an instruction, or both source and target attributes.")
        if self.mode == "direction":
            if self.source is None or self.target is None:
                raise ParameterError(
                    "Mode direction needs both source and target attributes (e.g. dx=AD → dx=CN)."
                )
            if self.scheduler != "ddim":
                raise ParameterError("Mode direction inverts the slice with DDIM: use scheduler ddim.")
            if self.drift_start:
                raise ParameterError(
                    "drift_start does not apply to mode direction (it starts from the inverted slice): turn it off."
                )

    def factual(self) -> EditSettings | None:
        """The factual edit: instruct from the source's attributes to themselves, same noise and settings.

        None unless ``mode`` is instruct, ``factual_reference`` is on and the source attributes are known.
        """
        if self.mode != "instruct" or not self.factual_reference or self.source is None:
            return None
        return replace(self, instruction=None, target=self.source)

    def text(self) -> str:
        """The prompt (generate, img2img, direction) or instruction (instruct) this run conditions on."""
        if self.mode == "instruct":
            if self.instruction is not None:
                return self.instruction
            assert self.source is not None and self.target is not None
            return instruct(self.source, self.target, self.prompt_options.age_format)
        if self.prompt is not None:
            return self.prompt
        attributes = self.source if self.mode == "direction" else self.target
        assert attributes is not None
        return describe(attributes, self.prompt_options)
