"""The index behind one- and two-character searches: every distinct character and character pair of a job.

Chinese words are often one or two characters (「鼎」, 「合影」), and the trigram index (`jobs_fts`) cannot
find anything shorter than three. A `LIKE '%合影%'` scan reads every row's whole text: 1.6 s at 100,000
long OCR pages, for a miss as much as for a hit. So `jobs_grams` (migration 0005) indexes, per job, the set
of distinct 1- and 2-character substrings of `jobs.search_text` (the folded text, `db.folding`), the way
Lucene's CJK analyzers index unigrams and bigrams. A short term is then one index lookup.

How it is stored: an FTS5 table without content (`content=''`) and without positions (`detail=none`), so it
holds only a list of job ids per gram (+17 % on a database of long pages, where the trigram index is most
of the size). Each gram becomes one ASCII token, its code points in hex (`合影` → `x5408x5f71`), so FTS5's
tokenizer never splits or folds it and any character (punctuation, emoji, digits) is a gram like another.
Grams never span whitespace: query terms are split on whitespace, so none could match one.

Triggers on `jobs` keep the table current; they call `tuwen_grams(text)`, a function every connection of
the store registers (`register`). A contentless table forgets a row only when told exactly what it
indexed, so the function must stay deterministic and unchanged: a change to it (or to `db.folding`)
needs a migration that rebuilds the table. A tool writing to `jobs` outside tuwen (the `sqlite3` shell)
gets "no such function: tuwen_grams": use tuwen's own commands instead.

The spine's hot writes (a round of new scans, an answer) do not let the triggers call the function: a
call back into Python from inside a statement waits for the GIL while the store's writer is held. They
compute the tokens beforehand and hand them over in `jobs.grams_new` / `jobs.grams_old`, which the
triggers use when set and clear in the same statement (migration 0008).
"""

from __future__ import annotations

from typing import Any

GRAMS_TABLE = "jobs_grams"
GRAMS_FUNCTION = "tuwen_grams"
MAX_GRAM = 2  # the longest term this index answers; longer ones go to the trigram index


def gram_token(term: str) -> str:
    """The index token of a 1- or 2-character folded term: `x` + each code point in hex."""
    return "x" + "x".join(f"{ord(char):x}" for char in term)


def grams(text: str | None) -> str:
    """The space-separated tokens of every distinct 1- and 2-character substring of `text`, sorted."""
    if not text:
        return ""
    # Called by SQLite for every write of a job (twice for an answer), under the writer: the distinct
    # substrings first, each character's hex token built once.
    singles: set[str] = set()
    pairs: set[str] = set()
    for word in text.split():
        singles.update(word)
        pairs.update(map(str.__add__, word, word[1:]))
    token = {char: f"x{ord(char):x}" for char in singles}
    tokens = list(token.values())
    tokens += [token[pair[0]] + token[pair[1]] for pair in pairs]
    tokens.sort()
    return " ".join(tokens)


def register(dbapi_connection: Any) -> None:
    """Make `tuwen_grams()` callable on a sqlite3 connection (the index's triggers use it)."""
    dbapi_connection.create_function(GRAMS_FUNCTION, 1, grams, deterministic=True)
