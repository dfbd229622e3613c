"""The Gradio UI (the only module importing gradio): image in, top-k lookalikes out."""

from __future__ import annotations

import random

from lookalike.core.extras import import_extra
from lookalike.core.filters import FilterError
from lookalike.core.names import MAX_K, TOP_K
from lookalike.serving.holder import IndexHolder, QueryError, check_k


def _header(holder: IndexHolder) -> str:
    info = holder.info()
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in info["metrics"].items() if isinstance(v, (int, float)))
    where = f"alias **{info['alias']}** → " if info["alias"] else ""
    warning = f"\n\n⚠ {info['reload_error']}" if info["reload_error"] else ""
    return (
        f"### lookalike\n{where}index `{info['index']}` · {info['ntotal']} images · {info['method']} encoder "
        f"`{info['encoder']}` · created {info['created']}\n\n{metrics}{warning}"
    )


def mount_ui(api, holder: IndexHolder, path: str = "/"):
    """`api` with the UI mounted at `path`: no share link, no analytics."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from a server
    gr = import_extra("gradio", "the retrieval app's UI")

    return gr.mount_gradio_app(api, build_ui(holder), path=path)


def build_ui(holder: IndexHolder):
    gr = import_extra("gradio", "the retrieval app's UI")

    def search(image, k, where=""):
        if image is None:
            raise gr.Error("Upload or paste an image first, or press 'Random dataset image'.")
        searcher = holder.searcher  # one searcher for the hits and their thumbnails, even if a reload swaps
        try:
            hits = searcher.neighbours(image, check_k(int(k)), where.strip() or None)
        except (QueryError, FilterError) as exc:
            raise gr.Error(str(exc)) from None
        gallery = [
            (
                searcher.image_of_row(h["row"]),
                f"row {h['row']} · d={h['distance']:.3f}" + (f" · {h['label']}" if h["label"] else ""),
            )
            for h in hits
        ]
        return gallery, _header(holder)

    def random_image():
        searcher = holder.searcher
        return searcher.image_of_row(random.choice(list(searcher.position)))

    with gr.Blocks(title="lookalike") as ui:
        header = gr.Markdown(_header(holder))
        with gr.Row():
            with gr.Column(scale=1):
                # png, not Gradio's default webp: a lossy round trip would move the query's embedding
                query = gr.Image(
                    type="pil",
                    label="Query image",
                    sources=["upload", "clipboard"],
                    height=320,
                    format="png",
                    elem_id="query",
                )
                k = gr.Slider(1, min(MAX_K, 50), value=TOP_K, step=1, label="k (neighbours)", elem_id="k")
                where = gr.Textbox(
                    label="Filter (optional)",
                    placeholder="label=Sneaker,Sandal and width>=64",
                    elem_id="filter",
                )
                with gr.Row():
                    pick = gr.Button("Random dataset image", elem_id="random")
                    go = gr.Button("Search", variant="primary", elem_id="search")
            with gr.Column(scale=2):
                results = gr.Gallery(label="Most similar", columns=5, height="auto", format="png", elem_id="results")
        pick.click(random_image, outputs=query)
        go.click(search, inputs=[query, k, where], outputs=[results, header], api_name=False)
        query.upload(search, inputs=[query, k, where], outputs=[results, header], api_name=False)
    return ui
