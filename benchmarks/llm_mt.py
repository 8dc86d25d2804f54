"""Continual translation with SmolLM2-135M: one English→X direction per experience, forgetting in chrF++.

Protocol: Debian's translation catalogues (``retain.data.catalogues``), directions en→de, fr, es,
it, pt_BR in that order, 192 training pairs a direction and the same 32 English test sources in
every direction (never trained on in any direction), SmolLM2-135M-Instruct de-quantised to float32,
LoRA rank 8 on q and v (or full fine-tuning at lr 1e-4, or one LoRA per direction), AdamW lr 2e-3,
batch 8, 1 epoch an experience, greedy decoding of at most 32 tokens. After each experience every
direction is scored (chrF++, BLEU, broken format specifiers, outputs that copy their source); the
final scores carry 95% bootstrap intervals over the test sources (``retain.translation``), beside
two baselines: the untrained model, and copying each English source unchanged (no model). The
perplexity of 60 English fortunes before and after, over their own tokens (and, secondary, with the
end-of-text token that fine-tuning on one-line messages makes likelier).

- **Speed**: tokens per second of LoRA update steps, retain's ``GenerativeLearner.train_step``
  against a hand-written PEFT + torch loop (``model(input_ids, attention_mask, labels)``, AdamW,
  the same clip) on the same batches and adapter, alternating rounds of 6 steps; best round each.
- **Methods**: sequential LoRA fine-tuning (the forgetting baseline), sequential full fine-tuning,
  replay (a reservoir of 200 pairs, 4 replayed beside 8 new a step), L2 and EWC on the adapter
  weights, per-direction LoRA experts, and joint training on every direction at once.

    python benchmarks/llm_mt.py --out benchmarks/results/llm_mt.json --results benchmarks/LLM_MT.md
    python benchmarks/llm_mt.py --smoke --out /tmp/llm_mt.json   # the same code, smallest (seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from retain.experiment import versions
from retain.tasks.translation import build_translator
from retain.translation import (
    TranslationConfig,
    TranslationMethod,
    baseline,
    copy_source,
    experience,
    load_run_corpus,
    run_translation_method,
)

CONFIG = {
    "name": "llm-mt", "model": {"name": "smollm2", "adaptation": "lora", "lora_rank": 8},
    "corpus": {"n_train": 192, "n_test": 32, "max_chars": 80},
    "training": {"lr": 2e-3, "epochs": 1, "batch_size": 8, "max_tokens": 72, "threads": 2},
    "generation": {"max_new_tokens": 32, "batch_size": 24, "perplexity_texts": 60},
}
METHODS = [
    {"label": "finetune (LoRA)"},
    {"label": "replay (LoRA)", "compose": [{"name": "replay", "memory_size": 200, "policy": "reservoir",
                                            "batch_size": 4, "weight": 1.0}]},
    {"label": "experts (LoRA per direction)", "adaptation": "experts"},
    {"label": "L2 (LoRA)", "compose": [{"name": "l2", "lam": 10.0}]},
    {"label": "EWC (LoRA)", "compose": [{"name": "ewc", "lam": 3000.0, "fisher_samples": 32}]},
    {"label": "joint (LoRA, upper bound)", "compose": ["joint"]},
    {"label": "finetune (full)", "adaptation": "full", "lr": 1e-4},
]
# --smoke (tests/test_benchmarks.py): two directions of 8 training pairs (the speed rows' batch) and 2 test
# sources, one training step an experience, 4 new tokens, 2 perplexity texts, one speed round of one step, and
# the first method, on one thread (two threads on a core another job holds took 3 times as long).
SMOKE = {"corpus": {"languages": ["de", "fr"], "n_train": 8, "n_test": 2, "max_chars": 80},
         "training": CONFIG["training"] | {"batch_size": 8, "threads": 1},
         "generation": {"max_new_tokens": 4, "batch_size": 4, "perplexity_texts": 2}}
SMOKE_METHODS, SMOKE_SPEED = METHODS[:1], {"rounds": 1, "steps": 1}


def speed(cfg: TranslationConfig, corpus, rounds: int = 3, steps: int = 6) -> dict:
    """Tokens/s of retain's LoRA step against a hand-written PEFT + torch loop on the same batches."""
    learner = build_translator(cfg, TranslationMethod(label="speed"))
    exp = experience(learner, corpus.directions[0], 0)
    batches = [(exp.x_train[i:i + 8], exp.y_train[i:i + 8], exp.train_tasks()[i:i + 8])
               for i in range(0, 8 * steps, 8)]
    net = learner.model.net
    ours = torch.optim.AdamW(learner.trainable, lr=cfg.training.lr, weight_decay=0.0)
    theirs = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.training.lr, weight_decay=0.0)

    def retain_round() -> int:
        from retain.strategies.contract import Step

        for x, y, t in batches:
            learner.train_step(Step(x, y, t, incoming=len(x)), ours)
        return sum(int((x != -1).sum()) for x, _, _ in batches)

    def hand_round() -> int:
        net.train()
        tokens = 0
        for x, y, _ in batches:
            width = int((x != -1).sum(1).max())
            ids, mask = x[:, :width].clamp(min=0), (x[:, :width] != -1).long()
            labels = torch.full_like(ids, -100)  # HF shifts labels itself: position j's label is the token at j
            labels[:, 1:] = y[:, :width - 1]
            loss = net(input_ids=ids, attention_mask=mask, labels=labels).loss
            theirs.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], 1.0)
            theirs.step()
            tokens += int(mask.sum())
        return tokens

    retain_round(), hand_round()  # warm-up
    best = {"retain": 0.0, "hand": 0.0}
    for _ in range(rounds):
        for name, fn in (("retain", retain_round), ("hand", hand_round)):
            start = time.perf_counter()
            tokens = fn()
            best[name] = max(best[name], tokens / (time.perf_counter() - start))
    return {"row": "speed", "retain_tokens_per_second": best["retain"], "hand_tokens_per_second": best["hand"],
            "ratio": best["retain"] / best["hand"], "steps_per_round": steps, "batch": 8}


def _finite(value):
    """JSON has no NaN: a metric that is not defined (joint training's forgetting) is written as null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _interval(value: float, row: dict, key: str, column: str | int = "mean") -> str:
    """``value [low, high]`` from ``row[key]``'s interval (a results file written before intervals: the value)."""
    if key not in row:
        return f"{value:.1f}"
    low, high = row[key]["mean"] if column == "mean" else row[key]["directions"][column]
    return f"{value:.1f} [{low:.1f}, {high:.1f}]"


def _perplexity(r: dict, end: bool) -> str:
    """Before → after (change), without the end token or with it."""
    if "perplexity_with_end_before" in r:
        before, after = (r["perplexity_with_end_before"], r["perplexity_with_end_after"]) if end else (
            r["perplexity_before"], r["perplexity_after"])
    elif end:  # a results file written before the end token was left out: its one perplexity counted it
        before, after = r["perplexity_before"], r["perplexity_after"]
    else:
        return "n/a"
    return f"{before:.1f} → {after:.1f} ({100 * (after / before - 1):+.1f}%)"


def tables(data: dict) -> str:
    """The Markdown tables of a results file: speed; one row per method (final chrF++ and its gain
    over copying the source, with 95% bootstrap intervals); each direction's final chrF++ beside the
    copy-source and untrained baselines; the share of final outputs that copy their source; each
    chrF++ matrix."""
    rows = data["rows"]
    corpus = next(r for r in rows if r["row"] == "corpus")
    copy = next((r for r in rows if r["row"] == "copy"), None)
    out = [f"# Continual translation with SmolLM2-135M (`benchmarks/llm_mt.py`, {data['minutes']:.0f} minutes)", "",
           "Corpus (train/test pairs; clean pairs available): " + ", ".join(
               f"{d['name']} {d['train']}/{d['test']} ({corpus['available_pairs'][d['name'][3:]]})"
               for d in corpus["directions"]) + ".", ""]
    speed = next((r for r in rows if r["row"] == "speed"), None)
    if speed:
        out += ["| LoRA update step, batch 8 | tokens/s |", "| --- | --- |",
                f"| retain `GenerativeLearner.train_step` | {speed['retain_tokens_per_second']:.1f} |",
                f"| hand-written PEFT + torch loop | {speed['hand_tokens_per_second']:.1f} |",
                f"| ratio | **{speed['ratio']:.2f}** |", ""]
    methods = [r for r in rows if r["row"] == "method"]
    out += ["| method | final chrF++ (mean) [95%] | over copying the source [95%] | forgetting | worst drop from best "
            "| BWT | final BLEU | broken specifiers % | copies of the source % | English perplexity "
            "| with the end token | tokens trained | min / experience | learned parameters | state MB |",
            "|" + " --- |" * 15]
    for r in methods:
        drop = "n/a" if r["worst_drop_from_best"] is None else f"{r['worst_drop_from_best']:.1f}"
        forgetting = "n/a" if r["forgetting_chrf"] is None else f"{r['forgetting_chrf']:.1f}"
        bwt = "n/a" if r["bwt_chrf"] is None else f"{r['bwt_chrf']:.1f}"
        over = "n/a" if copy is None else _interval(r["acc_chrf"] - copy["chrf_mean"], r, "over_copy_interval")
        copies = "n/a" if "copied" not in r else f"{100 * sum(r['copied'][-1]) / len(r['copied'][-1]):.0f}"
        out.append(f"| {r['method']} | {_interval(r['acc_chrf'], r, 'final_interval')} | {over} | {forgetting} | "
                   f"{drop} | {bwt} | {sum(r['bleu'][-1]) / len(r['bleu'][-1]):.1f} | "
                   f"{100 * sum(r['broken'][-1]) / len(r['broken'][-1]):.0f} | {copies} | {_perplexity(r, False)} | "
                   f"{_perplexity(r, True)} | {r['tokens_trained']} | "
                   f"{sum(r['minutes_per_experience']) / len(r['minutes_per_experience']):.2f} | "
                   f"{r['trainable_parameters']:.0f} | {r['state_bytes'] / 1e6:.1f} |")
    names = [d["name"] for d in corpus["directions"]]
    finals = [("copy source (no model)", copy["chrf"], copy, "interval")] if copy else []
    if methods:
        finals.append(("untrained model", methods[0]["untrained_chrf"], methods[0], "untrained_interval"))
    finals += [(r["method"], r["final_chrf"], r, "final_interval") for r in methods]
    out += ["", "| final chrF++ [95%] | " + " | ".join(names) + " | mean |", "|" + " --- |" * (len(names) + 2)]
    out += [f"| {label} | " + " | ".join(_interval(v, r, key, j) for j, v in enumerate(chrf))
            + f" | {_interval(sum(chrf) / len(chrf), r, key)} |" for label, chrf, r, key in finals]
    copied = [r for r in methods if "copied" in r]
    if copied:
        out += ["", "| exact copies of the source, % of final outputs | " + " | ".join(names) + " |",
                "|" + " --- |" * (len(names) + 1),
                "| untrained model | " + " | ".join(f"{100 * u['copied']:.0f}" for u in copied[0]["untrained"]) + " |"]
        out += [f"| {r['method']} | " + " | ".join(f"{100 * v:.0f}" for v in r["copied"][-1]) + " |" for r in copied]
    baselines = "untrained: " + ", ".join(f"{v:.1f}" for v in methods[0]["untrained_chrf"]) if methods else ""
    if copy:
        baselines += "; copying the source: " + ", ".join(f"{v:.1f}" for v in copy["chrf"])
    for r in methods:
        out += ["", f"**{r['method']}**: chrF++ on each direction (columns) after each experience (rows); "
                + baselines, "", "| after | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
        labels = names if len(r["chrf_matrix"]) == len(names) else ["all (joint)"]
        out += [f"| {a} | " + " | ".join(f"{v:.1f}" for v in row) + " |"
                for a, row in zip(labels, r["chrf_matrix"], strict=True)]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", nargs="*", help="method labels to run (default: all)")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--results", help="also write the tables as Markdown here")
    parser.add_argument("--tables-only", action="store_true", help="only write --results from an existing --out")
    parser.add_argument("--smoke", action="store_true", help="the smallest run of the same code: two directions "
                        "of 8 pairs, 4 new tokens, one speed step, the first method")
    args = parser.parse_args()
    if args.tables_only:
        Path(args.results).write_text(tables(json.loads(Path(args.out).read_text())))
        return
    config = CONFIG | SMOKE if args.smoke else CONFIG
    torch.set_num_threads(config["training"]["threads"])
    cfg = TranslationConfig.model_validate(config | {"methods": SMOKE_METHODS if args.smoke else METHODS})
    corpus = load_run_corpus(cfg)
    rows: list[dict] = [{"row": "corpus", **corpus.manifest()}, {"row": "copy", **copy_source(corpus)}]
    started = time.perf_counter()

    def save() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        data = {"config": config, "versions": versions(), "rows": rows, "minutes": (time.perf_counter() - started) / 60}
        Path(args.out).write_text(json.dumps(_finite(data), indent=1) + "\n")
        if args.results:
            Path(args.results).write_text(tables(json.loads(Path(args.out).read_text())))

    if not args.no_speed:
        rows.append(speed(cfg, corpus, **(SMOKE_SPEED if args.smoke else {})))
        print(rows[-1], file=sys.stderr, flush=True)
        save()
    base = None
    for method in cfg.methods:
        if args.only and method.label not in args.only:
            continue
        start = time.perf_counter()
        if base is None:
            base = baseline(build_translator(cfg, method), corpus, cfg)
        run, extra, _ = run_translation_method(cfg, corpus, method, base=base)
        R = run.matrix
        rows.append({"row": "method", "method": method.label, "chrf_matrix": [[100 * v for v in r] for r in R],
                     "untrained_chrf": [100 * v for v in run.untrained],
                     "final_chrf": [100 * v for v in R[-1]], "acc_chrf": 100 * run.metrics.acc,
                     "forgetting_chrf": 100 * run.metrics.forgetting, "bwt_chrf": 100 * run.metrics.bwt,
                     "worst_drop_from_best": max((100 * (max(r[j] for r in R[:-1]) - R[-1][j])
                                                  for j in range(len(R) - 1)), default=None) if len(R) > 1 else None,
                     "perplexity_change": extra["perplexity_after"] / extra["perplexity_before"] - 1,
                     "perplexity_change_with_end": extra["perplexity_with_end_after"]
                     / extra["perplexity_with_end_before"] - 1,
                     "trainable_parameters": run.metrics.trainable_parameters, "seconds": time.perf_counter() - start,
                     **extra})
        print(method.label, f"ACC {rows[-1]['acc_chrf']:.1f} (copying the source: {rows[1]['chrf_mean']:.1f}) "
              f"forgetting {rows[-1]['forgetting_chrf']:.1f} "
              f"worst drop {rows[-1]['worst_drop_from_best']} ppl {rows[-1]['perplexity_change']:+.1%}",
              file=sys.stderr, flush=True)
        save()


if __name__ == "__main__":
    main()
