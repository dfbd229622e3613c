"""Serve the retrieval flow from this process (alternative to a work pool and worker).

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py
"""

from flows.retrieval import retrieval_pipeline

if __name__ == "__main__":
    retrieval_pipeline.serve(name="serve", parameters={"dataset": "sample"})
