"""Where stage folders live and travel: the stage runner (cached, locked, built once), S3 objects, the shared
`s3://` root, aliases and the promotion gate, the mirror and fetching a chain by reference."""
