"""Which word lists the base Whisper tiny.en gets wrong: WER and new-word recall per candidate list of speech.

Protocol: for each candidate list of ``retain.data.speech.VOCABULARIES`` (16 words), 32 test-template
sentences (each word twice) spoken by the stream's voices at its tempo, pitch and noise
(``retain.data.speech.speak``, seed 0), transcribed by greedy decoding in a 10-second window; the
word error rate (jiwer; both sides in ``retain.data.speech.normalise``'s form: lower-cased, punctuation
removed, numbers spelled out) and the recall of the new words (the share of sentences whose new word
is among the hypothesis's words). The same for the retention sets (the LibriVox utterances,
the 40 general sentences, pocketsphinx's card names) and for the general sentences spoken by the new
voice family at the new tempo. The three lists of lowest recall are the stream's experiences
(``retain.data.speech.CHOSEN``); the last row names them.

    python benchmarks/speech_vocabulary.py --out /tmp/speech_vocabulary.json   # about 5 minutes, one thread
    python benchmarks/speech_vocabulary.py --smoke --out /tmp/speech_vocabulary.json   # seconds
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import jiwer
import torch

from retain.data import audio as keyword_audio
from retain.data import speech

MAX_SECONDS = 10.0
TRANSFORM = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                           jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
CHAR_TRANSFORM = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                                jiwer.Strip(), jiwer.ReduceToListOfListOfChars()])


class Transcriber:
    """Whisper tiny.en from ``retain.models.whisper``: waveforms in, transcripts out."""

    def __init__(self) -> None:
        from retain.models import whisper

        self.whisper = whisper
        self.model = whisper.load_whisper(MAX_SECONDS).eval()
        self.tokenizer = whisper.whisper_tokenizer()

    @torch.no_grad()
    def __call__(self, waveforms: list, batch_size: int = 8) -> list[str]:
        out = []
        for start in range(0, len(waveforms), batch_size):
            features = self.whisper.log_mel(waveforms[start:start + batch_size], MAX_SECONDS)
            ids = self.whisper.greedy_decode(self.model, features)
            out += [self.whisper.decode_text(self.tokenizer, row) for row in ids]
        return out


def score(name: str, kind: str, references: list[str], hypotheses: list[str], words: list[str] | None,
          seconds: float) -> dict:
    """One result row: WER, CER and (for a word list) new-word recall, with a few examples. Both sides
    are first put in the transcripts' written form (numbers spelled out: Whisper writes "10 of clubs")."""
    written, hypotheses = [speech.normalise(r) for r in references], [speech.normalise(h) for h in hypotheses]
    row = {"row": kind, "set": name, "sentences": len(references),
           "wer": round(100 * jiwer.wer(written, hypotheses, reference_transform=TRANSFORM,
                                        hypothesis_transform=TRANSFORM), 2),
           "cer": round(100 * jiwer.cer(written, hypotheses, reference_transform=CHAR_TRANSFORM,
                                        hypothesis_transform=CHAR_TRANSFORM), 2),
           "seconds": round(seconds, 1)}
    if words is not None:
        found = [w in speech.normalise(h).split() for w, h in zip(words, hypotheses, strict=True)]
        row["new_word_recall"] = round(100 * sum(found) / len(found), 2)
        row["missed"] = sorted({w for w, ok in zip(words, found, strict=True) if not ok})
    row["examples"] = [{"reference": r, "hypothesis": h} for r, h in zip(references[:4], hypotheses[:4], strict=True)]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where the JSON rows are written")
    parser.add_argument("--smoke", action="store_true", help="two sentences of two lists and two retention sets")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    transcribe = Transcriber()
    rows = [{"row": "setup", "model": "whisper-tiny.en", "window_seconds": MAX_SECONDS,
             "load_seconds": round(time.perf_counter() - started, 1), "smoke": args.smoke}]
    per_list = 2 if args.smoke else 32
    lists = list(speech.VOCABULARIES)[:2] if args.smoke else list(speech.VOCABULARIES)
    pool = keyword_audio.voices()
    for name in lists:
        t = time.perf_counter()
        lines = speech.sentences(name, per_list, "test", seed=0)
        rng = random.Random(f"benchmark:{name}")
        waveforms = speech.speak([(text, rng.choice(pool)) for text, _ in lines], seed=0)
        hypotheses = transcribe(waveforms)
        rows.append(score(name, "vocabulary", [text for text, _ in lines], hypotheses, [w for _, w in lines],
                          time.perf_counter() - t))
        print(json.dumps({k: rows[-1][k] for k in ("set", "wer", "new_word_recall")}), flush=True)
    general = list(speech.GENERAL[:per_list] if args.smoke else speech.GENERAL)
    rng = random.Random("benchmark:general")
    retention = {"librivox": lambda: speech.librivox()[:per_list],
                 "general": lambda: [speech.Utterance(a, text, "") for a, text in zip(
                     speech.speak([(text, rng.choice(pool)) for text in general]), general, strict=True)],
                 "general, new voices and tempo": lambda: [speech.Utterance(a, text, "") for a, text in zip(
                     speech.speak([(text, rng.choice(speech.NEW_VOICES)) for text in general],
                                  tempo=speech.NEW_TEMPO), general, strict=True)],
                 "cards": speech.cards}
    for name, utterances in list(retention.items())[:2 if args.smoke else None]:
        t = time.perf_counter()
        found = utterances()
        rows.append(score(name, "retention", [u.text for u in found], transcribe([u.audio for u in found]), None,
                          time.perf_counter() - t))
        print(json.dumps({k: rows[-1][k] for k in ("set", "wer")}), flush=True)
    ranked = sorted((r for r in rows if r["row"] == "vocabulary"), key=lambda r: (r["new_word_recall"], -r["wer"]))
    rows.append({"row": "choice", "hardest": [r["set"] for r in ranked[:3]], "rule": "lowest new-word recall",
                 "total_seconds": round(time.perf_counter() - started, 1)})
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(rows[-1]))


if __name__ == "__main__":
    main()
