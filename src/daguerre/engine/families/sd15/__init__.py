"""Stable Diffusion 1.x: one CLIP ViT-L text encoder, 512 px native."""
