"""Fine-tuning on local cohorts as background jobs, with Latent Drift, on 🤗 Accelerate.

* :mod:`.cohorts` — cohort CSV/folder → validated, cached slices; longitudinal pairs; subject split.
* :mod:`.config` — :class:`FinetuneConfig` (a job's ``config.json``).
* :mod:`.parts` — what the loop works on (modules, examples, a batch), shared by loop, schemes and sampling.
* :mod:`.schemes` — basic, LoRA, textual inversion, DreamBooth, Custom Diffusion, InstructPix2Pix.
* :mod:`.loop` — the one shared training loop (the drift enters in :func:`.loop.noisy_latents`).
* :mod:`.checkpoints` — atomic checkpoints, resume from the last good one.
* :mod:`.drift_search` — choosing δ by an L1 distance to the cohort.
* :mod:`.jobs` — job folders and their processes (start, status, cancel, resume, list).
* :mod:`.batch` — batch segmentation / counterfactuals over a cohort.

Heavy modules (torch, diffusers) load only when those submodules are imported.
"""

SCHEMES = (
    "basic",
    "lora",
    "textual-inversion",
    "dreambooth",
    "custom-diffusion",
    "instruct-pix2pix",
    "ldseg",
)
"""The fine-tuning schemes (here, not in :mod:`.config`, so the console can list them without torch)."""
