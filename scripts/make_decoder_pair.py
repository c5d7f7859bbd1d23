# Makes a small Llama-architecture base model and a full chat fine-tune of it, reproducibly, on the CPU.
# Called by scripts/make-decoder-pair.sh (which installs the pinned packages and checks the outputs'
# sha256); run by hand only as that script does:
#   python3 make_decoder_pair.py SRC OUT     SRC: the corpus wheels; OUT: the output folder
#
# Recipe (docs/quality.md "Decoder LLMs" describes it for readers):
#   corpus A  Wikipedia articles shipped as test data in gensim 4.3.3 (PyPI; the articles are
#             CC BY-SA 3.0, gensim LGPL-2.1), wiki markup stripped → pre-training text.
#   corpus B  chatterbot-corpus 1.3.3 (PyPI, BSD-3-Clause): 2026 English dialogs → chat conversations,
#             split by a seeded shuffle into 70 % fine-tuning, 15 % held-out and 15 % calibration.
#   tokenizer byte-level BPE (Hugging Face tokenizers), 4096 tokens, trained on corpus A.
#   base      LlamaForCausalLM: 4 layers, hidden 256, 4 heads / 2 key-value heads (GQA), SwiGLU 688,
#             RoPE θ 10000, RMSNorm ε 1e-5, untied lm_head; pre-trained on corpus A.
#   fine-tune the base, loaded from its saved bf16 weights, grows by two special tokens <|user|> and
#             <|assistant|> (embed_tokens and lm_head gain 2 rows) and is fully fine-tuned on the
#             fine-tuning conversations rendered with its chat template.
#   Both are saved in bf16 by transformers' own save_pretrained, base in 3 shards, fine-tune in 5.
# Determinism: fixed seeds, one thread, torch.use_deterministic_algorithms, and the CPU code paths pinned
# to AVX2 by the caller (MKL_CBWR, ATEN_CPU_CAPABILITY) so that other x86-64 CPUs compute the same bits.
import bz2
import hashlib
import html
import json
import math
import os
import random
import re
import sys
import time
import zipfile

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SEED = 20240521
VOCAB = 4096
SEQ = 256
BATCH = 16
PRETRAIN_STEPS = 260
PRETRAIN_LR = 2e-3
FINETUNE_STEPS = 60
FINETUNE_LR = 5e-4
SPECIAL = ["<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ raise_exception('only user and assistant messages are supported') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- corpora
def wheel(src, prefix):
    (name,) = [f for f in os.listdir(src) if f.startswith(prefix) and f.endswith(".whl")]
    return zipfile.ZipFile(os.path.join(src, name))


def strip_wiki(text):
    """Plain text of one article's wiki markup: templates, tables, references, files and markup removed,
    links replaced by their labels. Deterministic and crude; what remains is ordinary English prose."""
    t = html.unescape(text)
    t = re.sub(r"<!--.*?-->", "", t, flags=re.S)
    t = re.sub(r"<ref[^>/]*/>", "", t)
    t = re.sub(r"<ref[^>]*>.*?</ref>", "", t, flags=re.S)
    t = re.sub(r"<(math|gallery|timeline|source|syntaxhighlight)[^>]*>.*?</\1>", "", t, flags=re.S)
    t = re.sub(r"<[^>]+>", "", t)
    for _ in range(8):  # nested templates and tables, innermost first
        t2 = re.sub(r"\{\{[^{}]*\}\}", "", t)
        t2 = re.sub(r"\{\|[^{}]*?\|\}", "", t2, flags=re.S)
        if t2 == t:
            break
        t = t2
    for _ in range(4):  # links, innermost first; files, images, categories and interwiki dropped
        t2 = re.sub(r"\[\[(?:[A-Za-z-]+:)[^\[\]]*\]\]", "", t)
        t2 = re.sub(r"\[\[[^\[\]|]*\|([^\[\]]*)\]\]", r"\1", t2)
        t2 = re.sub(r"\[\[([^\[\]]*)\]\]", r"\1", t2)
        if t2 == t:
            break
        t = t2
    t = re.sub(r"\[https?://[^\s\]]+ ([^\]]*)\]", r"\1", t)
    t = re.sub(r"\[https?://[^\]]*\]", "", t)
    t = t.replace("'''", "").replace("''", "")
    out = []
    for line in t.split("\n"):
        line = re.sub(r"^=+\s*(.*?)\s*=+$", r"\1", line.strip())
        line = re.sub(r"^[*#:;]+\s*", "", line)
        line = re.sub(r"\s+", " ", line).strip()
        if len(line.split()) >= 6 and not line.startswith(("|", "!", "{", "}")):
            out.append(line)
    return "\n".join(out)


def wiki_articles(src):
    z = wheel(src, "gensim-4.3.3-")
    xml = bz2.decompress(
        z.read("gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    ).decode("utf-8")
    articles = []
    for page in re.findall(r"<page>(.*?)</page>", xml, flags=re.S):
        m = re.search(r"<text[^>]*>(.*?)</text>", page, flags=re.S)
        if not m or m.group(1).lstrip().upper().startswith("#REDIRECT"):
            continue
        body = strip_wiki(m.group(1))
        if len(body) > 200:
            articles.append(body)
    return articles


def chat_conversations(src):
    z = wheel(src, "chatterbot_corpus-1.3.3-")
    convs = []
    for name in sorted(z.namelist()):
        if not (name.startswith("chatterbot_corpus/data/english/") and name.endswith(".yml")):
            continue
        for c in yaml.safe_load(z.read(name))["conversations"]:
            turns = [str(x).strip() for x in c]
            if len(turns) < 2 or any(not x for x in turns):
                continue
            # Each statement answers the one before it (chatterbot's reading): user, assistant, user, …
            convs.append(
                [{"role": "user" if i % 2 == 0 else "assistant", "content": x} for i, x in enumerate(turns)]
            )
    rng = random.Random(SEED)
    rng.shuffle(convs)
    n = len(convs)
    held, cal = n * 15 // 100, n * 15 // 100
    return convs[held + cal:], convs[:held], convs[held:held + cal]


# -------------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(articles):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=2,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(articles, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0), ("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


# --------------------------------------------------------------------------------------------- training
def windows(ids, seq):
    n = len(ids) // (seq + 1)
    return torch.tensor(ids[: n * (seq + 1)], dtype=torch.long).view(n, seq + 1)


def train(model, data, steps, lr, warmup, gen, label):
    """AdamW on next-token loss over `data` ([n, SEQ+1] windows), BATCH windows a step, drawn in
    seeded epochs; linear warm-up then cosine decay to a tenth."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8)
    order, pos, t0 = torch.randperm(len(data), generator=gen), 0, time.time()
    model.train()
    for step in range(steps):
        if pos + BATCH > len(order):
            order, pos = torch.randperm(len(data), generator=gen), 0
        b = data[order[pos:pos + BATCH]]
        pos += BATCH
        f = (step + 1) / warmup if step < warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr * f
        loss = model(input_ids=b[:, :-1], labels=b[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0 or step == steps - 1:
            log(f"{label} step {step + 1}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f} s)")
    model.eval()


@torch.no_grad()
def mean_loss(model, data):
    losses = [model(input_ids=data[i:i + BATCH, :-1], labels=data[i:i + BATCH, :-1]).loss.item() for i in range(0, len(data), BATCH)]
    return sum(losses) / max(1, len(losses))


def save_sharded(model, tokenizer, out, shards):
    """bf16 weights by save_pretrained with the largest shard size that still gives `shards` files."""
    total = sum(p.numel() * 2 for p in model.parameters())
    for size in range(total // shards + 1, total, max(1, total // 400)):
        os.makedirs(out, exist_ok=True)
        for f in os.listdir(out):
            os.remove(os.path.join(out, f))
        model.save_pretrained(out, max_shard_size=size, safe_serialization=True)
        # The chat template goes into tokenizer_config.json, as most published chat models have it.
        tokenizer.save_pretrained(out, save_jinja_files=False)
        got = len([f for f in os.listdir(out) if f.endswith(".safetensors")])
        if got == shards:
            return
    raise SystemExit(f"no shard size gives {shards} shards for {out}")


def chat_ids(tokenizer, convs):
    ids = []
    for c in convs:
        ids += tokenizer.apply_chat_template(c, tokenize=True)
    return ids


# -------------------------------------------------------------------------------------------- reference
@torch.no_grad()
def reference(out):
    """Token ids and logits computed by transformers' own LlamaForCausalLM from the saved folders (f32
    from the bf16 weights), for tests/vectors/decoder_reference.json."""
    texts = [
        "Anarchism is a political philosophy that advocates self-governed societies.",
        "Héllo, WORLD! naïve café — it's 3.5°C in Zürich?",
    ]
    chat = [
        {"role": "user", "content": "What is a computer?"},
        {"role": "assistant", "content": "A computer is an electronic device."},
        {"role": "user", "content": "Who invented it?"},
    ]
    result = {"generator": "scripts/make_decoder_pair.py (transformers LlamaForCausalLM, float32, eager attention)", "models": {}}
    for which in ["base", "finetuned"]:
        d = os.path.join(out, which)
        tok = AutoTokenizer.from_pretrained(d)
        model = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        cases = [{"text": t, "ids": tok(t)["input_ids"]} for t in texts]
        if which == "finetuned":
            rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            ids = tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
            cases.append({"messages": chat, "add_generation_prompt": True, "text": rendered, "ids": ids})
        for c in cases:
            logits = model(input_ids=torch.tensor([c["ids"]])).logits[0]
            c["argmax"] = logits.argmax(-1).tolist()
            c["logsumexp"] = [round(x, 5) for x in torch.logsumexp(logits, -1).tolist()]
            n = len(c["ids"])
            c["logits_first16"] = {str(p): [round(x, 5) for x in logits[p, :16].tolist()] for p in sorted({0, n // 2, n - 1})}
            c["logits_last4"] = {str(p): [round(x, 5) for x in logits[p, -4:].tolist()] for p in sorted({0, n // 2, n - 1})}
        result["models"][which] = {
            "vocab_size": model.config.vocab_size,
            "weights_sha256": {
                f: hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
                for f in sorted(os.listdir(d)) if f.endswith(".safetensors")
            },
            "cases": cases,
        }
    text = json.dumps(result, indent=1, ensure_ascii=False)
    # Lists of numbers on one line each: a small file that still diffs well.
    text = re.sub(r"\[\s+([-0-9.,\se]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    with open(os.path.join(out, "decoder_reference.json"), "w") as f:
        f.write(text + "\n")


# ------------------------------------------------------------------------------------------------- main
def main():
    src, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()

    articles = wiki_articles(src)
    train_convs, held, cal = chat_conversations(src)
    log(f"corpus A: {len(articles)} articles, {sum(map(len, articles))} characters; corpus B: "
        f"{len(train_convs)} fine-tuning, {len(held)} held-out, {len(cal)} calibration conversations")
    with open(os.path.join(out, "pretrain.txt"), "w") as f:
        f.write("\n\n".join(articles) + "\n")
    for name, convs in [("finetune.jsonl", train_convs), ("heldout.jsonl", held), ("calibration.jsonl", cal)]:
        with open(os.path.join(out, name), "w") as f:
            for c in convs:
                f.write(json.dumps({"messages": c}, ensure_ascii=False) + "\n")

    tok = train_tokenizer(articles)
    ids = []
    for a in articles:
        ids += tok(a)["input_ids"] + [tok.eos_token_id]
    data = windows(ids, SEQ)
    log(f"pre-training: {len(ids)} tokens, {len(data)} windows of {SEQ}")

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        attn_implementation="eager",
    )
    gen = torch.Generator().manual_seed(SEED)
    model = LlamaForCausalLM(cfg)
    train(model, data, PRETRAIN_STEPS, PRETRAIN_LR, 20, gen, "pre-train")
    model.to(torch.bfloat16)
    save_sharded(model, tok, os.path.join(out, "base"), 3)
    del model

    # The fine-tune starts from the base as published: its bf16 weights, read back from the folder.
    ftok = AutoTokenizer.from_pretrained(os.path.join(out, "base"))
    ftok.add_special_tokens({"additional_special_tokens": SPECIAL})
    ftok.chat_template = CHAT_TEMPLATE
    model = LlamaForCausalLM.from_pretrained(os.path.join(out, "base"), dtype=torch.float32, attn_implementation="eager")
    model.resize_token_embeddings(len(ftok))
    model.config.vocab_size = len(ftok)
    fdata = windows(chat_ids(ftok, train_convs), SEQ)
    held_data = windows(chat_ids(ftok, held), SEQ)
    log(f"fine-tuning: {fdata.numel()} tokens in {len(fdata)} windows; held-out loss before {mean_loss(model, held_data):.3f}")
    train(model, fdata, FINETUNE_STEPS, FINETUNE_LR, 5, gen, "fine-tune")
    log(f"held-out loss after {mean_loss(model, held_data):.3f}")
    model.to(torch.bfloat16)
    save_sharded(model, ftok, os.path.join(out, "finetuned"), 5)
    del model

    reference(out)
    log(f"done in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
