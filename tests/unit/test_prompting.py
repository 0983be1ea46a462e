"""The one prompt renderer and the SFT tokenization built on it."""

from __future__ import annotations

import pytest

from polyalign_ray.losses import IGNORE_INDEX
from polyalign_ray.models import CHATML_TEMPLATE, train_builtin_tokenizer
from polyalign_ray.prompting import (
    encode_prompt_response,
    profile_text,
    prompt_messages,
    render_plain,
    render_prompt,
)
from polyalign_ray.sft_data import example_ids_and_labels, history_turn_examples

RECORD = {
    "prompt": "Who wrote it?",
    "context": "Hamlet is a play.",
    "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    "system": "Be brief.",
    "response": "Shakespeare.",
    "language": "en",
    "track": "multi",
    "family": "qa",
    "length_bin": "short",
}


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["Who wrote it? Hamlet is a play. Shakespeare. hi hello Be brief.", "你好 世界"] * 20
    return train_builtin_tokenizer(texts, 300, 64)


def test_messages_never_contain_the_answer() -> None:
    messages = prompt_messages(RECORD)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == "Hamlet is a play.\n\nWho wrote it?"
    assert all("Shakespeare" not in m["content"] for m in messages)


def test_profile_conditioning_with_and_without_length() -> None:
    with_length = prompt_messages(RECORD, profile_conditioning=True)[0]["content"]
    assert with_length == "Be brief.\nAnswer profile: language=en; track=multi; family=qa; length=short"
    without = profile_text(RECORD, include_length=False)
    assert without == "Answer profile: language=en; track=multi; family=qa"


def test_chat_template_and_plain_template(tokenizer) -> None:
    assert tokenizer.chat_template == CHATML_TEMPLATE
    rendered = render_prompt(tokenizer, RECORD)
    assert rendered.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n")
    assert rendered.endswith(
        "<|im_start|>user\nHamlet is a play.\n\nWho wrote it?<|im_end|>\n<|im_start|>assistant\n"
    )
    plain = render_plain(prompt_messages({**RECORD, "history": [], "system": "", "context": ""}))
    assert plain == "User: Who wrote it?\n\nAssistant: "


def test_labels_train_only_the_response_and_end_with_eos(tokenizer) -> None:
    ids, labels = example_ids_and_labels(tokenizer, RECORD, max_length=1000, profile_conditioning=False)
    prompt_ids = tokenizer(render_prompt(tokenizer, RECORD), add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert labels[len(prompt_ids) :] == ids[len(prompt_ids) :]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[len(prompt_ids) : -1]) == "Shakespeare."


def test_truncation_keeps_the_end_of_the_prompt(tokenizer) -> None:
    prompt = "hello " * 100
    ids, start = encode_prompt_response(tokenizer, prompt, "Shakespeare.", max_length=32)
    assert len(ids) == 32
    response_ids = tokenizer("Shakespeare.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert ids[start:] == response_ids
    # a response longer than half the budget is cut on the right, and loses its end-of-turn token
    ids, start = encode_prompt_response(tokenizer, prompt, "hello " * 100, max_length=32)
    assert (len(ids), start) == (32, 16)
    assert ids[-1] != tokenizer.eos_token_id


def test_history_turns_become_examples() -> None:
    extra = history_turn_examples(RECORD)
    assert len(extra) == 1
    assert (extra[0]["prompt"], extra[0]["response"], extra[0]["history"]) == ("hi", "hello", [])
