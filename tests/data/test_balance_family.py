"""``data.balance=family``: batches balanced on each image's answer to the table's most-asked closed question."""

from __future__ import annotations

from collections import Counter

from radfm.data.answer_targets import answer_targets, image_key, primary_classes
from radfm.data.config import DataConfig
from radfm.data.manifest import ImageRef, Sample
from radfm.data.sampler import ModalityBatchSampler


def _row(i: str, image: str, question: str, answer: str, choices, family: str) -> Sample:
    return Sample(id=i, task="vqa", split="train", question=question, answer=answer, choices=choices,
                  images=[ImageRef(path=image, kind="2d")], meta={"family": family})


MODALITY = ["CT", "MRI", "Ultrasound"]


def _table() -> list[Sample]:
    """10 images: modality asked of 9 (CT ×6, MRI ×2, Ultrasound ×1), a yes/no asked of 3 (a rarer answer
    there must not decide the class), and one image asked only the yes/no question."""
    rows = []
    for i, answer in enumerate(["CT"] * 6 + ["MRI"] * 2 + ["Ultrasound"]):
        rows.append(_row(f"m{i}", f"{i}.png", "What is the modality?", answer, MODALITY, "modality"))
    for i, answer in [(0, "yes"), (1, "no"), (9, "no")]:
        rows.append(_row(f"y{i}", f"{i}.png", "Is there a cyst?", answer, ["yes", "no"], "cyst"))
    return rows


def test_each_image_is_classed_by_its_answer_to_the_most_asked_question():
    rows = _table()
    keys = [((f"{i}.png", "2d"),) for i in range(10)]  # image_key of a row about image i
    classes = primary_classes(answer_targets(rows), keys)
    assert classes == ["ct"] * 6 + ["mri"] * 2 + ["ultrasound", ""]  # image 9 was not asked the modality


def test_a_yes_no_question_asked_most_gives_yes_and_no_classes():
    rows = [_row(f"p{i}", f"{i}.png", "Is there pneumonia?", a, ["yes", "no"], "pneumonia")
            for i, a in enumerate(["yes"] * 9 + ["no"])]
    keys = [image_key(r) for r in rows]
    assert primary_classes(answer_targets(rows), keys) == ["yes"] * 9 + ["no"]
    assert primary_classes({}, keys) == [""] * 10  # no closed question: one class, no balancing


def test_the_balanced_sampler_draws_the_rare_modality_as_often_as_the_common_one():
    rows = _table()
    keys = [((f"{i}.png", "2d"),) for i in range(10)]  # image_key of a row about image i
    classes = primary_classes(answer_targets(rows), keys)
    sampler = ModalityBatchSampler([False] * 10, 4, 2, seed=0, classes=classes)
    drawn = Counter(classes[i] for batch in sampler for i, _ in batch)
    assert drawn == {"ct": 6, "mri": 6, "ultrasound": 6, "": 6}
    assert DataConfig(balance="family").balance == "family"


def test_the_datamodule_balances_a_real_manifest_on_its_most_asked_question(tmp_path, tiny_cfg):
    from radfm.data.cache import TensorCache
    from radfm.data.datamodule import RadFMDataModule
    from radfm.data.manifest import read_manifest
    from radfm.data.synth import SynthConfig, generate
    from radfm.data.transforms import TransformConfig
    from radfm.model import factory

    root = tmp_path / "synth"
    generate(SynthConfig(n_samples=40, seed=3), root)
    samples = read_manifest(root / "manifest.jsonl")
    tokenizer = factory.build_tokenizer(tiny_cfg, [t for s in samples for t in (s.question, s.answer)])
    cfg = DataConfig(manifest=str(root / "manifest.jsonl"), root=str(root), batch_size_2d=4, batch_size_3d=2,
                     transform=TransformConfig(image_size=32), balance="family")
    dm = RadFMDataModule(cfg, tokenizer, cache=TensorCache(tmp_path / "cache"))
    dm.setup()
    train = dm.splits["train"]
    classes = primary_classes(dm.targets["train"], [image_key(s) for s in train])
    assert len(set(classes)) >= 2  # the most-asked question has several answers here
    drawn = Counter(classes[i] for batch in dm.train_dataloader().batch_sampler for i, _ in batch)
    per_modality = Counter()  # the sampler balances within 2D and within 3D, each to its largest class
    for flag in (False, True):
        group = Counter(c for c, s in zip(classes, train) if s.is_3d == flag)
        if len(group) > 1:
            per_modality.update({c: max(group.values()) for c in group})
        else:
            per_modality.update(group)
    assert drawn == per_modality
