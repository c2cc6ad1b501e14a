"""Datasets for shared_encoder_jax.

`synthetic_radiology` contains the numpy generator of the synthetic chest-scan
captions, and `synthetic_radiology_builder` registers it with TFDS.
"""
