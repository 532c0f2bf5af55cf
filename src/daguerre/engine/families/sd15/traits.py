from daguerre.engine.families.traits import FamilyTraits

# The contract's sizes: 128 to 896, multiples of 8.
TRAITS = FamilyTraits(
    name="sd15",
    title="Stable Diffusion 1.5",
    pipeline_class="StableDiffusionPipeline",
    min_size=128,
    max_size=896,
    size_multiple=8,
    default_size=None,
    reference_pixels=512 * 512,
)
