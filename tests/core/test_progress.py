from lookalike.core.progress import ProgressReport, listen_to_progress, progress


def test_a_short_bar_reports_each_step_and_ends_finished_at_100():
    reports: list[ProgressReport] = []
    with listen_to_progress(reports.append):
        with progress(4, "encoder: pretraining", "step", images_per_unit=32) as bar:
            for _ in range(4):
                bar.update(1)
    assert [r.percent for r in reports] == [0, 25, 50, 75, 100, 100]
    assert [r.finished for r in reports] == [False] * 5 + [True]
    assert "4/4 steps" in reports[-1].describe() and "took" in reports[-1].describe()


def test_a_long_fast_bar_reports_every_twentieth_not_every_update():
    reports: list[ProgressReport] = []
    with listen_to_progress(reports.append):
        with progress(1000, "embeddings", "img") as bar:
            for _ in range(1000):
                bar.update(1)
    assert 20 <= len(reports) <= 23  # opened, each 5 %, closed
    assert [r.done for r in reports] == sorted(r.done for r in reports) and reports[-1].percent == 100


def test_only_bars_opened_at_the_top_of_the_listening_block_report_each_numbered():
    reports: list[ProgressReport] = []
    with progress(2, "outside") as outside:
        outside.update(2)
    with listen_to_progress(reports.append):
        with progress(2, "pretraining") as bar:
            with progress(3, "probe") as probe:  # an evaluation inside pretraining
                probe.update(3)
            bar.update(2)
        with progress(1, "decoding") as bar:
            bar.set_description("decoding images")
            bar.update(1)
    with progress(2, "after") as after:
        after.update(2)
    assert {(r.bar, r.desc) for r in reports} == {(0, "pretraining"), (1, "decoding"), (1, "decoding images")}


def test_rate_and_eta_count_only_the_work_done_since_the_bar_opened():
    resumed = ProgressReport(
        bar=0,
        desc="encoder: pass 2/3",
        done=40,
        total=100,
        unit="step",
        seconds=10.0,
        initial=20,
        images_per_unit=64,
        note="loss=0.5",
    )
    assert resumed.images_per_second == 128.0 and resumed.eta_seconds == 30.0
    assert resumed.describe() == "encoder: pass 2/3 · 40/100 steps · 128 img/s · ETA 00:30 · loss=0.5"


def test_a_bar_without_a_total_reports_a_count_and_a_rate_but_no_percent_or_eta():
    """A listing cannot know its total before it ends: it reports how many and how fast, then 100 % done."""
    open_ended = ProgressReport(bar=0, desc="dataset: listing", done=5000, total=None, unit="file", seconds=2.0)
    assert open_ended.eta_seconds is None and open_ended.percent == 0.0
    assert open_ended.describe() == "dataset: listing · 5,000 files · 2.50k img/s"
    reports: list[ProgressReport] = []
    with listen_to_progress(reports.append):
        with progress(None, "dataset: listing", "file") as bar:
            for _ in range(3):
                bar.update(1000)
    assert reports[-1].done == 3000 and reports[-1].finished and reports[-1].percent == 100.0


def test_a_folder_listing_counts_its_files_as_it_walks(tmp_path):
    from lookalike.stages.dataset.listing import list_files

    for folder in ("a", "b/c"):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(3):
            (tmp_path / folder / f"{i}.png").write_bytes(b"x")
    reports: list[ProgressReport] = []
    with listen_to_progress(reports.append):
        listing = list_files(tmp_path)
    assert len(listing.files) == 6
    assert reports[-1].desc == "dataset: listing" and reports[-1].done == 6 and reports[-1].finished
