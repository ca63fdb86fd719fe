"""Names of people, organisations and places in free text, on by default: the ``names``
detector.

A proper noun in English text is capitalised where an ordinary word is not, so the
detector reads capitalisation, not a model: a run of capitalised words ("Dana
Whitfield", "Northwind Traders", "Bank of Lisbon") is a name unless it only starts a
sentence ("Please", "Write"). A sentence may start with a name too: its first word
counts when it is a known first name (the US census lists shipped in the ``names``
package: 5,494 first names; its data files are read and checked, its code is never
imported). A short list of capitalised words that are not about anyone (days, months,
languages, common software) is left alone.

Why not spaCy's NER by default: at 500 tokens it costs ~41 ms on two cores, four times
the privacy stage's budget, and it misses organisations this finds ("Northwind
Traders"); the ``ner`` detector remains for those who want a model (docs/PERFORMANCE.md
has both measured). What this misses: names written in lower case, names in scripts
without case (Chinese, Japanese, Arabic …), and a lone first name that starts a sentence
and is not in the census list. What it over-protects: public names ("capital of
France"), which are private to it like any other; requests that mention them are handled
as private ones are.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import threading

from privacy.detectors import Detector, Texts, register_detector
from privacy.memo import TextMemo
from privacy.spans import STOPWORDS, Span

NAMES_DIST = "names"
NAME_FILES = {  # file in the distribution -> SHA-256 (names 0.3.0)
    "names/dist.male.first": "0a5078ef6effe3b483d15b0f7f95047662126c9bfb624ecd5e5b978fc0f2470b",
    "names/dist.female.first": "bd2f310fc4e5d5e5ea122c9d4342c9821145823118eb20db1647f305ec77b358",
}

# A word: letters (any script with case), inner apostrophes and hyphens (O'Brien, Jean-Luc).
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
# Where a sentence (or a list item, a quote, a heading) starts: its first word's capital
# says nothing.
_STARTS = re.compile(r"(?:^|[.!?…]['\")\]]*\s+|\n\s*(?:[-*•>#]+\s*|\d+[.)]\s*)?|[:;]\s+"
                     r"|[\"“(\[]\s*)$")
_CONNECTORS = frozenset({"of", "de", "da", "do", "dos", "das", "del", "della", "di", "van",
                         "von", "der", "den", "la", "le", "du", "bin", "al", "y", "&",
                         "the"})
_TITLES = frozenset({"mr", "mrs", "ms", "miss", "dr", "prof", "professor", "sir", "dame",
                     "madam", "mx", "st", "saint"})
_ORG_ENDS = frozenset("""inc incorporated ltd limited llc llp plc corp corporation co company
companies group bank gmbh ag sa se sarl bv nv oy ab kk partners associates labs laboratories
technologies technology systems solutions holdings industries enterprises traders trading
consulting capital ventures sons brothers bros studio studios media agency foundation institute university
college school academy hospital clinic council ministry department office association
society union church club team airlines airways motors pharmaceuticals""".split())
_PLACE_ENDS = frozenset("""street st road rd avenue ave lane ln boulevard blvd drive dr way
place square sq court ct terrace city town village county province state district
park river lake mount mountain mountains island islands bay valley beach harbour harbor
airport station""".split())
# Words that start a request ("Create a list …"): a capital there says nothing even when
# a capitalised word follows ("Translate French …").
_OPENERS = frozenset("""create explain summarize summarise translate list describe compare
find show convert generate draft compose calculate compute solve fix check review rewrite
answer help use add remove read send reply name choose select sort count implement build
design plan suggest provide return print define consider assume given suppose imagine
thanks hi hello dear hey what's who's where's how's here's there's it's that's let's
meet call ask email invite thank congratulate introduce contact remind inform notify
message text ping cc forward schedule book arrange greet welcome tell""".split())
# Capitalised words that name no one (matched case-folded, as a whole run).
_ORDINARY = frozenset("""i i'm i've i'd i'll ok okay hi hello hey dear thanks thank yes no
monday tuesday wednesday thursday friday saturday sunday january february march april may
june july august september october november december today tomorrow yesterday
english french german spanish italian portuguese dutch chinese japanese korean russian
arabic hindi latin greek european american british african asian
python java javascript typescript rust go golang ruby php perl swift kotlin scala haskell
c c++ c# sql html css json yaml xml csv markdown latex linux unix windows macos ios android
docker kubernetes git github gitlab excel word powerpoint pdf api http https url uri
ai ml llm gpt chatgpt openai internet web wifi bluetooth usb tv dvd faq ceo cto cfo hr it
god bible christmas easter ramadan
note tip warning example answer question solution step steps figure table chapter section
part appendix true false none null nan""".split())


def _load_first_names() -> frozenset[str]:
    dist = importlib.metadata.distribution(NAMES_DIST)  # metadata only: no code runs
    names: set[str] = set()
    for rel, want in NAME_FILES.items():
        path = dist.locate_file(rel)
        data = path.read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise ValueError(f"{path}: SHA-256 {got} does not match {want}")
        names |= {line.split()[0].casefold() for line in data.decode().splitlines()
                  if line.strip()}
    return frozenset(names - STOPWORDS - _ORDINARY)


def _capitalised(word: str, shouting: bool) -> bool:
    """Title case, or an acronym of 2-5 letters ("ACME Corp") unless the text shouts."""
    if not word[0].isupper():
        return False
    if len(word) > 1 and word.isupper():
        return not shouting and len(word) <= 5 and word.casefold() not in STOPWORDS
    return True


@register_detector("names")
class NameDetector(Detector):
    """Capitalised runs outside sentence starts, and known first names anywhere."""

    name = "names"

    def __init__(self, kinds: list[str] | None = None) -> None:
        self.kinds = set(kinds) if kinds is not None else None
        self._first: frozenset[str] | None = None
        self._lock = threading.Lock()
        self.memo: TextMemo[tuple[tuple[int, int, str], ...]] = TextMemo()

    def start(self) -> None:
        with self._lock:
            if self._first is None:
                self._first = _load_first_names()

    def detect(self, texts: Texts) -> list[Span]:
        if self._first is None:
            self.start()
        spans = []
        for text in texts.open:  # marked texts are private whole already
            for a, b, kind in self.memo.get(text, self.find):
                if self.kinds is None or kind in self.kinds:
                    spans.append(Span(text[a:b], kind, self.name))
        return spans

    def find(self, text: str) -> tuple[tuple[int, int, str], ...]:
        """(start, end, kind) of each name in ``text``."""
        words = list(_WORD.finditer(text))
        letters = [c for c in text if c.isalpha()]
        shouting = sum(c.isupper() for c in letters) > len(letters) / 2
        caps = [_capitalised(m.group(), shouting) for m in words]
        out: list[tuple[int, int, str]] = []
        i = 0
        while i < len(words):
            if not caps[i]:
                i += 1
                continue
            j = i + 1  # extend over capitalised words, through connectors between them
            while j < len(words) and _adjacent(text, words, j):
                if caps[j]:
                    j += 1
                    continue
                k = j  # "Bank of the West": up to two connectors, then a capital
                while k < min(j + 2, len(words)) and words[k].group().casefold() in _CONNECTORS \
                        and _adjacent(text, words, k):
                    k += 1
                if k > j and k < len(words) and caps[k] and _adjacent(text, words, k):
                    j = k + 1
                else:
                    break
            found = self._name_in(text, words[i:j])
            if found is not None:
                out.append(found)
            i = j
        return tuple(out)

    def _name_in(self, text: str, run: list[re.Match]) -> tuple[int, int, str] | None:
        folded = [m.group().casefold() for m in run]
        while run and len(folded[-1]) == 1:
            run, folded = run[:-1], folded[:-1]  # "Option B", "plan A": a label's letter
        initials = False
        while len(run) > 1 and len(folded[0]) == 1:  # "J. Smith"; "B. It was …" (an option)
            run, folded, initials = run[1:], folded[1:], True
        if not run:
            return None
        opens = not initials and _STARTS.search(text, max(0, run[0].start() - 12),
                                                run[0].start())
        if opens and folded[0] not in self._first and (
                len(run) == 1 or folded[0] in STOPWORDS or folded[0] in _OPENERS):
            run, folded = run[1:], folded[1:]  # the sentence's first word, not a name
        titled = bool(folded) and folded[0] in _TITLES and len(run) > 1
        if titled:
            run, folded = run[1:], folded[1:]
        while run and folded[0] in _CONNECTORS:
            run, folded = run[1:], folded[1:]
        while run and folded[-1] in _CONNECTORS:
            run, folded = run[:-1], folded[:-1]
        if not run or (len(run) == 1 and len(folded[0]) < 2):
            return None
        if all(m.group().isupper() for m in run):
            return None  # acronyms alone (LSTM, GPU, NASA) are terms, not someone's name
        if " ".join(folded) in _ORDINARY or all(w in _ORDINARY or w in STOPWORDS
                                                for w in folded):
            return None
        a, b = run[0].start(), run[-1].end()
        if folded[-1] in _ORG_ENDS and len(run) > 1:
            return a, b, "ORG"
        if folded[-1] in _PLACE_ENDS and len(run) > 1:
            return a, b, "PLACE"
        if titled or folded[0] in self._first:
            return a, b, "PERSON"
        return a, b, "NAME"


def _adjacent(text: str, words: list[re.Match], j: int) -> bool:
    """May word ``j`` continue the name that word ``j - 1`` is in? Only spaces (one line),
    a hyphen or an ampersand between them, or the full stop of an initial or a title ("J. R. R.
    Tolkien", "Dr. Okafor"; not "option B. I think")."""
    left, right = words[j - 1], words[j]
    gap = text[left.end():right.start()]
    if len(gap) > 3 or "\n" in gap:
        return False
    if gap.strip(" -") == "" or gap.strip(" ") == "&":  # "Fennwick & Sons"
        return True
    if gap.strip(" ") != ".":
        return False
    word = left.group()
    if word.casefold() in _TITLES:
        return True
    if not (len(word) == 1 and word.isupper()):
        return False
    # an initial goes on to a name, or to another initial
    after = text[right.end():right.end() + 1]
    return len(right.group()) > 1 or after == "."
