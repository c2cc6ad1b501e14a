"""TFDS builders for local copies of image-caption datasets.

Importing a module registers its builder with TFDS under the module's name.
"""
