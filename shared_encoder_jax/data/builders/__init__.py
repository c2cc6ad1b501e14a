"""TFDS builders for local copies of image-caption datasets.

Importing a module registers its builder with TFDS under the module's name.
"""

# Modules that define the TFDS builders this package ships, by dataset name.
# Importing a module registers its builder with TFDS.
BUILDER_MODULES = {
    "synthetic_radiology":
        "shared_encoder_jax.data.synthetic_radiology_builder",
    "image_text_folder":
        "shared_encoder_jax.data.builders.image_text_folder",
    "pmc_oa": "shared_encoder_jax.data.builders.pmc_oa",
    "roco": "shared_encoder_jax.data.builders.roco",
    "roco_v2": "shared_encoder_jax.data.builders.roco",
    "mimic_cxr": "shared_encoder_jax.data.builders.mimic_cxr",
    "quilt_1m": "shared_encoder_jax.data.builders.quilt_1m",
    "deepeyenet": "shared_encoder_jax.data.builders.deepeyenet",
    "dicom_studies": "shared_encoder_jax.data.builders.dicom_studies",
}
