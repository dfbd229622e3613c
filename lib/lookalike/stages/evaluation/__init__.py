"""The `evaluation` stage: retrieval quality on held-out or leave-one-out queries, and the grid."""
