"""Transformer sizes by name, for configs and for benchmarks.

Kept apart from `config.py` (which needs ml_collections) so that code that
must run with only JAX, Flax and optax installed can use them, such as
`benchmarks/gpu_readiness.py`.
"""

# "paper" is ViT-B/16 with a 77-token text context
# and a 512-dimensional joint space. The small variants train on a laptop CPU
# within minutes.
MODEL_SIZES = {
    "paper": dict(image_size=224, patch_size=16, width=768, depth=12,
                  num_heads=12, mlp_dim=3072, text_context=77, embed_dim=512),
    "small": dict(image_size=64, patch_size=16, width=128, depth=4,
                  num_heads=4, mlp_dim=512, text_context=32, embed_dim=128),
    "tiny": dict(image_size=32, patch_size=8, width=32, depth=2,
                 num_heads=2, mlp_dim=64, text_context=16, embed_dim=16),
}
