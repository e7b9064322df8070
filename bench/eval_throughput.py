"""Evaluation-throughput benchmark (not a test): what RadBench costs on this machine.

    python bench/eval_throughput.py [--presets tiny,small] [--repeats 3] [--metric-samples 10000]
                                    [--checkpoint DIR] [--no-embedding] [--json PATH] [--quick]

1. Free generation: new tokens/s and samples/s of ``RadFMModel.generate`` (greedy, KV cache) for batches of
   1, 8 and 32 on the ``tiny`` and ``small`` presets. Prompts are MedMD-synth open questions (reports,
   diagnoses, locations) with their 2D image at the preset's size, left-padded as ``predict`` pads them;
   images are loaded before the clock starts, so the time is the model's (image encoding + prefill + decode).
   EOS is an image token, which ``generate`` suppresses, so every row runs exactly ``max_new_tokens``.
2. KV cache vs ``generate(use_cache=False)`` (the library's full-recompute loop), back to back, same tokens.
3. Closed questions (modality, 4 choices; yes/no): ``predict`` ranking the candidates by likelihood (the
   RadBench path) against ``predict`` generating the answer freely (choices removed, short max_new_tokens),
   on the same samples, end to end (image loading included): time per sample and agreement of the answers.
4. Metrics: ``radbench.summarise`` (tasks + families, one system) over 10,000 predictions built from
   MedMD-synth rows, timed per group; the MiniLM embedding similarity is timed on its own (it is ~100× slower
   per text than the rest) and its cost inside ``summarise`` is projected from the texts it would encode.

Models are random-initialised (``--checkpoint`` loads a trained one instead): speed does not depend on the
weights except through EOS, which the throughput runs never let fire. Every timing is a warm-up and then
``--repeats`` runs; the table shows the median (best in brackets) and how many cores other processes kept
busy, because the reference machine is a shared 2-core VM.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import BackgroundLoad, QuietWait, fmt_table, machine_info, peak_rss_mb  # noqa: E402

PRESETS = ("tiny", "small")
BATCHES = (1, 8, 32)
NEW_TOKENS = 32
# small at batch 32 is the one run that could take minutes on a contended box: fewer tokens bound it.
NEW_TOKENS_OVERRIDE = {("small", 32): 16}
CACHE_COMPARE = {"tiny": 8, "small": 1}  # batch for KV cache vs recompute: no-cache small B8 takes ~1 min
CLOSED_FAMILIES = ("modality", "yesno")
CLOSED_PER_FAMILY = 16
CLOSED_NEW_TOKENS = 8  # free answers to closed questions are 1–3 tokens; 8 leaves room, EOS stops a trained model
EVAL_BATCH = 16  # EvalConfig.batch_size's default
EMBED_PAIRS = 256  # score_group's cap on embedding pairs per group
SYNTH_IMAGES = 40  # images of MedMD-synth per preset; about 8 rows (questions) each


# ---- inputs ----------------------------------------------------------------------------------------------
def make_synth(root: Path, image_size: int) -> tuple[list[Any], Path]:
    """A small MedMD-synth set at the preset's image size: (all samples, data root)."""
    from radfm.data.manifest import read_manifest
    from radfm.data.synth import SynthConfig, generate

    out = root / f"synth{image_size}"
    manifest = generate(SynthConfig(n_samples=SYNTH_IMAGES, image_size=image_size, seed=0), out)
    return read_manifest(manifest), out


def build(name: str, checkpoint: str | None) -> tuple[Any, Any]:
    """(model, tokenizer): a trained checkpoint, or the preset with random weights and the shipped BPE."""
    from radfm.model import factory, presets
    from radfm.model.checkpoint import load_pretrained

    if checkpoint:
        return load_pretrained(checkpoint)
    torch.manual_seed(0)
    cfg = presets.preset(name)
    tokenizer = factory.build_tokenizer(cfg)
    return factory.build_model(cfg, tokenizer).eval(), tokenizer


def dataset(model: Any, tokenizer: Any, samples: Sequence[Any], root: Path) -> Any:
    from radfm.data.datamodule import RadFMDataset
    from radfm.data.transforms import TransformConfig

    return RadFMDataset(samples, root, tokenizer, TransformConfig(image_size=model.cfg.vision.image_size),
                        train=False)


def prompt_batch(tokenizer: Any, ds: Any, samples: Sequence[Any], batch: int) -> dict[str, Any]:
    """The first ``batch`` open 2D questions (repeated if there are fewer), encoded and left-padded."""
    pool = [s for s in samples if not s.choices and s.images[0].kind == "2d"]
    chosen = [pool[i % len(pool)] for i in range(batch)]
    encs, images = [], []
    for s in chosen:
        enc = tokenizer.format_prompt(s.question, None, [ref.position for ref in s.images])
        encs.append(enc)
        imgs = ds.load_images(s)
        images += [imgs[k] for k in enc.image_order]
    padded = tokenizer.pad(encs, side="left")
    return {**padded, "images": images, "prompt_tokens": statistics.mean(len(e.input_ids) for e in encs),
            "image_shape": list(images[0].shape)}


# ---- timing ------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any], quiet: QuietWait) -> tuple[float, float, Any]:
    """(seconds, others' cores meanwhile, result) of one call, after waiting briefly for a quiet CPU."""
    quiet()
    with BackgroundLoad() as load:
        t = time.perf_counter()
        out = fn()
        s = time.perf_counter() - t
    return s, load.cores, out


def stats(times: Sequence[float], cores: Sequence[float]) -> dict[str, Any]:
    return {"runs_s": list(times), "median_s": statistics.median(times), "best_s": min(times),
            "others_cores": list(cores), "others_cores_max": max(cores) if cores else float("nan")}


def bench_generation(name: str, model: Any, tokenizer: Any, ds: Any, samples: Sequence[Any],
                     batches: Sequence[int], new_tokens: int, repeats: int, quiet: QuietWait) -> list[dict]:
    never = model.suppress_ids[0]  # suppressed image token as EOS: every row runs the full length
    rows = []
    for b in batches:
        n = NEW_TOKENS_OVERRIDE.get((name, b), new_tokens)
        p = prompt_batch(tokenizer, ds, samples, b)

        def run(k: int, p: dict[str, Any] = p) -> torch.Tensor:
            return model.generate(p["input_ids"], p["attention_mask"], p["images"], max_new_tokens=k,
                                  eos_token_id=never, pad_token_id=tokenizer.pad_id)

        run(2)  # warm-up: first-call allocation and kernel selection stay out of the timing
        times, cores = [], []
        for _ in range(repeats):
            s, c, out = timed(lambda n=n: run(n), quiet)
            if tuple(out.shape) != (b, n):
                raise RuntimeError(f"{name} B{b}: generated {tuple(out.shape)}, expected {(b, n)}")
            times.append(s)
            cores.append(c)
        st = stats(times, cores)
        rows.append({"preset": name, "batch": b, "new_tokens": n, "prompt_tokens_mean": p["prompt_tokens"],
                     "image_shape": p["image_shape"], **st,
                     "samples_per_s": b / st["median_s"], "new_tokens_per_s": b * n / st["median_s"],
                     "samples_per_s_best": b / st["best_s"], "new_tokens_per_s_best": b * n / st["best_s"]})
        print(f"[{name}] generate B{b} x {n} new: {st['median_s']:.3f} s median, "
              f"{b * n / st['median_s']:.0f} tok/s", flush=True)
    return rows


def bench_cache(name: str, model: Any, tokenizer: Any, ds: Any, samples: Sequence[Any], batch: int,
                new_tokens: int, repeats: int, quiet: QuietWait) -> dict[str, Any]:
    """``generate`` with and without the KV cache, interleaved so both see the same neighbours."""
    never = model.suppress_ids[0]
    p = prompt_batch(tokenizer, ds, samples, batch)
    variants = {flag: (lambda k, flag=flag: model.generate(
        p["input_ids"], p["attention_mask"], p["images"], max_new_tokens=k, eos_token_id=never,
        pad_token_id=tokenizer.pad_id, use_cache=flag)) for flag in (True, False)}
    for fn in variants.values():
        fn(2)
    times: dict[bool, list[float]] = {True: [], False: []}
    cores: dict[bool, list[float]] = {True: [], False: []}
    tokens: dict[bool, torch.Tensor] = {}
    for _ in range(repeats):
        for flag, fn in variants.items():
            s, c, tokens[flag] = timed(lambda fn=fn: fn(new_tokens), quiet)
            times[flag].append(s)
            cores[flag].append(c)
    cache, nocache = stats(times[True], cores[True]), stats(times[False], cores[False])
    row = {"preset": name, "batch": batch, "new_tokens": new_tokens, "cache": cache, "no_cache": nocache,
           "speedup_median": nocache["median_s"] / cache["median_s"], "speedup_best": nocache["best_s"] / cache["best_s"],
           "same_tokens": bool(torch.equal(tokens[True], tokens[False]))}
    print(f"[{name}] KV cache vs recompute B{batch}: {row['speedup_median']:.2f}x, same tokens "
          f"{row['same_tokens']}", flush=True)
    return row


def _norm(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def bench_closed(name: str, model: Any, tokenizer: Any, ds: Any, samples: Sequence[Any], per_family: int,
                 repeats: int, quiet: QuietWait) -> dict[str, Any]:
    """Candidate ranking vs free generation on the same closed questions, through ``predict`` end to end."""
    from radfm.eval.predict import predict

    closed = [s for fam in CLOSED_FAMILIES
              for s in [s for s in samples if (s.meta or {}).get("family") == fam and s.choices][:per_family]]
    free = [s.model_copy(update={"choices": None}) for s in closed]
    rank_fn = lambda items: predict(model, tokenizer, items, ds, EVAL_BATCH)  # noqa: E731
    gen_fn = lambda items: predict(model, tokenizer, items, ds, EVAL_BATCH, CLOSED_NEW_TOKENS)  # noqa: E731
    rank_fn(closed[:2])  # warm-up both paths
    gen_fn(free[:2])
    times: dict[str, list[float]] = {"ranking": [], "generation": []}
    cores: dict[str, list[float]] = {"ranking": [], "generation": []}
    answers: dict[str, list[Any]] = {}
    for _ in range(repeats):
        for key, fn, items in (("ranking", rank_fn, closed), ("generation", gen_fn, free)):
            s, c, answers[key] = timed(lambda fn=fn, items=items: fn(items), quiet)
            times[key].append(s)
            cores[key].append(c)
    n = len(closed)
    ranked = [_norm(p.text) for p in answers["ranking"]]
    generated = [_norm(p.text) for p in answers["generation"]]
    gold = [_norm(s.answer) for s in closed]
    valid = [g in {_norm(c) for c in s.choices} for g, s in zip(generated, closed)]
    res: dict[str, Any] = {
        "preset": name, "n": n, "families": {f: sum((s.meta or {}).get("family") == f for s in closed)
                                             for f in CLOSED_FAMILIES},
        "candidate_rows": sum(len(s.choices) for s in closed), "max_new_tokens": CLOSED_NEW_TOKENS,
        "batch_size": EVAL_BATCH,
        "ranking": stats(times["ranking"], cores["ranking"]), "generation": stats(times["generation"], cores["generation"]),
        "agreement": sum(a == b for a, b in zip(ranked, generated)) / n,
        "generation_valid_choice": sum(valid) / n,
        "accuracy_ranking": sum(a == g for a, g in zip(ranked, gold)) / n,
        "accuracy_generation": sum(a == g for a, g in zip(generated, gold)) / n,
        "examples": [{"question": s.question, "ranked": r, "generated": g} for s, r, g in
                     list(zip(closed, ranked, generated))[:: max(n // 4, 1)]],
    }
    for key in ("ranking", "generation"):
        res[key]["ms_per_sample_median"] = 1e3 * res[key]["median_s"] / n
        res[key]["ms_per_sample_best"] = 1e3 * res[key]["best_s"] / n
    res["ranking_over_generation"] = res["ranking"]["median_s"] / res["generation"]["median_s"]
    print(f"[{name}] closed questions: ranking {res['ranking']['ms_per_sample_median']:.1f} ms/sample, "
          f"generation {res['generation']['ms_per_sample_median']:.1f} ms/sample, "
          f"agreement {res['agreement']:.0%}", flush=True)
    return res


# ---- metrics -------------------------------------------------------------------------------------------------
def metric_inputs(base: Sequence[Any], n: int, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """``n`` samples tiled from MedMD-synth rows, with predictions of a plausible, imperfect model: closed
    answers right 70% of the time (with a probability for each choice), open answers and reports either the
    reference or another row's answer of the same family, so no metric sees only exact matches."""
    from radfm.eval.baselines import family
    from radfm.eval.predict import Prediction

    rng = random.Random(seed)
    by_family: dict[str, list[str]] = {}
    for s in base:
        by_family.setdefault(family(s), []).append(s.answer)
    samples, preds = [], []
    for i in range(n):
        s = base[i % len(base)].model_copy(update={"id": f"{base[i % len(base)].id}-{i}"})
        samples.append(s)
        if s.choices:
            text = s.answer if rng.random() < 0.7 else rng.choice(s.choices)
            w = {c: rng.random() + (2.0 if c == text else 0.0) for c in s.choices}
            total = sum(w.values())
            preds.append(Prediction(text, {c: v / total for c, v in w.items()}))
        else:
            text = s.answer if rng.random() < 0.5 else rng.choice(by_family[family(s)])
            preds.append(Prediction(text))
    return samples, preds


def bench_metrics(base: Sequence[Any], n: int, embedding: bool, quiet: QuietWait) -> dict[str, Any]:
    """``summarise`` for one system without the embedding model, per group and in full; the embedding
    similarity timed on its own and projected onto the texts ``summarise`` would send it."""
    import radfm.eval.embedding as E
    from radfm.eval import radbench

    samples, preds = metric_inputs(base, n)
    # The groups summarise scores at its "tasks" level (each family split by open/closed); the "families"
    # level scores the same groups again.
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(f"{s.task}/{radbench.family(s)}{'' if s.choices else ' (open)'}", []).append(i)
    for idx in groups.values():  # warm-up: lazy imports (sacrebleu, rouge), the clinical-term regex
        radbench.score_group([samples[idx[0]]], [preds[idx[0]]], embedding=False)
    per_group = {}
    for key, idx in sorted(groups.items()):
        quiet()
        t = time.perf_counter()
        radbench.score_group([samples[i] for i in idx], [preds[i] for i in idx], embedding=False)
        per_group[key] = {"n": len(idx), "s": time.perf_counter() - t}
    s, c, _ = timed(lambda: radbench.summarise(samples, {"model": preds}, embedding=False), quiet)
    res: dict[str, Any] = {"n": n, "groups": per_group, "summarise_s": s, "summarise_others_cores": c,
                           "groups_sum_s": sum(g["s"] for g in per_group.values())}
    print(f"[metrics] summarise over {n} samples (no embedding): {s:.2f} s", flush=True)

    # Count what summarise(embedding=True) would encode, without encoding it.
    sent: list[int] = []
    real = E.embedding_similarity

    def counting(p: Sequence[str], r: Sequence[str], *args: Any, **kwargs: Any) -> float:
        sent.append(len(dict.fromkeys([*p, *r])))
        return 0.0

    E.embedding_similarity = counting
    try:
        radbench.summarise(samples, {"model": preds}, embedding=True)
    finally:
        E.embedding_similarity = real
    res["embedding_calls"] = len(sent)
    res["embedding_texts"] = sum(sent)
    if not embedding:
        return res
    try:
        t = time.perf_counter()
        E.load_encoder(None)
        res["embedding_load_s"] = time.perf_counter() - t
    except RuntimeError as err:
        res["embedding_error"] = str(err)
        print(f"[metrics] embedding model unavailable: {err}", flush=True)
        return res
    reports = [i for i, s in enumerate(samples) if s.task == "report"][:EMBED_PAIRS]
    p_texts, r_texts = [preds[i].text for i in reports], [samples[i].answer for i in reports]
    E.embedding_similarity(p_texts[:8], r_texts[:8])  # warm-up
    s, c, _ = timed(lambda: E.embedding_similarity(p_texts, r_texts), quiet)
    distinct = len(dict.fromkeys([*p_texts, *r_texts]))
    res.update(embedding_pairs=len(reports), embedding_distinct_texts=distinct, embedding_s=s,
               embedding_others_cores=c, embedding_texts_per_s=distinct / s,
               embedding_projected_s=res["embedding_texts"] / (distinct / s))
    print(f"[metrics] MiniLM: {distinct} texts in {s:.1f} s ({distinct / s:.0f} texts/s); summarise would "
          f"encode {res['embedding_texts']} texts in {res['embedding_calls']} calls "
          f"≈ {res['embedding_projected_s']:.0f} s", flush=True)
    return res


# ---- report ----------------------------------------------------------------------------------------------------
def report(results: dict[str, Any]) -> str:
    out: list[str] = []
    m = results["meta"]
    out.append(f"{m['cpu']}, {m['nproc']} CPUs, torch {m['torch']} ({m['torch_threads']} threads); "
               f"weights: {m['weights']}; median (best) of {m['repeats']} runs after a warm-up")
    rows = []
    for r in results["generation"]:
        rows.append([r["preset"], str(r["batch"]), "x".join(map(str, r["image_shape"][1:])),
                     f"{r['prompt_tokens_mean']:.0f}", str(r["new_tokens"]),
                     f"{r['median_s']:.3f} ({r['best_s']:.3f})",
                     f"{r['samples_per_s']:.2f} ({r['samples_per_s_best']:.2f})",
                     f"{r['new_tokens_per_s']:.0f} ({r['new_tokens_per_s_best']:.0f})",
                     f"{r['others_cores_max']:.1f}"])
    out += ["", "Free generation (greedy, KV cache; image encoding + prefill + decode; EOS suppressed)",
            fmt_table(["preset", "batch", "image", "prompt tok", "new tok", "s/batch", "samples/s", "new tok/s",
                       "others' cores"], rows)]
    rows = []
    for r in results["cache"]:
        c, n = r["cache"], r["no_cache"]
        rows.append([r["preset"], str(r["batch"]), str(r["new_tokens"]), f"{c['median_s']:.3f}",
                     f"{n['median_s']:.3f}", f"{r['speedup_median']:.2f}x ({r['speedup_best']:.2f}x)",
                     "yes" if r["same_tokens"] else "NO",
                     f"{max(c['others_cores_max'], n['others_cores_max']):.1f}"])
    out += ["", "KV cache vs generate(use_cache=False) (full recompute every token), interleaved",
            fmt_table(["preset", "batch", "new tok", "cache s", "no cache s", "speed-up", "same tokens",
                       "others' cores"], rows)]
    rows = []
    for r in results["closed"]:
        rk, g = r["ranking"], r["generation"]
        rows.append([r["preset"], f"{r['n']} ({r['candidate_rows']} rows)",
                     f"{rk['ms_per_sample_median']:.1f} ({rk['ms_per_sample_best']:.1f})",
                     f"{g['ms_per_sample_median']:.1f} ({g['ms_per_sample_best']:.1f})",
                     f"{r['ranking_over_generation']:.2f}x", f"{r['agreement']:.0%}",
                     f"{r['generation_valid_choice']:.0%}",
                     f"{r['accuracy_ranking']:.0%} / {r['accuracy_generation']:.0%}",
                     f"{max(rk['others_cores_max'], g['others_cores_max']):.1f}"])
    out += ["", f"Closed questions ({' + '.join(CLOSED_FAMILIES)}): predict() ranking candidates vs generating "
            f"(max {CLOSED_NEW_TOKENS} new tokens), batch {EVAL_BATCH}, images loaded from disk",
            fmt_table(["preset", "questions", "ranking ms/q", "generation ms/q", "rank/gen", "agree",
                       "gen in choices", "acc rank / gen", "others' cores"], rows)]
    mt = results["metrics"]
    rows = [[k, str(g["n"]), f"{g['s']:.3f}", f"{1e6 * g['s'] / g['n']:.0f}"] for k, g in mt["groups"].items()]
    rows.append(["all groups once", str(mt["n"]), f"{mt['groups_sum_s']:.2f}",
                 f"{1e6 * mt['groups_sum_s'] / mt['n']:.0f}"])
    rows.append(["summarise (tasks + families)", str(mt["n"]), f"{mt['summarise_s']:.2f}",
                 f"{1e6 * mt['summarise_s'] / mt['n']:.0f}"])
    out += ["", f"Metrics, one system, embedding similarity off (others' cores during summarise "
            f"{mt['summarise_others_cores']:.1f})", fmt_table(["group", "n", "s", "µs/sample"], rows)]
    if "embedding_texts_per_s" in mt:
        out.append(f"MiniLM embedding similarity: load {mt['embedding_load_s']:.1f} s; "
                   f"{mt['embedding_distinct_texts']} texts ({mt['embedding_pairs']} report pairs) in "
                   f"{mt['embedding_s']:.1f} s = {mt['embedding_texts_per_s']:.0f} texts/s (others' cores "
                   f"{mt['embedding_others_cores']:.1f}); summarise(embedding=True) would encode "
                   f"{mt['embedding_texts']} texts in {mt['embedding_calls']} calls ≈ "
                   f"{mt['embedding_projected_s']:.0f} s more")
    else:
        out.append(f"MiniLM embedding similarity not timed ({mt.get('embedding_error', 'off')}); "
                   f"summarise(embedding=True) would encode {mt['embedding_texts']} texts in "
                   f"{mt['embedding_calls']} calls")
    return "\n".join(out)


# ---- entry point ---------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default=None, help=f"comma-separated (default {','.join(PRESETS)}; --quick tiny)")
    p.add_argument("--batches", default=None, help="generation batch sizes (default 1,8,32; --quick 1,4)")
    p.add_argument("--new-tokens", type=int, default=None, help=f"(default {NEW_TOKENS}; --quick 4)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 3; --quick 1)")
    p.add_argument("--metric-samples", type=int, default=None, help="(default 10000; --quick 300)")
    p.add_argument("--closed-per-family", type=int, default=None,
                   help=f"closed questions per family (default {CLOSED_PER_FAMILY}; --quick 2)")
    p.add_argument("--checkpoint", default=None, help="a radfm checkpoint directory (one model, all sections)")
    p.add_argument("--no-embedding", action="store_true", help="do not load/time the MiniLM encoder")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="seconds in all it may wait for other processes to leave the CPUs (default 30; --quick 0)")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "eval_throughput.json"))
    p.add_argument("--quick", action="store_true", help="smoke run: tiny, small batches, few tokens (~15 s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    q = args.quick
    names = [n for n in (args.presets or ("tiny" if q else ",".join(PRESETS))).split(",") if n]
    batches = [int(b) for b in (args.batches or ("1,4" if q else ",".join(map(str, BATCHES)))).split(",")]
    new_tokens = args.new_tokens or (4 if q else NEW_TOKENS)
    repeats = args.repeats or (1 if q else 3)
    n_metric = args.metric_samples or (300 if q else 10_000)
    per_family = args.closed_per_family or (2 if q else CLOSED_PER_FAMILY)
    quiet = QuietWait(args.quiet_wait if args.quiet_wait is not None else (0.0 if q else 30.0))
    torch.set_num_threads(os.cpu_count() or 1)
    meta = machine_info(("torch", "transformers", "sentence_transformers"))
    meta.update(presets=names, batches=batches, new_tokens=new_tokens, new_tokens_override=
                {f"{k[0]} B{k[1]}": v for k, v in NEW_TOKENS_OVERRIDE.items()}, repeats=repeats,
                weights=f"checkpoint {args.checkpoint}" if args.checkpoint else "random init (seed 0)")
    print(f"{meta['cpu']}, {meta['nproc']} CPUs, load average {meta['load_average']}", flush=True)
    results: dict[str, Any] = {"meta": meta, "generation": [], "cache": [], "closed": []}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="radfm-bench-eval-") as tmp:
        base: list[Any] = []
        for name in names:
            t = time.perf_counter()
            model, tokenizer = build(name, args.checkpoint)
            name = model.cfg.name if args.checkpoint else name
            samples, root = make_synth(Path(tmp), model.cfg.vision.image_size)
            base = base or samples
            ds = dataset(model, tokenizer, samples, root)
            results["generation"] += bench_generation(name, model, tokenizer, ds, samples, batches, new_tokens,
                                                      repeats, quiet)
            cb = min(CACHE_COMPARE.get(name, 1), max(batches))
            results["cache"].append(bench_cache(name, model, tokenizer, ds, samples, cb, new_tokens, repeats, quiet))
            results["closed"].append(bench_closed(name, model, tokenizer, ds, samples, per_family, repeats, quiet))
            results.setdefault("preset_wall_s", {})[name] = time.perf_counter() - t
            del model
            if args.checkpoint:
                break  # one checkpoint is one model: the preset list does not apply
        results["metrics"] = bench_metrics(base, n_metric, embedding=not (args.no_embedding or q), quiet=quiet)
    meta.update(wall_s=time.perf_counter() - t0, quiet_waited_s=quiet.waited, peak_rss_mb=peak_rss_mb(),
                load_average_end=[round(x, 2) for x in os.getloadavg()])
    print()
    print(report(results))
    print(f"\nwall time {meta['wall_s']:.0f} s ({quiet.waited:.0f} s waiting for a quiet CPU), "
          f"peak RSS {meta['peak_rss_mb']:.0f} MB")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
