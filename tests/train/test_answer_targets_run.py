"""A real short run whose heads learn from a table's answers (data.label_source=answers), no labels column."""

from __future__ import annotations


def test_a_run_learns_from_answers_without_a_labels_column(make_cfg):
    """MedMD-synth as any table: the label head and the warm-up train on targets made from its answers."""
    from radfm.train.builder import train_label_names
    from radfm.train.data_prep import ensure_dataset
    from radfm.train.train import train

    cfg = make_cfg("objective=[answer,label_head]", "data.label_source=answers",
                        "callbacks=[default,vision_warmup]", "callbacks.vision_warmup.steps=3")
    names = train_label_names(ensure_dataset(cfg.data), "answers")
    assert any(n.startswith("modality = ") for n in names) and any(n.startswith("finding: ") for n in names)
    metrics = train(cfg)
    assert metrics["warmup/steps"] == 3.0 and metrics["train/label_loss"] > 0
