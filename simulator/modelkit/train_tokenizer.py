"""Regenerates the model kit's `tokenizer.json`: a byte-level BPE (vocab 4096) trained once on
text this script generates from a fixed seed (English-like prose, code, some CJK).

It needs the `tokenizers` library, which the vLLM venv has (see `scripts/install-vllm`):

    ~/.cache/llmtraffic/vllm-venv/bin/python simulator/modelkit/train_tokenizer.py

(or `"$LLMTRAFFIC_VLLM_VENV/bin/python" ...` when that variable is set). It overwrites
`tokenizer.json` next to this file; the output is byte-for-byte reproducible, so a rerun
shows no diff. Changing the corpus or the settings changes the merges, the token ids and so
every fixture taken with the kit: commit a new tokenizer only on purpose.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
from pathlib import Path

VOCAB_SIZE = 4096
#: Llama's order: <unk>=0, <s>=1, </s>=2; <pad>=3 (Llama has none; ours is a plain id).
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
SEED = 20261202
CORPUS_CHARS = 3_000_000
OUT = Path(__file__).resolve().parent / "tokenizer.json"

COMMON_WORDS = """
the of and to a in is it you that he was for on are with as I his they be at one have this
from or had by hot word but what some we can out other were all there when up use your how
said an each she which do their time if will way about many then them write would like so
these her long make thing see him two has look more day could go come did number sound no
most people my over know water than call first who may down side been now find any new work
part take get place made live where after back little only round man year came show every
good me give our under name very through just form sentence great think say help low line
differ turn cause much mean before move right boy old too same tell does set three want air
well also play small end put home read hand port large spell add even land here must big
high such follow act why ask men change went light kind off need house picture try us again
animal point mother world near build self earth father head stand own page should country
found answer school grow study still learn plant cover food sun four between state keep eye
never last let thought city tree cross farm hard start might story saw far sea draw left
late run don't while press close night real life few north open seem together next white
children begin got walk example ease paper group always music those both mark often letter
until mile river car feet care second book carry took science eat room friend began idea
fish mountain stop once base hear horse cut sure watch color face wood main enough plain
girl usual young ready above ever red list though feel talk bird soon body dog family direct
pose leave song measure door product black short numeral class wind question happen complete
ship area half rock order fire south problem piece told knew pass since top whole king space
heard best hour better true during hundred five remember step early hold west ground interest
reach fast verb sing listen six table travel less morning ten simple several vowel toward war
lay against pattern slow center love person money serve appear road map rain rule govern pull
cold notice voice unit power town fine certain fly fall lead cry dark machine note wait plan
figure star box noun field rest correct able pound done beauty drive stood contain front teach
week final gave green oh quick develop ocean warm free minute strong special mind behind clear
tail produce fact street inch multiply nothing course stay wheel full force blue object decide
surface deep moon island foot system busy test record boat common gold possible plane stead
dry wonder laugh thousand ago ran check game shape equate miss brought heat snow tire bring yes
distant fill east paint language among model request server token latency cache prefix queue
adapter summary tweet query table select customer order price review support account
""".split()
SYLLABLES = ("ka ri to mo na se lu vi den tor mar qui sol pre con tra ble tion ment ing er "
             "ous al ic ly ness ful less able ism ist ate ize pro ex in un re de dis").split()
CJK = ("的一是不了人我在有他这为之大来以个中上们到说国和地也子时道出而要于就下得可你年生自会那"
       "后能对着事其里所去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将"
       "还分此心前面又定见只主没公从知道模型请求服务器缓存延迟队列摘要推理负载均衡")
KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"
CODE_TEMPLATES = (
    "def {f}({a}, {b}):\n    return {a} {op} {b}\n\n",
    "for {a} in range({n}):\n    {b}[{a}] = {f}({a})\n",
    "if {a} {cmp} {n}:\n    raise ValueError(f\"{a}={{{a}}} is out of range\")\n",
    "class {C}:\n    def __init__(self, {a}: int) -> None:\n        self.{a} = {a}\n\n",
    "const {a} = await fetch(`/v1/{f}`, {{method: \"POST\"}});\n",
    "SELECT {a}, count(*) FROM {b} WHERE {a} {cmp} {n} GROUP BY {a};\n",
    "{{\"model\": \"{f}\", \"max_tokens\": {n}, \"temperature\": 0}}\n",
    "    {a}_{b} = {{\"{a}\": {n}, \"{b}\": [{n}, {n}]}}\n",
    "sum by (model) (rate(vllm:{f}_total[{n}m]))\n",
)


#: Zipf weights (1/rank^0.9) over COMMON_WORDS, cumulative, for random.choices.
_ZIPF = list(itertools.accumulate(1 / (k + 1) ** 0.9 for k in range(len(COMMON_WORDS))))


def _word(rng: random.Random) -> str:
    """A word with a Zipf-like draw over real words, or a made-up one for the long tail."""
    if rng.random() < 0.85:
        return rng.choices(COMMON_WORDS, cum_weights=_ZIPF)[0]
    if rng.random() < 0.3:
        return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
    return _markov_word(rng)


def _letter_chain() -> dict[str, list[str]]:
    """Next-letter lists of a bigram chain over COMMON_WORDS ("^" starts, "$" ends)."""
    chain: dict[str, list[str]] = {}
    for w in COMMON_WORDS:
        w = "^" + w.lower().replace("'", "") + "$"
        for a, b in zip(w, w[1:]):
            chain.setdefault(a, []).append(b)
    return chain


_CHAIN = _letter_chain()


def _markov_word(rng: random.Random) -> str:
    """An English-looking made-up word (letter bigrams of real words), 3 to 12 letters."""
    out, c = [], "^"
    while True:
        c = rng.choice(_CHAIN[c])
        if c == "$":
            if len(out) >= 3:
                return "".join(out)
            out, c = [], "^"
            continue
        out.append(c)
        if len(out) >= 12:
            return "".join(out)


def _prose(rng: random.Random) -> str:
    words = [_word(rng) for _ in range(rng.randint(6, 24))]
    words[0] = words[0].capitalize()
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words)), str(rng.randint(0, 2100)))
    if rng.random() < 0.15:
        k = rng.randrange(len(words) - 1)
        words[k] += ","
    return " ".join(words) + rng.choice(".....?!") + rng.choice("  \n")


def _code(rng: random.Random) -> str:
    ident = lambda: "_".join(_word(rng).replace("'", "") for _ in range(rng.randint(1, 2)))
    return rng.choice(CODE_TEMPLATES).format(
        f=ident(), a=ident(), b=ident(), C=ident().title().replace("_", ""),
        n=rng.randint(0, 4096), op=rng.choice("+-*/%"), cmp=rng.choice(["<", ">", "==", ">="]))


def _cjk(rng: random.Random) -> str:
    chars = CJK if rng.random() < 0.8 else KANA
    return "".join(rng.choice(chars) for _ in range(rng.randint(8, 40))) + rng.choice("。，！？\n")


def corpus(seed: int = SEED, chars: int = CORPUS_CHARS) -> list[str]:
    """The training text as paragraphs: ~75% prose, ~17% code, ~8% CJK (by paragraph)."""
    rng = random.Random(seed)
    out, size = [], 0
    while size < chars:
        r = rng.random()
        part = (_prose(rng) if r < 0.75 else _code(rng) if r < 0.92 else _cjk(rng))
        out.append(part)
        size += len(part)
    return out


def build(paragraphs: list[str]):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(paragraphs, trainer=trainer)
    bos = SPECIAL_TOKENS[1]
    # Llama-like: encode(text) starts with <s>; chat templates write <s> themselves and
    # vLLM tokenizes a rendered chat with add_special_tokens=False.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
        special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT, help="where to write (default: the kit's)")
    args = p.parse_args(argv)
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        print("train_tokenizer: the `tokenizers` library is missing; run this script with the "
              "vLLM venv's python (bash scripts/install-vllm creates it)", file=sys.stderr)
        return 2
    tok = build(corpus())
    if tok.get_vocab_size() != VOCAB_SIZE:
        print(f"train_tokenizer: trained vocab is {tok.get_vocab_size()}, not {VOCAB_SIZE}; "
              "the corpus is too small for the merges", file=sys.stderr)
        return 1
    args.out.write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    print(f"wrote {args.out.name}: vocab {tok.get_vocab_size()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
