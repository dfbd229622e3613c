"""The `embeddings` stage: vectors in resumable shards, reusing vectors earlier stages stored."""
