from daguerre.engine.families.traits import FamilyTraits

# An addition to the contract: SDXL renders up to 1536 px a side and defaults to its native 1024.
TRAITS = FamilyTraits(
    name="sdxl",
    title="Stable Diffusion XL",
    pipeline_class="StableDiffusionXLPipeline",
    min_size=128,
    max_size=1536,
    size_multiple=8,
    default_size=(1024, 1024),
    reference_pixels=1024 * 1024,
)
