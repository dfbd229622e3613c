"""What the summary says of a distilled encoder, in the terminal, the Prefect report and W&B alike."""

from __future__ import annotations

from lookalike.reporting.summary import distillation_line

REPORT = {
    "teacher": "lookalike:teacher",
    "fraction": {"knn_accuracy": 0.9849, "precision_at_10": 0.9422, "map_at_10": None},
    "images_per_second": {"student": 8710.2, "teacher": 2237.7},
    "speedup": 3.89,
    "speed_images": 512,
}


def test_a_distilled_run_says_what_it_keeps_of_its_teacher_and_how_much_faster_it_embeds():
    assert distillation_line({"distillation": REPORT}) == (
        "distilled from lookalike:teacher: 0.985 of its kNN accuracy, 0.942 of its precision@10; "
        "3.89x its embedding speed (8710 vs 2238 images/s on 512 images)"
    )


def test_other_runs_say_nothing_of_distillation():
    assert distillation_line({"distillation": None}) is None and distillation_line({}) is None


def test_leaked_queries_are_counted_beside_the_clean_scores():
    from lookalike.reporting.summary import leaks_line

    summary = {
        "metrics": {"evaluation_protocol": "held-out:test", "knn_accuracy": 0.625, "precision_at_1": 0.625},
        "leaks": {"n_leaked": 4, "exact": 2, "near": 2, "threshold": 0.0026, "why": "0.0026: ..."},
        "clean": {"knn_accuracy": 0.25, "precision_at_1": 0.25, "n_queries": 4, "gain": {}},
    }
    assert leaks_line(summary) == (
        "4 of 8 held-out queries leak (2 exact, 2 near); clean kNN accuracy 0.2500 (raw 0.6250), "
        "precision@1 0.2500 (raw 0.6250) over 4 queries"
    )
    assert leaks_line({"metrics": {}, "leaks": None, "clean": None}) is None


def test_a_sampled_evaluation_says_on_how_many_of_the_images():
    from lookalike.reporting.summary import sample_line

    assert sample_line({"sampled": {"n": 20, "of": 48}}) == (
        "scores, baselines, leaks and map on a sample of 20 of 48 images (evaluation.sample_size); "
        "duplicates of those images in all of them"
    )
    assert sample_line({"sampled": None}) is None and sample_line({}) is None
