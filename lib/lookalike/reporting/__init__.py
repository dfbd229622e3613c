"""What a run reports: the summary (CLI, Prefect, W&B share it) and W&B lineage and artifacts."""
