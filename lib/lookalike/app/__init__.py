"""The retrieval app: an HTTP API (FastAPI) and a Gradio UI over one lookalike.serving.holder.IndexHolder."""
