"""Normalisation shared by training transforms, embedding and serving."""

IMAGENET_NORMALIZE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
