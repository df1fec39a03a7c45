"""Training WSI-SAM as the paper does: annotated images -> concentric crop pairs -> noisy
prompts -> the frozen-SAM loss. Cached encoder outputs make it practical on a CPU.

`datasets` reads annotated images, `sampler` plans crop pairs and rasterises objects into them,
`feature_cache` keeps encoder outputs on disk, `prompt_noise` draws prompts like a person's,
`losses` holds λ·L_high + (1 - λ)·L_low, and `trainer` runs the loop. Never imports napari.
"""
