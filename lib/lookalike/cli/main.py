"""`lookalike`: the command line, a shell over the same lib calls as the Prefect flow.

lookalike run      build (or reuse) the index for the current settings and summarise it
lookalike reindex index new images with the production encoder (no pretraining)
lookalike query    images, folders or dataset rows in, top-k most similar rows out (JSON Lines for many)
lookalike ls       the built indexes with their scores, baselines and aliases (--history: alias moves)
lookalike duplicates  exact (same bytes) and near-duplicate (within a calibrated distance) groups
lookalike promote  point production at an index by hand; `rollback` moves it back
lookalike serve    the retrieval app (Gradio UI + HTTP API) on the production index
lookalike notify   tell a Prefect server new images arrived: its `reindex` deployment's trigger runs
lookalike gc       list (--delete: remove) the shared dataset parts no kept dataset version uses

Each command lives in its own module; this one registers them on the app (`lookalike.cli.app`).
"""

from __future__ import annotations

from lookalike.cli import aliases, duplicates, gc, notify, pipeline, query, serve
from lookalike.cli.app import app

# in the order `lookalike --help` lists them
app.command()(pipeline.run)
app.command()(pipeline.reindex)
app.command()(aliases.promote)
app.command()(aliases.rollback)
app.command("ls")(aliases.list_indexes)
app.command()(gc.gc)
app.command()(query.query)
app.command()(duplicates.duplicates)
app.command()(serve.serve)
app.command()(notify.notify)

__all__ = ["app"]

if __name__ == "__main__":
    app()
