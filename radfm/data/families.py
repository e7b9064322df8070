"""Question families and their kind: the rules behind :mod:`radfm.data.profile`.

A row's family is its explicit ``meta["family"]`` when it has one; otherwise its normalised question
(:func:`normalise_question`), and question groups whose phrasings differ are merged by :func:`group_rows`
(template clustering, below). A family's kind comes from its *training* answers (:func:`decide_kind`):
``yesno``, ``closed`` (a small vocabulary: the choices) or ``open`` (free text, report-like).

Template clustering (deterministic, greedy complete linkage): question groups are taken largest first (training
rows, then all rows; ties: the shorter, then the alphabetically first text), and a family is named after its
first group; a group joins the first family all of whose groups it resembles, else it starts a family.

A table's questions are often made from templates ("would you report a * in this image", "is this image
positive for a *"); the words that fill a template's slot across questions are the table's *topics*
(:func:`template_slots`: questions that differ only in one span of at most :data:`MAX_SLOT` words, around at
least two shared words, fill one template's slot; "a"/"an"/"the" do not count). A question's topic is its
content words that fill some slot; two questions *conflict* when they fill one slot with different words ("…
the cyst …" / "… the mass …"; "the size of …" / "the location of …"). Two groups resemble each other when their
answers agree (below), they do not conflict, and
  (a) their content words (the normalised question without :data:`STOPWORDS`: function words, phrasing verbs
      such as *show*/*present*/*visible*, and image words such as *image*, *scan*, *x ray*, *ct*) overlap:
      overlap coefficient ≥ ``question_overlap`` (one set nearly inside the other) and Jaccard ≥
      ``question_jaccard`` (not one word among many); a question with no content word merges by (a) with
      nothing; or
  (b) they have the same topic: "would you report a mass in this image" and "does the patient have a mass"
      (different templates, one subject), but never "… a mass …" and "… a cyst …" (they conflict), nor "is
      there pneumonia" and "is there pneumonia in the left lung" (a narrower question: another topic); or
  (c) both are short-answer, not yes/no, each with at least two training answers, and their answer sets
      coincide (Jaccard ≥ ``answer_jaccard``): "what kind of scan is this" and "name the imaging modality" (CT, MRI, X-ray) — the answers say they
      ask one thing; "how big is the cyst" and "how big is the mass" stay apart.
Answers agree when both are free text (median answer longer than ``free_text_words`` words), or both short with
answer sets overlapping (overlap coefficient ≥ ``answer_overlap``); a group without training rows is judged on
its question alone, by (a) (test answers never decide a family).
So "Is there pneumonia?" and "Is pneumonia present in this X-ray?" (yes/no) are one family, "Is there
effusion?" another, and "What is the modality?" stays apart from both.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

YES_NO = frozenset({"yes", "no"})
HELD_OUT = ("val", "test")
SPLITS = ("train", "val", "test")

# Words that phrase a question without changing what it asks. Image and modality words are here too: "in
# this X-ray" is context, and without them "Is this an X-ray?" would look like "Is there pneumonia in this
# X-ray?". (A question made only of such words keeps its own family: it merges with nothing.)
_STOP_TEXT = """
a an the is are was were be been being am do does did can could would should will may might must shall
there here this that these those it its of in on at to for with by from into within about as and or
any some please you your we i me my our patient patients s t
what which who whom whose how where when why whether
show shows shown showing see seen visible present presence evidence evident seem seems appear appears
noted note identify identified detect detected observe observed depicted demonstrate demonstrated
image images scan scans picture pictures photo study studies exam examination film radiograph
radiography imaging x ray xray rays ct mri mr ultrasound us pet given taken used acquired
most likely probable probably possible possibly
"""
STOPWORDS = frozenset(_STOP_TEXT.split())

_TRAILING = ".,;:!?\"'` \t\r\n"
ARTICLES = frozenset({"a", "an", "the"})
MAX_SLOT = 2  # words a template's slot may hold ("pleural effusion"); longer differences are other questions


def normalise_question(text: str) -> str:
    """Lowercase, punctuation → space, whitespace collapsed: ``"Is there  Pneumonia?"`` → ``is there pneumonia``."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def surface_answer(text: str) -> str:
    """An answer as written, trimmed and without trailing punctuation (case kept): ``" Yes. "`` → ``Yes``."""
    text = " ".join(unicodedata.normalize("NFKC", str(text)).split())
    return text.strip(_TRAILING)


def normalise_answer(text: str) -> str:
    """Lowercase :func:`surface_answer`: ``"YES."``, ``"yes"`` and ``" Yes "`` are all ``yes``."""
    return surface_answer(text).lower()


def yes_index(choices: Sequence[str] | None) -> int | None:
    """The index of "yes" in ``choices`` when they are exactly yes and no (any case and punctuation), else None."""
    if not choices or len(choices) != 2:
        return None
    normal = [normalise_answer(c) for c in choices]
    return normal.index("yes") if set(normal) == YES_NO else None


def content_words(question_key: str) -> frozenset[str]:
    return frozenset(w for w in question_key.split() if w not in STOPWORDS)


@dataclass
class Row:
    """What the profiler needs of one manifest row."""

    index: int
    split: str
    question: str  # normalised
    family: str | None  # explicit, from meta["family"]
    answer: str  # normalised
    surface: str
    question_missing: bool = False
    choices: tuple[str, ...] | None = None  # the row's own closed choices, as the manifest gives them


@dataclass
class Family:
    name: str
    source: str  # "family" (explicit), "question" (one phrasing) or "merged" (clustered phrasings)
    explicit: list[str] = field(default_factory=list)  # explicit family names it holds
    questions: list[str] = field(default_factory=list)  # question keys of its rows without an explicit family
    rows: list[Row] = field(default_factory=list)

    def train_answers(self) -> Counter[str]:
        return Counter(r.answer for r in self.rows if r.split == "train")

    def split_counts(self) -> dict[str, int]:
        counts = Counter(r.split for r in self.rows)
        return {s: counts.get(s, 0) for s in SPLITS}

    def declared_choices(self) -> list[str] | None:
        """The choices every row of the family carries, when they all carry the same set (else None)."""
        sets = {frozenset(normalise_answer(c) for c in r.choices) if r.choices else None for r in self.rows}
        if len(sets) != 1 or None in sets:
            return None
        return sorted(self.rows[0].choices or ())

    def phrasings(self) -> list[str]:
        """Its normalised questions, most frequent first."""
        counts = Counter(r.question for r in self.rows)
        return [q for q, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def free_text(answers: Counter[str] | list[str], words: int) -> bool:
    items = list(answers.elements()) if isinstance(answers, Counter) else list(answers)
    return bool(items) and statistics.median(len(a.split()) for a in items) > words


def _overlap(a: frozenset[str] | set[str], b: frozenset[str] | set[str]) -> tuple[float, float]:
    """(overlap coefficient, Jaccard) of two sets."""
    if not a or not b:
        return 0.0, 0.0
    inter = len(a & b)
    return inter / min(len(a), len(b)), inter / len(a | b)


class _Group:
    def __init__(self, key: str, rows: list[Row], cfg: Any) -> None:
        self.key, self.rows = key, rows
        self.words = content_words(key)
        self.train = Counter(r.answer for r in rows if r.split == "train")
        self.free = free_text(self.train, cfg.free_text_words)
        n = sum(self.train.values())
        self.yesno = n > 0 and sum(c for a, c in self.train.items() if a in YES_NO) >= cfg.min_coverage * n
        self.topic: frozenset[str] = frozenset()
        self.slots: dict[int, frozenset[str]] = {}  # template slot → the words of this question that fill it

    def short_vocab(self) -> bool:
        """Rule (c) applies: short answers, not yes/no, at least two of them."""
        return not self.free and not self.yesno and len(self.train) >= 2

    def sort_key(self) -> tuple[int, int, int, str]:
        return -sum(self.train.values()), -len(self.rows), len(self.key), self.key

    def answers_agree(self, other: _Group, cfg: Any) -> bool:
        if not self.train or not other.train:
            return True
        if self.free or other.free:
            return self.free and other.free
        return _overlap(set(self.train), set(other.train))[0] >= cfg.answer_overlap

    def resembles(self, other: _Group, cfg: Any) -> bool:
        """Rules (a), (b), (c) of the module's docstring."""
        if not self.answers_agree(other, cfg):
            return False
        coef, jac = _overlap(self.words, other.words)
        if coef >= cfg.question_overlap and jac >= cfg.question_jaccard:
            return True
        if self.conflicts(other) or not (self.train and other.train):
            return False  # (b) and (c) stand on answers: a question never answered in training needs (a)
        if self.topic and self.topic == other.topic:
            return True
        return (self.short_vocab() and other.short_vocab()
                and _overlap(set(self.train), set(other.train))[1] >= cfg.answer_jaccard)

    def conflicts(self, other: _Group) -> bool:
        """Both fill one template slot, with different words: "… the cyst …" and "… the mass …"."""
        return any(not (words & other.slots[i]) for i, words in self.slots.items() if i in other.slots)


def template_slots(question_keys: list[str]) -> list[frozenset[str]]:
    """The content words that fill each template's slot, one set per slot (deduplicated, sorted): the span (≤
    :data:`MAX_SLOT` words) where questions that share everything else (≥ 2 words, articles aside) differ.
    ``["would you report a mass in this image", "would you report a cyst in this image"]`` → ``[{"cyst",
    "mass"}]``."""
    fills: dict[tuple[tuple[str, ...], tuple[str, ...]], set[tuple[str, ...]]] = {}
    for key in question_keys:
        toks = tuple(w for w in key.split() if w not in ARTICLES)
        for i in range(len(toks)):
            for j in range(i + 1, min(len(toks), i + MAX_SLOT) + 1):
                if len(toks) - (j - i) >= 2:
                    fills.setdefault((toks[:i], toks[j:]), set()).add(toks[i:j])
    slots = set()
    for spans in fills.values():
        if len(spans) > 1:  # words every span holds are the template's ("have" in "have a cyst / have a mass")
            shared = set.intersection(*(set(span) for span in spans))
            slots.add(frozenset(w for span in spans for w in span if w not in STOPWORDS and w not in shared))
    return sorted((s for s in slots if len(s) > 1), key=lambda s: sorted(s))


def group_rows(rows: list[Row], cfg: Any) -> list[Family]:
    """Rows → families: explicit ones, then question groups clustered (see the module's docstring)."""
    explicit: dict[str, list[Row]] = {}
    for r in rows:
        if r.family:
            explicit.setdefault(r.family, []).append(r)
    # A question asked only within one explicit family also brings that question's unlabelled rows into it.
    owners: dict[str, set[str]] = {}
    for name, fam_rows in explicit.items():
        for r in fam_rows:
            owners.setdefault(r.question, set()).add(name)
    families = {name: Family(name, "family", [name], [], list(fam_rows)) for name, fam_rows in explicit.items()}
    by_question: dict[str, list[Row]] = {}
    for r in rows:
        if r.family:
            continue
        owner = owners.get(r.question)
        if owner and len(owner) == 1:
            fam = families[next(iter(owner))]
            fam.rows.append(r)
            if r.question not in fam.questions:
                fam.questions.append(r.question)
        else:
            by_question.setdefault(r.question, []).append(r)

    groups = sorted((_Group(k, v, cfg) for k, v in by_question.items()), key=_Group.sort_key)
    slots = template_slots([g.key for g in groups])
    for g in groups:
        g.slots = {i: g.words & slot for i, slot in enumerate(slots) if g.words & slot}
        g.topic = frozenset().union(*g.slots.values())
    clusters: list[list[_Group]] = []
    # Candidates: clusters sharing a content word (rules a, b) or a short answer (rule c); resembling needs one.
    by_word: dict[str, set[int]] = {}
    by_answer: dict[str, set[int]] = {}
    for group in groups:
        answers = set(group.train) if group.short_vocab() else set()
        candidates = sorted(set().union(*(by_word.get(w, set()) for w in group.words),
                                        *(by_answer.get(a, set()) for a in answers)))
        home = next((i for i in candidates if all(group.resembles(m, cfg) for m in clusters[i])), None)
        if home is None:
            home = len(clusters)
            clusters.append([group])
        else:
            clusters[home].append(group)
        for w in group.words:
            by_word.setdefault(w, set()).add(home)
        for a in answers:
            by_answer.setdefault(a, set()).add(home)
    for cluster in clusters:
        name = cluster[0].key
        while name in families:  # a question that reads like an explicit family's name
            name += " (question)"
        fam_rows = sorted((r for g in cluster for r in g.rows), key=lambda r: r.index)
        families[name] = Family(name, "merged" if len(cluster) > 1 else "question", [],
                                sorted(g.key for g in cluster), fam_rows)
    return [families[k] for k in sorted(families)]


def canonical_forms(rows: list[Row]) -> dict[str, str]:
    """normalised answer → its most frequent written form in training (ties: the lower-case form, else the
    smallest string)."""
    forms: dict[str, Counter[str]] = {}
    for r in rows:
        if r.split == "train":
            forms.setdefault(r.answer, Counter())[r.surface] += 1
    return {a: min(c.items(), key=lambda kv: (-kv[1], kv[0] != a, kv[0]))[0] for a, c in forms.items()}


def _quote(items: list[tuple[str, int]], limit: int = 5) -> str:
    shown = ", ".join(f"'{a[:40]}' ({n})" for a, n in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def decide_kind(fam: Family, cfg: Any) -> dict[str, Any]:
    """The kind of a family from its training answers: ``{kind, choices, answers, reason, messages}``."""
    train = fam.train_answers()
    n = sum(train.values())
    canon = canonical_forms(fam.rows)
    out: dict[str, Any] = {"kind": "open", "choices": None, "answers": None, "reason": "", "messages": []}
    msgs: list[str] = out["messages"]
    if n == 0:
        out["reason"] = "no training rows"
        msgs.append("no training rows: its kind cannot be learned; left open (set it in the override file)")
        return out
    ranked = sorted(train.items(), key=lambda kv: (-kv[1], kv[0]))
    frequent = {a for a, c in train.items() if c >= cfg.min_count}
    yes_no_rows = sum(c for a, c in train.items() if a in YES_NO)
    if set(train) >= YES_NO and yes_no_rows >= cfg.min_coverage * n:
        vocab = set(YES_NO)
        canon.update(yes="yes", no="no")  # written in lower case whatever the table's case: one convention
        out.update(kind="yesno", reason="training answers are yes/no")
        rare = [a for a in sorted(YES_NO) if train[a] < cfg.min_count]
        if rare:
            msgs.append(f"'{rare[0]}' is seen only {train[rare[0]]} time(s) in training: little to learn it from")
    elif len(train) == 1 or len(frequent) == 1:
        only = ranked[0][0]
        out["reason"] = "one answer"
        extra = "" if len(train) == 1 else f"; other answers are rarer than {cfg.min_count}: {_quote(ranked[1:])}"
        msgs.append(f"one answer ('{canon.get(only, only)[:40]}' in {train[only]} of {n} training rows): nothing "
                    f"to choose; left open{extra}")
        return out
    else:
        covered = sum(train[a] for a in frequent)
        if len(frequent) > cfg.max_choices:
            out["reason"] = f"{len(frequent)} frequent answers (more than {cfg.max_choices})"
            return out
        if covered < cfg.min_coverage * n:
            out["reason"] = (f"free text: {len(train)} distinct answers in {n} training rows; answers seen "
                             f"{cfg.min_count}+ times cover {covered / n:.0%}")
            return out
        vocab = frequent
        out.update(kind="closed", reason=f"{len(vocab)} answers cover {covered / n:.0%} of training rows")
    outside = [(canon.get(a, a), c) for a, c in ranked if a not in vocab]
    if outside:
        msgs.append(f"{sum(c for _, c in outside)} training row(s) answer outside the choices (rarer than "
                    f"{cfg.min_count}, or not yes/no): {_quote(outside)}")
    out["choices"] = sorted((canon[a] for a in vocab), key=lambda c: (c.lower(), c))
    out["answers"] = {canon[a]: train[a] for a in sorted(vocab, key=lambda a: canon[a])}
    variants = Counter((r.surface, canon[r.answer]) for r in fam.rows
                       if r.answer in vocab and r.surface != canon[r.answer])
    if variants:
        shown = ", ".join(f"'{s[:20]}' → '{c[:20]}'" for (s, c), _ in sorted(variants.items())[:4])
        msgs.append(f"{sum(variants.values())} answer(s) differ from their choice in case or punctuation, "
                    f"normalised: {shown}")
    held_out_check(fam, vocab, canon, cfg, out)
    return out


def held_out_check(fam: Family, vocab: set[str], canon: dict[str, str], cfg: Any, out: dict[str, Any],
                   forced: bool = False) -> None:
    """Val/test answers never seen in training: named; when more than ``max_unseen`` of the val/test rows (and
    at least ``min_count`` rows: one odd test row is no evidence) are unseen, the family turns open, unless an
    override forced its kind."""
    held = [r for r in fam.rows if r.split in HELD_OUT]
    unseen = [r for r in held if r.answer not in vocab]
    if not unseen:
        return
    per_split = Counter(r.split for r in unseen)
    where = ", ".join(f"{per_split[s]} {s}" for s in HELD_OUT if per_split[s])
    answers = sorted(Counter(r.surface for r in unseen).items(), key=lambda kv: (-kv[1], kv[0]))
    share = len(unseen) / len(held)
    if share > cfg.max_unseen and len(unseen) >= cfg.min_count and not forced:
        out.update(kind="open", choices=None, answers=None,
                   reason=f"{share:.0%} of val/test answers were never seen in training")
        out["messages"].append(f"{where} row(s) ({share:.0%} of val/test) answer what training never did: "
                               f"{_quote(answers)}; more than {cfg.max_unseen:.0%}, so left open")
    else:
        out["messages"].append(f"{where} row(s) answer what training never did: {_quote(answers)}; kept closed "
                               "with the training choices (those rows cannot be answered right)")
