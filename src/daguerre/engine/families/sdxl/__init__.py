"""Stable Diffusion XL and its descendants (Pony, Illustrious, NoobAI): two text encoders (CLIP
ViT-L and OpenCLIP ViT-bigG, the second giving a pooled embedding), 1024 px native."""
