"""Counterfactual editing with Latent Drift: the drift δ, prompts, the edit modes (one file each, a
registry), stock diffusers pipelines run on slices, whole-volume editing and the command's workflow."""
