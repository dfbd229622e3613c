"""Loading image collections and snapshotting them into the `dataset` stage."""
