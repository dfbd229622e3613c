"""The retrieval app: an HTTP API (FastAPI) and a Gradio UI over one lib.serving.IndexHolder."""
