"""The `encoder` stage: SSL methods (one module each), backbones, the two trainers and the checkpoint format."""
