"""The `index` stage: FAISS presets and factory strings (`factory`), `auto` selection (`auto`), the stage."""
