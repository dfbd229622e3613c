"""The ground floor: errors, manifests, settings, the registry of names and the stage graph. Imports no torch,
FAISS, boto3, wandb or Prefect, so settings are checked before anything heavy loads."""
