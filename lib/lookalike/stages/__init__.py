"""One package per stage of the graph (dataset, encoder, embeddings, index, evaluation), each with its
`run_<stage>_stage`, and the one inference path they and serving share (`inference.Embedder`)."""
