"""Speech recognisers as continual learners: rows laid out for the strategies, a CTC model that learns in
seconds, Whisper's labels, experts routed without a label, and saves that load and transcribe alike."""

import numpy as np
import pytest
import torch

from retain.data import Experience
from retain.engine import load_learner
from retain.engine.speech import SpeechLearner
from retain.metrics.wer import wer
from retain.models.generative import IGNORE
from retain.models.speech import SpeechModel
from retain.strategies import make_strategy

from .speech_clips import WORDS, clip


def _spoken(n: int, seed: int, words=WORDS) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(words, 2)) for _ in range(n)]
    return [clip(t, rng) for t in texts], texts


def _experience(x, y, index: int) -> Experience:
    return Experience(x, y, x[:0], y[:0], id=index, task=index, classes=(index,),
                      t_train=torch.full((len(x),), index, dtype=torch.long))


@pytest.fixture(scope="module")
def whisper():
    return SpeechModel("whisper-tiny.en", "decoder", max_seconds=8.0, max_tokens=32)


def test_a_tiny_ctc_model_learns_spoken_words_in_seconds_and_replay_keeps_the_first_ones():
    torch.manual_seed(0)
    first, second = _spoken(48, 0, ("go", "stop")), _spoken(48, 1, ("up", "down"))
    test_first = _spoken(16, 2, ("go", "stop"))
    results = {}
    for label, strategies in (("finetune", []), ("replay", [make_strategy("replay", memory_size=48,
                                                                            policy="reservoir")])):
        learner = SpeechLearner(SpeechModel("ctc-tiny", max_seconds=1.0, max_tokens=16), strategies, lr=3e-3,
                                epochs=25, batch_size=8)
        learner.fit(_experience(*learner.rows(*first), 0))
        after_first = wer(test_first[1], learner.transcribe(test_first[0]))
        learner.fit(_experience(*learner.rows(*second), 1))
        results[label] = (after_first, wer(test_first[1], learner.transcribe(test_first[0])))
    assert results["finetune"][0] <= 0.2  # unseen clips of the first words: at least 4 words in 5 right
    assert results["finetune"][1] >= 0.9  # then forgotten: it writes the second experience's words instead
    assert results["replay"][1] <= 0.1


def test_whisper_rows_feed_the_prompt_and_label_each_next_token(whisper):
    learner = SpeechLearner(whisper)
    x, y = learner.rows([np.zeros(16_000, dtype=np.float32)], ["hello there"], encode=False)
    ids = whisper.tokenizer.encode("hello there")
    prompt = whisper.tokenizer.prompt
    assert x.shape == (1, 81, 800)  # 80 log-mel bins over 8 s, then the decoder-input channel
    assert x[0, -1, :len(prompt) + len(ids)].long().tolist() == prompt + ids
    assert y[0, :len(prompt) + len(ids) + 1].tolist() == [IGNORE] + ids + [whisper.tokenizer.eot, IGNORE]
    encoded = whisper.encoded(x)
    assert encoded.shape == (1, 385, 400)  # the frozen encoder's states, computed once, the channel kept
    assert torch.equal(encoded[0, -1, :len(prompt) + len(ids)], x[0, -1, :len(prompt) + len(ids)])
    # logits from states and from log-mel frames agree: a frozen encoder's rows may hold either
    assert torch.allclose(whisper(encoded, width=4), whisper(x, width=4), atol=1e-4)
    with pytest.raises(ValueError, match="transcript 0 has .* tokens, max_tokens is 32"):
        learner.rows([np.zeros(16_000, dtype=np.float32)], [" ".join(["word"] * 40)])
    with pytest.raises(ValueError, match="clip 0 lasts 9.0 s, longer than max_seconds"):
        learner.rows([np.zeros(9 * 16_000, dtype=np.float32)])


def test_experts_route_each_clip_without_a_label_and_reload_alike(tmp_path):
    from retain.data.speech import librivox

    utterances = librivox()
    model = SpeechModel("whisper-tiny.en", "experts", lora_rank=4, max_seconds=8.0, max_tokens=40)
    learner = SpeechLearner(model, lr=1e-3, epochs=2, batch_size=2)
    clips, texts = [u.audio for u in utterances], [u.text for u in utterances]
    base = learner.transcribe(clips)
    for index, part in enumerate((slice(0, 2), slice(2, 4))):
        x, y = learner.rows(clips[part], texts[part])
        learner.fit(_experience(x, y, index))
    assert model.experts == [0, 1]
    routed = learner.transcribe(clips)
    assert wer(texts, routed) <= wer(texts, base)  # each clip's surest transcript: the base model's among them
    learner.save(tmp_path)
    again = load_learner(tmp_path)
    assert again.model.experts == [0, 1] and again.transcribe(clips) == routed


def test_the_example_config_makes_a_transcription_store_config_and_bad_values_name_their_field(tmp_path):
    from pathlib import Path

    from retain.config import ConfigError
    from retain.tasks.transcription import Transcription

    example = Transcription.read_config(Path(__file__).parent.parent / "examples" / "transcription.yaml")
    assert example.model.name == "whisper-tiny.en" and example.methods[0].compose[0]["name"] == "weight_average"
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: transcription\nmodel: {adaptation: prefix}\n")
    with pytest.raises(ConfigError, match="model.adaptation: Input should be 'decoder', 'lora', 'experts' or 'full'"):
        Transcription.read_config(bad)
    bad.write_text("task: transcription\nmethods: [{label: a, compose: [lwf]}]\n")
    with pytest.raises(ConfigError, match="lwf does not apply to a generative"):
        Transcription.read_config(bad)
