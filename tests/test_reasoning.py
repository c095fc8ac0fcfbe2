"""The one reasoning filter of both model backends: whole texts and streams agree; vLLM's rules."""

from __future__ import annotations

import pytest

from service.reasoning import ReasoningFilter, split_reasoning


@pytest.mark.parametrize(
    ("text", "answer", "reasoning"),
    [
        ("<think>look at the sky</think>A cat on a wall.", "A cat on a wall.", "look at the sky"),
        ("\n<think>\nstep 1\nstep 2\n</think>\n\n两个人站在门口。 ", "两个人站在门口。", "step 1\nstep 2"),
        ("A cat on a wall.", "A cat on a wall.", None),
        ("  plain answer\n", "plain answer", None),
        ("<think>cut off by max_new_tokens", "", "cut off by max_new_tokens"),
        ("<think></think>Direct.", "Direct.", ""),
        # A chat template that opens <think> in the prompt: the model writes only the close tag.
        ("先看文字</think>答案", "答案", "先看文字"),
        # Wherever a pair opens, what it holds is reasoning (vLLM's glm45 parser does the same); the
        # transformers backend's own filter used to leave a mid-text pair in the answer.
        ("Use <think>tags like</think> this", "Use  this", "tags like"),
    ],
)
def test_whole_texts(text: str, answer: str, reasoning: str | None) -> None:
    assert split_reasoning(text) == (answer, reasoning)


@pytest.mark.parametrize(
    ("pieces", "strip", "shown", "reasoning"),
    [
        # Tags split one character per piece, whitespace around the answer.
        (list("  <think>想一想\n</think>\n答案是 42。  "), True, "答案是 42。", "想一想"),
        (
            ["<", "think", ">", "secret", " plan", "</th", "ink>", "\n", "A", " cat", " ", "\n"],
            True,
            "A cat",
            "secret plan",
        ),
        # The model ran out of tokens while thinking.
        (["<think>还在", "想"], True, "", "还在想"),
        # Text already handed to a streaming reader cannot be taken back; only the stray tag goes.
        (["先看", "文字</think>答案"], True, "先看文字答案", ""),
        # A stray close tag before anything was shown: what preceded it was reasoning.
        (["先看文字</think>", "答案"], True, "答案", "先看文字"),
        # An incomplete tag at the end, and other markup, are plain text.
        (["a < b <thi"], True, "a < b <thi", ""),
        (["<", "b>bold</b>", " end "], True, "<b>bold</b> end", ""),
        ([" 两个", "人 ", "\n", "站着"], True, "两个人 \n站着", ""),
        # strip_thinking off: the tags stay in the text; outer whitespace is never part of an answer.
        (["  ", "<think>x</think>", "y "], False, "<think>x</think>y", ""),
    ],
    ids=[
        "split-tags",
        "split-tags-2",
        "unterminated",
        "late-close",
        "early-close",
        "partial-tag",
        "markup",
        "cjk-space",
        "off",
    ],
)
def test_streams(pieces: list[str], strip: bool, shown: str, reasoning: str) -> None:
    parser = ReasoningFilter(strip)
    sent = [parser.feed(piece) for piece in pieces] + [parser.finish()]
    assert ("".join(sent), parser.reasoning) == (shown, reasoning)
    if strip:
        assert not any("secret" in piece or "think" in piece for piece in sent)


@pytest.mark.parametrize(
    "text",
    ["<think>想一想</think>答案是 42。", "  无思考的回答 ", "<think>没写完", "<b>粗体</b> 结尾", "a <b> c"],
)
def test_a_stream_adds_up_to_the_whole_text_answer(text: str) -> None:
    parser = ReasoningFilter(True)
    streamed = "".join(parser.feed(character) for character in text) + parser.finish()
    assert streamed == split_reasoning(text)[0]
