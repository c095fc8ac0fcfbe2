"""One reasoning filter for every backend: `<think>…</think>` kept out of the answer, whole or streamed.

GLM-4.6V (and the other reasoning models vLLM and SGLang serve) write their thinking between `<think>` and
`</think>`; with `[model] strip_thinking` it goes to the job's `reasoning`, never into the answer a caption,
a chat or a CSV shows. The rules are vLLM's reasoning parsers' (glm45), with one difference: a block cut
off by `max_new_tokens` before `</think>` leaves an empty answer rather than leak half a thought:

- text inside `<think>…</think>` is reasoning, wherever the pair opens;
- a `</think>` with no opening tag (chat templates that open it in the prompt) makes the text before it
  reasoning if nothing was shown yet; text already handed to a streaming reader cannot be taken back, so
  then only the tag goes;
- outer whitespace is never part of an answer.

`ReasoningFilter.feed`/`finish` stream; `split_reasoning` is the same filter over a whole text, so a streamed
answer and the recorded one are always equal.
"""

from __future__ import annotations


class ReasoningFilter:
    """Splits `<think>…</think>` out of text fed piece by piece; `feed` returns the visible part.

    Tags split across pieces are held back until recognisable; outer whitespace is dropped (trailing
    whitespace waits for more text), so joined pieces equal the stripped answer. A `</think>` with no opening
    tag (templates that open it in the prompt) makes all text before it reasoning if none was shown yet;
    shown text cannot be taken back, so then only the tag goes. `strip=False` leaves the tags in the text
    (outer whitespace still goes: it is never part of an answer).
    """

    _OPEN, _CLOSE = "<think>", "</think>"

    def __init__(self, strip: bool = True) -> None:
        self.strip = strip
        self._buffer = ""
        self._in_think = False
        self._shown = False
        self._pending_space = ""
        self._reasoning: list[str] = []

    @property
    def reasoning(self) -> str:
        """The text found inside think tags so far."""
        return "".join(self._reasoning).strip()

    def feed(self, piece: str) -> str:
        """Add `piece`; return the newly visible text (possibly "")."""
        if not self.strip:
            return self._visible(piece)
        self._buffer += piece
        shown: list[str] = []
        while True:
            start, end = self._buffer.find(self._OPEN), self._buffer.find(self._CLOSE)
            if self._in_think and end >= 0:
                self._reasoning.append(self._buffer[:end])
                self._in_think, self._buffer = False, self._buffer[end + len(self._CLOSE) :]
            elif not self._in_think and end >= 0 and not 0 <= start < end:  # a close tag, no open tag
                before = "".join(shown) + self._buffer[:end]
                shown = [before] if self._shown else []
                self._reasoning.extend([] if self._shown else [before])
                self._buffer = self._buffer[end + len(self._CLOSE) :]
            elif not self._in_think and start >= 0:
                shown.append(self._buffer[:start])
                self._in_think, self._buffer = True, self._buffer[start + len(self._OPEN) :]
            else:
                break
        # Hold back what may be the start of a tag split across pieces; release the rest.
        keep = max(_partial_tag(self._buffer, self._CLOSE), _partial_tag(self._buffer, self._OPEN))
        cut = len(self._buffer) - keep
        (self._reasoning if self._in_think else shown).append(self._buffer[:cut])
        self._buffer = self._buffer[cut:]
        return self._visible("".join(shown))

    def finish(self) -> str:
        """End of text: return what was held back (an incomplete tag is just text)."""
        if not self.strip:
            return ""  # trailing whitespace stays pending, i.e. dropped
        rest, self._buffer = self._buffer, ""
        if self._in_think:  # the model ran out of tokens while still thinking
            self._reasoning.append(rest)
            return ""
        return self._visible(rest)  # trailing whitespace stays pending, i.e. dropped

    def _visible(self, text: str) -> str:
        if not self._shown:
            text = text.lstrip()
        text = self._pending_space + text
        shown = text.rstrip()
        self._pending_space = text[len(shown) :]
        if shown:
            self._shown = True
        return shown


def _partial_tag(text: str, tag: str) -> int:
    """Length of the longest proper prefix of `tag` that `text` ends with."""
    return next((k for k in range(len(tag) - 1, 0, -1) if text.endswith(tag[:k])), 0)


def split_reasoning(text: str, strip: bool = True) -> tuple[str, str | None]:
    """(answer, reasoning) of a whole generated text; reasoning None when there was none (or strip is off)."""
    parser = ReasoningFilter(strip)
    answer = parser.feed(text) + parser.finish()
    thinking = "<think>" in text or "</think>" in text
    return answer, (parser.reasoning if strip and thinking else None)
