"""Answering queries: an index chain loaded by reference (alias, key, folder, s3://, W&B) and searched."""
