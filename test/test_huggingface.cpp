// Tests of common/huggingface.h (Qwen2 config.json, Hugging Face weights, PEFT adapters) and, through the loader,
// dev/make_tiny_qwen2.py.
//
//   make build/test_huggingface && ./build/test_huggingface
//
// Run from the repository root (the Python scripts are found by relative path; without python3 those checks are
// SKIPped). Temporary files go to a fresh /tmp/test_huggingface.XXXXXX directory, removed at the end. Every error
// case runs in a forked child, whose exit status (must be 1, from fatal()) and stderr (one line naming the file and
// the problem) are checked.
#include <stdlib.h>
#include <sys/stat.h>
#include <string>
#include <vector>
#include "../common/huggingface.h"
#include "test.h"

static std::string g_dir;

static std::string tmp_path(const std::string& name) { return g_dir + "/" + name; }

static bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

static bool exists(const std::string& path) { return file_exists(path.c_str()); }

// `text` with its first `from` replaced by `to` (a test whose `from` is missing is a broken test: exit 2).
static std::string with(const std::string& text, const std::string& from, const std::string& to) {
    const size_t at = text.find(from);
    if (at == std::string::npos) { fprintf(stderr, "test bug: '%s' not found\n", from.c_str()); exit(2); }
    return text.substr(0, at) + to + text.substr(at + from.size());
}

// fn() must end in fatal(): exit status 1 and one line "error: ..." holding every string of `must`.
template <typename F>
static void expect_error(const std::string& name, F fn, const std::vector<std::string>& must) {
    int status = 0;
    const std::string err = run_in_child(fn, &status);
    const int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    bool ok = rc == 1 && err.rfind("error: ", 0) == 0 && err.find('\n') == std::string::npos;
    for (const std::string& s : must) ok = ok && contains(err, s);
    if (check(ok, name.c_str(), "exit status %d (signal %d), stderr \"%s\"", rc, WIFSIGNALED(status) ? WTERMSIG(status) : 0, err.c_str()))
        printf("      %s\n", err.c_str());
}

// ----------------------------------------------------------------------------------------------------------------
// Qwen2 config.json

// Qwen/Qwen2.5-0.5B's config.json, as published.
static const std::string QWEN25_CONFIG = R"({
  "architectures": [
    "Qwen2ForCausalLM"
  ],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 896,
  "initializer_range": 0.02,
  "intermediate_size": 4864,
  "max_position_embeddings": 32768,
  "max_window_layers": 24,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": true,
  "use_mrope": false,
  "use_sliding_window": false,
  "vocab_size": 151936
}
)";

static Qwen2Config parse_config(const std::string& text) {
    JsonDoc doc = json_parse("cfg/config.json", text.data(), text.size());
    return qwen2_config_parse(doc);
}

static bool same_config(const Qwen2Config& a, const Qwen2Config& b) {
    return a.hidden_size == b.hidden_size && a.intermediate_size == b.intermediate_size && a.num_hidden_layers == b.num_hidden_layers &&
           a.num_attention_heads == b.num_attention_heads && a.num_key_value_heads == b.num_key_value_heads && a.head_dim == b.head_dim &&
           a.vocab_size == b.vocab_size && a.max_position_embeddings == b.max_position_embeddings && a.bos_token_id == b.bos_token_id &&
           a.eos_token_id == b.eos_token_id && a.rope_theta == b.rope_theta && a.rms_norm_eps == b.rms_norm_eps &&
           a.tie_word_embeddings == b.tie_word_embeddings;
}

static void test_config_qwen25() {
    const Qwen2Config c = parse_config(QWEN25_CONFIG);
    check(c.num_hidden_layers == 24 && c.hidden_size == 896 && c.num_attention_heads == 14 && c.num_key_value_heads == 2 &&
              c.intermediate_size == 4864 && c.head_dim == 64,
          "config: Qwen2.5-0.5B sizes", "layers %d hidden %d heads %d kv %d intermediate %d head_dim %d", c.num_hidden_layers,
          c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.head_dim);
    check(c.vocab_size == 151936 && c.max_position_embeddings == 32768 && c.bos_token_id == 151643 && c.eos_token_id == 151643,
          "config: Qwen2.5-0.5B vocabulary, positions, token ids", "vocab %d pos %d bos %d eos %d", c.vocab_size,
          c.max_position_embeddings, c.bos_token_id, c.eos_token_id);
    check(c.rope_theta == 1e6 && c.rms_norm_eps == 1e-6 && c.tie_word_embeddings, "config: Qwen2.5-0.5B theta, eps, tied",
          "theta %g eps %g tied %d", c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings);
    // transformers' defaults for what may be left out; bos/eos null -> -1; unknown keys of any type ignored
    const std::string minimal = R"({"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 8,
                                    "vocab_size": 100, "eos_token_id": null, "some_future_key": {"a": [1, null]}})";
    const Qwen2Config m = parse_config(minimal);
    check(m.num_key_value_heads == 8 && m.max_position_embeddings == 32768 && m.rope_theta == 10000.0 && m.rms_norm_eps == 1e-6 &&
              !m.tie_word_embeddings && m.bos_token_id == -1 && m.eos_token_id == -1 && m.head_dim == 8,
          "config: defaults of absent keys", "kv %d pos %d theta %g eps %g tied %d bos %d eos %d hd %d", m.num_key_value_heads,
          m.max_position_embeddings, m.rope_theta, m.rms_norm_eps, m.tie_word_embeddings, m.bos_token_id, m.eos_token_id, m.head_dim);
    const Qwen2Config h = parse_config(with(QWEN25_CONFIG, "\"hidden_act\"", "\"head_dim\": 64, \"rope_scaling\": null, \"hidden_act\""));
    check(h.head_dim == 64, "config: a head_dim equal to hidden_size / heads and a null rope_scaling are accepted");
}

static void test_config_refusals() {
    struct Case { const char* name; const char* from; const char* to; std::vector<std::string> must; };
    const std::vector<Case> cases = {
        {"model_type llama", "\"qwen2\"", "\"llama\"", {"model_type: \"llama\": expected \"qwen2\""}},
        {"architectures without Qwen2ForCausalLM", "\"Qwen2ForCausalLM\"", "\"LlamaForCausalLM\"", {"architectures", "Qwen2ForCausalLM"}},
        {"architectures a string", "[\n    \"Qwen2ForCausalLM\"\n  ]", "\"Qwen2ForCausalLM\"", {"architectures", "found a string"}},
        {"hidden_act gelu", "\"silu\"", "\"gelu\"", {"hidden_act: \"gelu\"", "silu"}},
        {"use_sliding_window true", "\"use_sliding_window\": false", "\"use_sliding_window\": true", {"use_sliding_window", "not supported"}},
        {"rope_scaling set", "\"rope_theta\"", "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}, \"rope_theta\"",
         {"rope_scaling", "not supported"}},
        {"kv heads do not divide heads", "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3",
         {"cfg/config.json: num_key_value_heads: 3 does not divide num_attention_heads = 14"}},
        {"heads do not divide hidden", "\"hidden_size\": 896", "\"hidden_size\": 900", {"num_attention_heads: 14 does not divide hidden_size = 900"}},
        {"odd head width", "\"hidden_size\": 896", "\"hidden_size\": 42", {"num_attention_heads", "= 3 is odd"}},
        {"head_dim differs", "\"hidden_act\"", "\"head_dim\": 128, \"hidden_act\"", {"head_dim: 128 differs from hidden_size / num_attention_heads = 64"}},
        {"hidden_size 0", "\"hidden_size\": 896", "\"hidden_size\": 0", {"hidden_size: 0 is out of range"}},
        {"hidden_size negative", "\"hidden_size\": 896", "\"hidden_size\": -896", {"hidden_size: -896 is out of range"}},
        {"hidden_size fractional", "\"hidden_size\": 896", "\"hidden_size\": 896.5", {"hidden_size", "expected an integer"}},
        {"hidden_size a string", "\"hidden_size\": 896", "\"hidden_size\": \"896\"", {"hidden_size", "expected a number"}},
        {"layers above the cap", "\"num_hidden_layers\": 24", "\"num_hidden_layers\": 2000000", {"num_hidden_layers: 2000000 is out of range"}},
        {"vocab above the cap", "\"vocab_size\": 151936", "\"vocab_size\": 16777217", {"vocab_size: 16777217 is out of range"}},
        {"hidden_size missing", "\"hidden_size\": 896,", "", {"missing key \"hidden_size\""}},
        {"rope_theta 0", "\"rope_theta\": 1000000.0", "\"rope_theta\": 0", {"rope_theta: 0: expected a positive number"}},
        {"rope_theta negative", "\"rope_theta\": 1000000.0", "\"rope_theta\": -1e6", {"rope_theta", "expected a positive number"}},
        {"rope_theta null", "\"rope_theta\": 1000000.0", "\"rope_theta\": null", {"rope_theta", "expected a number, found null"}},
        {"rms_norm_eps 0", "\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": 0.0", {"rms_norm_eps", "expected a positive number"}},
        {"eos outside the vocabulary", "\"eos_token_id\": 151643", "\"eos_token_id\": 151936", {"eos_token_id: 151936 is out of range"}},
        {"tie_word_embeddings a string", "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": \"yes\"", {"tie_word_embeddings", "expected a boolean"}},
        {"invalid JSON", "\"vocab_size\": 151936\n}", "\"vocab_size\": 151936,\n}", {"cfg/config.json: invalid JSON"}},
    };
    for (const Case& c : cases) {
        const std::string text = with(QWEN25_CONFIG, c.from, c.to);
        std::vector<std::string> must = c.must;
        must.push_back("cfg/config.json");
        expect_error(std::string("config refuses: ") + c.name, [&] { parse_config(text); }, must);
    }
    expect_error("config refuses: a top-level array", [] { parse_config("[1]"); }, {"cfg/config.json", "expected an object"});
    expect_error("config refuses: a missing file", [] { qwen2_config_read(tmp_path("nope/config.json").c_str()); }, {"nope/config.json"});
}

static void test_config_json() {
    const Qwen2Config c = parse_config(QWEN25_CONFIG);
    const std::string text = qwen2_config_json(c, "bfloat16");
    check(same_config(parse_config(text), c), "config json: parse(qwen2_config_json(c)) == c (Qwen2.5-0.5B)", "%s", text.c_str());
    const bool keys = contains(text, "\"model_type\": \"qwen2\"") && contains(text, "\"architectures\": [\"Qwen2ForCausalLM\"]") &&
                      contains(text, "\"hidden_act\": \"silu\"") && contains(text, "\"use_sliding_window\": false") &&
                      contains(text, "\"torch_dtype\": \"bfloat16\"") && contains(text, "\"attention_dropout\": 0.0") &&
                      contains(text, "\"rope_theta\": 1000000.0") && contains(text, "\"rms_norm_eps\": 1e-06");
    check(keys, "config json: the keys transformers needs, floats written as Python writes them", "%s", text.c_str());
    Qwen2Config u = c;
    u.bos_token_id = -1;
    u.tie_word_embeddings = false;
    u.rope_theta = 12345.678;
    u.rms_norm_eps = 1.0 / 3.0;
    const std::string path = tmp_path("config_u.json");
    write_file_bytes(path, qwen2_config_json(u));
    const Qwen2Config r = qwen2_config_read(path.c_str());
    check(same_config(r, u) && contains(read_file_bytes(path), "\"bos_token_id\": null") && contains(read_file_bytes(path), "\"torch_dtype\": \"float32\""),
          "config json: untied, bos null, non-round floats survive a file round trip", "theta %.17g eps %.17g bos %d", r.rope_theta,
          r.rms_norm_eps, r.bos_token_id);
    const double samples[] = {0.0, 1.0, 0.05, 1e-6, 1e-5, 1e6, 1e20, 123456789.125, 0.1 + 0.2, 5e-324};
    bool exact = true;
    for (double x : samples) exact = exact && strtod(hf_json_float(x).c_str(), nullptr) == x;
    check(exact && hf_json_float(1e6) == "1000000.0" && hf_json_float(0.05) == "0.05" && hf_json_float(1e-6) == "1e-06",
          "hf_json_float: shortest exact text", "1e6 -> %s, 0.05 -> %s, 1e-6 -> %s", hf_json_float(1e6).c_str(),
          hf_json_float(0.05).c_str(), hf_json_float(1e-6).c_str());
}

// ----------------------------------------------------------------------------------------------------------------
// hf_parts

static std::string parts_str(const std::vector<HfPart>& parts) {
    std::string s;
    for (const HfPart& p : parts) s += p.hf_name + "[" + std::to_string(p.row_begin) + "+" + std::to_string(p.rows) + "] ";
    return s;
}

static void test_parts() {
    const std::string qkv = parts_str(hf_parts("model.layers.3.self_attn.qkv_proj.weight", {896 + 2 * 128, 896}, 896, 128));
    check(qkv == "model.layers.3.self_attn.q_proj.weight[0+896] model.layers.3.self_attn.k_proj.weight[896+128] "
                 "model.layers.3.self_attn.v_proj.weight[1024+128] ",
          "hf_parts: fused qkv weight -> q, k, v rows", "%s", qkv.c_str());
    const std::string bias = parts_str(hf_parts("model.layers.0.self_attn.qkv_proj.bias", {16}, 8, 4));
    check(bias == "model.layers.0.self_attn.q_proj.bias[0+8] model.layers.0.self_attn.k_proj.bias[8+4] model.layers.0.self_attn.v_proj.bias[12+4] ",
          "hf_parts: fused qkv bias", "%s", bias.c_str());
    const std::string gu = parts_str(hf_parts("model.layers.1.mlp.gate_up_proj.weight", {2 * 4864, 896}, 896, 128));
    check(gu == "model.layers.1.mlp.gate_proj.weight[0+4864] model.layers.1.mlp.up_proj.weight[4864+4864] ",
          "hf_parts: fused gate_up -> gate, up halves", "%s", gu.c_str());
    const std::string plain = parts_str(hf_parts("model.layers.1.self_attn.o_proj.weight", {896, 896}, 896, 128)) +
                              parts_str(hf_parts("lm_head.weight", {10, 4}, 896, 128)) +
                              parts_str(hf_parts("model.layers.1.mlp.xgate_up_proj.weight", {4, 4}, 896, 128)) +
                              parts_str(hf_parts("self_attn.qkv_proj.weight.extra", {4, 4}, 896, 128));
    check(plain == "model.layers.1.self_attn.o_proj.weight[0+896] lm_head.weight[0+10] model.layers.1.mlp.xgate_up_proj.weight[0+4] "
                   "self_attn.qkv_proj.weight.extra[0+4] ",
          "hf_parts: other names are one part under their own name", "%s", plain.c_str());
    const std::string top = parts_str(hf_parts("self_attn.qkv_proj.weight", {4, 2}, 2, 1));
    check(top == "self_attn.q_proj.weight[0+2] self_attn.k_proj.weight[2+1] self_attn.v_proj.weight[3+1] ",
          "hf_parts: a fused name without prefix", "%s", top.c_str());
    expect_error("hf_parts refuses: qkv rows that are not q + 2 kv", [] { hf_parts("a.self_attn.qkv_proj.weight", {10, 4}, 4, 2); },
                 {"internal", "a.self_attn.qkv_proj.weight has 10 rows"});
    expect_error("hf_parts refuses: odd gate_up rows", [] { hf_parts("a.mlp.gate_up_proj.weight", {7, 4}, 4, 2); }, {"expected an even number"});
}

// ----------------------------------------------------------------------------------------------------------------
// A small Qwen2 table in our layout (fused qkv and gate_up), unaligned offsets with gaps between tensors

typedef struct {
    std::vector<TensorInfo> tensors;
    size_t n;                    // flat elements, gaps included
    int64_t q_rows, kv_rows;
} Table;

static void table_add(Table* t, const std::string& name, const std::vector<int64_t>& shape) {
    TensorInfo ti;
    ti.name = name;
    ti.shape = shape;
    ti.numel = 1;
    for (int64_t d : shape) ti.numel *= (size_t)d;
    ti.offset = t->n + 3;       // a gap of 3 elements before every tensor
    ti.group = 0;
    ti.init = init_zero();
    ti.reserve = ti.numel;
    t->tensors.push_back(ti);
    t->n = ti.offset + ti.numel;
}

static Table qwen2_table(int layers, int D, int NH, int NKV, int I, int V, bool lm_head) {
    Table t;
    t.n = 0;
    const int HD = D / NH;
    t.q_rows = NH * HD;
    t.kv_rows = NKV * HD;
    table_add(&t, "model.embed_tokens.weight", {V, D});
    for (int l = 0; l < layers; l++) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        table_add(&t, p + "input_layernorm.weight", {D});
        table_add(&t, p + "self_attn.qkv_proj.weight", {t.q_rows + 2 * t.kv_rows, D});
        table_add(&t, p + "self_attn.qkv_proj.bias", {t.q_rows + 2 * t.kv_rows});
        table_add(&t, p + "self_attn.o_proj.weight", {D, t.q_rows});
        table_add(&t, p + "post_attention_layernorm.weight", {D});
        table_add(&t, p + "mlp.gate_up_proj.weight", {2 * I, D});
        table_add(&t, p + "mlp.down_proj.weight", {D, I});
    }
    table_add(&t, "model.norm.weight", {D});
    if (lm_head) table_add(&t, "lm_head.weight", {V, D});
    t.n += 3;
    return t;
}

static Table small_table() { return qwen2_table(2, 8, 2, 1, 12, 10, true); }

static const TensorInfo& find_tensor(const Table& t, const std::string& name) {
    for (const TensorInfo& ti : t.tensors)
        if (ti.name == name) return ti;
    fprintf(stderr, "test bug: no tensor %s\n", name.c_str());
    exit(2);
}

// Values of every tensor from a fixed LCG (with a few exact bf16 rounding ties at the start), NaN in the gaps.
static std::vector<float> table_values(const Table& t, uint64_t seed) {
    std::vector<float> v(t.n, NAN);
    uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
    for (const TensorInfo& ti : t.tensors)
        for (size_t j = 0; j < ti.numel; j++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            v[ti.offset + j] = ((float)(s >> 40) / (float)(1 << 24) - 0.5f) * 0.3f;
        }
    const uint32_t ties[] = {0x3F808000u, 0x3F818000u, 0xBF808000u, 0xBF818000u, 0x3F80FFFFu, 0x00008000u};
    for (size_t k = 0; k < sizeof ties / sizeof ties[0]; k++) memcpy(&v[t.tensors[0].offset + k], &ties[k], 4);
    return v;
}

// bf16 rounding computed by distances (independent of the header's bit trick): the nearer of the two bf16 values
// around x, the one with an even last mantissa bit on a tie.
static float bf16_reference(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    const uint32_t lo = b & 0xFFFF0000u, hi = lo + 0x10000u;
    float flo, fhi;
    memcpy(&flo, &lo, 4);
    memcpy(&fhi, &hi, 4);
    const double dlo = fabs((double)x - flo), dhi = fabs((double)fhi - x);
    if (dlo != dhi) return dlo < dhi ? flo : fhi;
    return (lo >> 16) & 1 ? fhi : flo;
}

// Compares the tensors of `got` with `want` (after `round`) bit for bit; the gaps of `got` must still hold `fill`.
template <typename T, typename R>
static bool same_values(const Table& t, const std::vector<T>& got, const std::vector<float>& want, R round, T fill, std::string* why) {
    std::vector<bool> in_tensor(t.n, false);
    for (const TensorInfo& ti : t.tensors)
        for (size_t j = 0; j < ti.numel; j++) {
            in_tensor[ti.offset + j] = true;
            const T expected = (T)round(want[ti.offset + j]);
            if (memcmp(&got[ti.offset + j], &expected, sizeof(T)) != 0) {
                *why = fmt("%s element %zu: %.9g, expected %.9g", ti.name.c_str(), j, (double)got[ti.offset + j], (double)expected);
                return false;
            }
        }
    for (size_t i = 0; i < t.n; i++)
        if (!in_tensor[i] && memcmp(&got[i], &fill, sizeof(T)) != 0) {
            *why = fmt("gap element %zu was written: %g", i, (double)got[i]);
            return false;
        }
    return true;
}

static float keep(float x) { return x; }

// Writes the small table to tmp/<dir>, reads it back through hf_weights_open + hf_load_tensors.
static std::vector<float> write_and_load(const std::string& dir, const std::string& dtype, size_t max_shard_bytes,
                                         std::vector<std::string>* unused) {
    const Table t = small_table();
    const std::vector<float> src = table_values(t, 1);
    hf_write_tensors(tmp_path(dir), t.tensors, src.data(), t.q_rows, t.kv_rows, dtype, max_shard_bytes, "{\"test\": 1}\n",
                     {{"written_by", "test_huggingface"}});
    const HfWeights w = hf_weights_open(tmp_path(dir).c_str());
    std::vector<float> got(t.n, 7.0f);
    *unused = hf_load_tensors(w, t.tensors, got.data(), t.q_rows, t.kv_rows);
    return got;
}

// Bytes of tensor data (numel * esize) of the small table.
static size_t table_bytes(const Table& t, size_t esize) {
    size_t n = 0;
    for (const TensorInfo& ti : t.tensors) n += ti.numel * esize;
    return n;
}

static void test_roundtrip_single() {
    const Table t = small_table();
    const std::vector<float> src = table_values(t, 1);
    std::vector<std::string> unused;
    std::vector<float> got = write_and_load("single_f32", "F32", 1u << 30, &unused);
    std::string why;
    check(same_values(t, got, src, keep, 7.0f, &why) && unused.empty(), "weights F32, one file: bit-exact round trip, gaps untouched",
          "%s (%zu unused)", why.c_str(), unused.size());
    const std::string dir = tmp_path("single_f32");
    check(exists(dir + "/model.safetensors") && !exists(dir + "/model.safetensors.index.json") && read_file_bytes(dir + "/config.json") == "{\"test\": 1}\n",
          "weights F32, one file: model.safetensors and config.json, no index");
    const HfWeights w = hf_weights_open(dir.c_str());
    const std::vector<std::string> names = hf_weights_names(w);
    bool hf_names = names.size() == 1 + 2 * 12 + 2;
    for (const std::string& n : names) hf_names = hf_names && !contains(n, "qkv_proj") && !contains(n, "gate_up_proj");
    check(hf_names && hf_weights_has(w, "model.layers.1.self_attn.v_proj.bias") && hf_weights_has(w, "model.layers.0.mlp.up_proj.weight"),
          "weights: stored under Hugging Face's names (q/k/v, gate/up split out)", "%zu names", names.size());
    // the parts are the right rows: k bias = qkv bias [q_rows, q_rows + kv_rows), up = gate_up rows [I, 2I)
    const TensorInfo& qkv_b = find_tensor(t, "model.layers.1.self_attn.qkv_proj.bias");
    std::vector<float> kb(t.kv_rows);
    hf_weights_get(w, "model.layers.1.self_attn.k_proj.bias", {t.kv_rows}, kb.data());
    const TensorInfo& gu = find_tensor(t, "model.layers.0.mlp.gate_up_proj.weight");
    std::vector<float> up(12 * 8);
    hf_weights_get(w, "model.layers.0.mlp.up_proj.weight", {12, 8}, up.data());
    check(memcmp(kb.data(), &src[qkv_b.offset + t.q_rows], kb.size() * 4) == 0 && memcmp(up.data(), &src[gu.offset + 12 * 8], up.size() * 4) == 0,
          "weights: k_proj.bias and up_proj.weight are the right rows of the fused tensors");
    const Safetensors st = safetensors_read((dir + "/model.safetensors").c_str());
    check(safetensors_meta(st, "format") == "pt" && safetensors_meta(st, "written_by") == "test_huggingface",
          "weights: metadata format=pt plus the extra pairs");
    int rc = system(("python3 test/read_safetensors.py " + dir + "/model.safetensors > /dev/null 2>&1").c_str());
    check(rc == 0, "weights: test/read_safetensors.py (the reference loader's rules) accepts the file", "exit status %d", rc);
    // double values: written as F32, read back as double
    std::vector<double> srcd(src.begin(), src.end()), gotd(t.n, 7.0);
    hf_write_tensors(tmp_path("single_f64"), t.tensors, srcd.data(), t.q_rows, t.kv_rows, "F32", 1u << 30, "{}", {});
    hf_load_tensors(hf_weights_open(tmp_path("single_f64").c_str()), t.tensors, gotd.data(), t.q_rows, t.kv_rows);
    check(same_values(t, gotd, src, keep, 7.0, &why), "weights: double values round trip through F32", "%s", why.c_str());
}

static void test_roundtrip_sharded() {
    const Table t = small_table();
    const std::vector<float> src = table_values(t, 1);
    const size_t max = 700;   // bytes of BF16 data per shard: the 12x8 and 10x8 tensors need a shard of their own
    std::vector<std::string> unused;
    std::vector<float> got = write_and_load("sharded_bf16", "BF16", max, &unused);
    std::string why;
    check(same_values(t, got, src, bf16_reference, 7.0f, &why) && unused.empty(),
          "weights BF16, sharded: round trip equals round-to-nearest-even of the values", "%s", why.c_str());
    const std::string dir = tmp_path("sharded_bf16");
    JsonDoc index = json_read_file((dir + "/model.safetensors.index.json").c_str());
    const int64_t total = index.root().get("metadata").get("total_size").as_int();
    const JsonValue map = index.root().get("weight_map");
    std::set<std::string> shard_names;
    for (size_t i = 0; i < map.size(); i++) shard_names.insert(map.at(i).as_string());
    const size_t n = shard_names.size();
    bool named = n >= 3 && !exists(dir + "/model.safetensors");
    size_t bytes = 0;
    bool small = true;
    for (size_t k = 1; k <= n; k++) {
        const std::string name = fmt("model-%05zu-of-%05zu.safetensors", k, n);
        named = named && shard_names.count(name);
        if (!exists(dir + "/" + name)) { named = false; continue; }
        const Safetensors st = safetensors_read((dir + "/" + name).c_str());
        bytes += st.data.size();
        small = small && (st.data.size() <= max || st.entries.size() == 1) && safetensors_meta(st, "format") == "pt";
    }
    check(named && small, "weights BF16, sharded: model-0000K-of-0000N.safetensors, each within max_shard_bytes", "%zu shards", n);
    check(total == (int64_t)table_bytes(t, 2) && bytes == table_bytes(t, 2) && map.size() == 27,
          "weights BF16, sharded: index total_size = bytes of tensor data, every tensor in the weight_map", "total_size %lld, %zu bytes, expected %zu",
          (long long)total, bytes, table_bytes(t, 2));
    got = write_and_load("sharded_f32", "F32", 1000, &unused);
    check(same_values(t, got, src, keep, 7.0f, &why) && exists(tmp_path("sharded_f32/model.safetensors.index.json")),
          "weights F32, sharded: bit-exact round trip", "%s", why.c_str());
    // the files a rewrite does not use are removed: n shards -> m shards -> one file -> shards
    auto shard_files = [&](size_t count, bool present) {
        bool all = true;
        for (size_t k = 1; k <= count; k++) all = all && exists(dir + fmt("/model-%05zu-of-%05zu.safetensors", k, count)) == present;
        return all;
    };
    write_and_load("sharded_bf16", "BF16", 1500, &unused);
    JsonDoc index2 = json_read_file((dir + "/model.safetensors.index.json").c_str());
    std::set<std::string> m_names;
    for (size_t i = 0; i < index2.root().get("weight_map").size(); i++) m_names.insert(index2.root().get("weight_map").at(i).as_string());
    const size_t m = m_names.size();
    bool clean = m >= 2 && m != n && shard_files(n, false) && shard_files(m, true);
    write_and_load("sharded_bf16", "BF16", 1u << 30, &unused);
    clean = clean && exists(dir + "/model.safetensors") && !exists(dir + "/model.safetensors.index.json") && shard_files(m, false);
    write_and_load("sharded_bf16", "BF16", max, &unused);
    clean = clean && !exists(dir + "/model.safetensors") && shard_files(n, true);
    check(clean, "weights: a rewrite removes the files it does not use (other shard count, single <-> shards)", "n %zu m %zu", n, m);
}

static void test_write_refusals() {
    const Table t = small_table();
    std::vector<float> v = table_values(t, 2);
    const TensorInfo& qkv = find_tensor(t, "model.layers.0.self_attn.qkv_proj.weight");
    v[qkv.offset + 5] = NAN;
    expect_error("write refuses: a NaN value, named by Hugging Face tensor and element",
                 [&] { hf_write_tensors(tmp_path("w_nan"), t.tensors, v.data(), t.q_rows, t.kv_rows, "F32", 1u << 30, "{}", {}); },
                 {"not writing", "w_nan", "tensor 'model.layers.0.self_attn.q_proj.weight' element 5 is nan"});
    v = table_values(t, 2);
    v[find_tensor(t, "lm_head.weight").offset + 2] = 3.4e38f;
    expect_error("write refuses: a value that overflows bf16",
                 [&] { hf_write_tensors(tmp_path("w_big"), t.tensors, v.data(), t.q_rows, t.kv_rows, "BF16", 1u << 30, "{}", {}); },
                 {"lm_head.weight", "element 2", "overflows bf16"});
    check(!exists(tmp_path("w_nan/model.safetensors.tmp")) && !exists(tmp_path("w_nan/model.safetensors")),
          "write refuses: no file (not even a temporary one) is left behind");
}

// ----------------------------------------------------------------------------------------------------------------
// Hostile weight files

// A safetensors file of F32 tensors of shape [2] (value 1, 2) named `names`.
static void make_shard(const std::string& path, const std::vector<std::string>& names) {
    SafetensorsWriter w;
    const float v[2] = {1, 2};
    for (const std::string& n : names) safetensors_add_f32(&w, n, {2}, v);
    safetensors_write(w, path);
}

// A fresh directory tmp/<name> holding the index `index` and the given shards.
static std::string make_indexed(const std::string& name, const std::string& index,
                                const std::vector<std::pair<std::string, std::vector<std::string>>>& shards) {
    const std::string dir = tmp_path(name);
    make_dirs(dir);
    write_file_bytes(dir + "/model.safetensors.index.json", index);
    for (const auto& s : shards) make_shard(dir + "/" + s.first, s.second);
    return dir;
}

static void test_index_refusals() {
    const std::string S1 = "model-00001-of-00002.safetensors", S2 = "model-00002-of-00002.safetensors";
    auto idx = [&](const std::string& entries) { return "{\"metadata\": {\"total_size\": 24}, \"weight_map\": {" + entries + "}}"; };
    const std::string good = make_indexed("idx_good", idx("\"a\": \"" + S1 + "\", \"b\": \"" + S1 + "\", \"c\": \"" + S2 + "\""),
                                          {{S1, {"a", "b"}}, {S2, {"c"}}});
    const HfWeights w = hf_weights_open(good.c_str());
    float c[2] = {0, 0};
    hf_weights_get(w, "c", {2}, c);
    check(w.files.size() == 2 && hf_weights_names(w) == std::vector<std::string>{"a", "b", "c"} && c[1] == 2,
          "index: a valid two-shard checkpoint opens", "%zu files", w.files.size());
    struct Case { const char* name; std::string index; std::vector<std::pair<std::string, std::vector<std::string>>> shards; std::vector<std::string> must; };
    const std::vector<Case> cases = {
        {"a missing shard", idx("\"a\": \"" + S1 + "\", \"c\": \"" + S2 + "\""), {{S1, {"a"}}}, {"weight_map.c", S2, "does not exist"}},
        {"a tensor in two shards", idx("\"a\": \"" + S1 + "\", \"b\": \"" + S1 + "\", \"c\": \"" + S2 + "\""), {{S1, {"a", "b"}}, {S2, {"b", "c"}}},
         {S2, "tensor 'b' is also in", S1}},
        {"weight_map naming a tensor its shard lacks", idx("\"a\": \"" + S1 + "\", \"z\": \"" + S1 + "\""), {{S1, {"a"}}},
         {"model.safetensors.index.json: weight_map.z: tensor not found in its shard", S1}},
        {"weight_map naming the wrong shard", idx("\"a\": \"" + S2 + "\", \"b\": \"" + S1 + "\", \"c\": \"" + S2 + "\""), {{S1, {"a", "b"}}, {S2, {"c"}}},
         {"weight_map.a: tensor not in its shard", S2, "but in", S1}},
        {"a shard tensor missing from the index", idx("\"a\": \"" + S1 + "\""), {{S1, {"a", "b"}}}, {S1, "tensor 'b' is not in the index"}},
        {"a ../ shard name", idx("\"a\": \"../" + S1 + "\""), {{S1, {"a"}}}, {"weight_map.a", "shard \"../" + S1 + "\"", "plain"}},
        {"a shard in a subdirectory", idx("\"a\": \"sub/" + S1 + "\""), {{S1, {"a"}}}, {"weight_map.a", "plain *.safetensors file name"}},
        {"a shard that is not .safetensors", idx("\"a\": \"config.json\""), {{S1, {"a"}}}, {"weight_map.a", "shard \"config.json\""}},
        {"a shard name that is a number", idx("\"a\": 1"), {{S1, {"a"}}}, {"weight_map.a", "expected a string"}},
        {"an unknown top-level key", "{\"weight_map\": {\"a\": \"" + S1 + "\"}, \"extra\": 1}", {{S1, {"a"}}}, {"unknown key \"extra\""}},
        {"weight_map missing", "{\"metadata\": {}}", {}, {"missing key \"weight_map\""}},
        {"an empty weight_map", idx(""), {}, {"weight_map", "expected at least one tensor"}},
        {"metadata not an object", "{\"metadata\": 5, \"weight_map\": {\"a\": \"" + S1 + "\"}}", {{S1, {"a"}}}, {"metadata", "expected an object"}},
        {"invalid JSON", "{\"weight_map\": {\"a\": \"" + S1 + "\",}}", {{S1, {"a"}}}, {"invalid JSON"}},
        {"a duplicate weight_map key", idx("\"a\": \"" + S1 + "\", \"a\": \"" + S1 + "\""), {{S1, {"a"}}}, {"duplicate key \"a\""}},
    };
    for (size_t k = 0; k < cases.size(); k++) {
        const std::string dir = make_indexed("idx_bad" + std::to_string(k), cases[k].index, cases[k].shards);
        std::vector<std::string> must = cases[k].must;
        must.push_back("idx_bad" + std::to_string(k));
        expect_error(std::string("index refuses: ") + cases[k].name, [&] { hf_weights_open(dir.c_str()); }, must);
    }
    const std::string both = make_indexed("idx_both", idx("\"a\": \"" + S1 + "\""), {{S1, {"a"}}, {"model.safetensors", {"a"}}});
    expect_error("weights refuse: a directory with both model.safetensors and an index", [&] { hf_weights_open(both.c_str()); },
                 {"idx_both", "holds both"});
    make_dirs(tmp_path("empty_dir"));
    expect_error("weights refuse: a directory without weights", [] { hf_weights_open(tmp_path("empty_dir").c_str()); },
                 {"empty_dir", "model.safetensors.index.json"});
    expect_error("weights refuse: a path that does not exist", [] { hf_weights_open(tmp_path("nothing").c_str()); },
                 {"nothing", "No such file"});
}

static void test_tensor_refusals() {
    SafetensorsWriter sw;
    const float w6[6] = {1, 2, 3, 4, 5, 6}, bad[4] = {0, 1, 2, NAN};
    const int64_t ids[2] = {1, 2};
    const uint16_t halves[3] = {0x3C00, 0xC100, 0x0400}, inf_half[1] = {0x7C00};
    safetensors_add_f32(&sw, "w", {2, 3}, w6);
    safetensors_add_f32(&sw, "nan", {4}, bad);
    safetensors_add_raw(&sw, "ids", "I64", {2}, ids, sizeof ids);
    safetensors_add_raw(&sw, "h", "F16", {3}, halves, sizeof halves);
    safetensors_add_raw(&sw, "hinf", "F16", {1}, inf_half, sizeof inf_half);
    const std::string path = tmp_path("mixed.safetensors");
    safetensors_write(sw, path);
    const HfWeights w = hf_weights_open(path.c_str());
    float h[3];
    hf_weights_get(w, "h", {3}, h);
    check(h[0] == 1.0f && h[1] == -2.5f && h[2] == ldexpf(1, -14), "weights: F16 values read as float", "%g %g %g", h[0], h[1], h[2]);
    float out[8];
    expect_error("weights refuse: shape mismatch", [&] { hf_weights_get(w, "w", {3, 2}, out); },
                 {"mixed.safetensors", "tensor 'w' has shape [2, 3], expected [3, 2]"});
    expect_error("weights refuse: dtype I64", [&] { hf_weights_get(w, "ids", {2}, out); },
                 {"mixed.safetensors", "tensor 'ids' has dtype I64, expected BF16, F16 or F32"});
    expect_error("weights refuse: a NaN value", [&] { hf_weights_get(w, "nan", {4}, out); },
                 {"mixed.safetensors", "tensor 'nan' element 3 is nan"});
    expect_error("weights refuse: an F16 infinity", [&] { hf_weights_get(w, "hinf", {1}, out); }, {"tensor 'hinf' element 0 is inf"});
    expect_error("weights refuse: a missing tensor", [&] { hf_weights_get(w, "zz", {1}, out); }, {"mixed.safetensors", "no tensor 'zz'"});
    // a table tensor whose part is missing, and tensors of the file no table tensor uses
    const Table t = small_table();
    const std::vector<float> src = table_values(t, 3);
    Table partial = t;
    partial.tensors.erase(partial.tensors.begin() + 2);   // model.layers.0.self_attn.qkv_proj.weight
    hf_write_tensors(tmp_path("partial"), partial.tensors, src.data(), t.q_rows, t.kv_rows, "F32", 1u << 30, "{}", {});
    const HfWeights pw = hf_weights_open(tmp_path("partial").c_str());
    std::vector<float> got(t.n);
    expect_error("load refuses: a missing Hugging Face tensor, named with the fused tensor it belongs to",
                 [&] { hf_load_tensors(pw, t.tensors, got.data(), t.q_rows, t.kv_rows); },
                 {"partial", "no tensor 'model.layers.0.self_attn.q_proj.weight', part of our model.layers.0.self_attn.qkv_proj.weight"});
    Table fewer = t;
    fewer.tensors.resize(fewer.tensors.size() - 2);       // without model.norm.weight and lm_head.weight
    const HfWeights fw = hf_weights_open(tmp_path("single_f32").c_str());
    const std::vector<std::string> unused = hf_load_tensors(fw, fewer.tensors, got.data(), t.q_rows, t.kv_rows);
    check(unused == std::vector<std::string>{"lm_head.weight", "model.norm.weight"}, "load: returns the file's tensors no table tensor used",
          "%zu unused", unused.size());
    Table wrong = t;
    wrong.tensors.back().shape = {10, 9};
    expect_error("load refuses: a shape mismatch", [&] { hf_load_tensors(fw, wrong.tensors, got.data(), t.q_rows, t.kv_rows); },
                 {"single_f32/model.safetensors", "tensor 'lm_head.weight' has shape [10, 8], expected [10, 9]"});
}

// ----------------------------------------------------------------------------------------------------------------
// The tiny checkpoint of dev/make_tiny_qwen2.py, loaded into our fused layout

static void test_tiny_python_checkpoint() {
    if (system("python3 -c 'import json, struct' > /dev/null 2>&1") != 0) {
        skip("tiny Qwen2 checkpoint", "python3 not found");
        return;
    }
    struct Case { const char* args; bool untied; };
    const Case cases[] = {{"--dtype bf16 --shards 3", false}, {"--dtype f32 --untied --layers 3 --seed 5", true},
                          {"--dtype f16 --hidden 48 --heads 6 --kv-heads 3 --intermediate 40 --vocab 30", false}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const Case& c = cases[k];
        const std::string dir = tmp_path(fmt("tiny_%zu", k));
        const int rc = system(("python3 dev/make_tiny_qwen2.py " + dir + " " + c.args + " > /dev/null").c_str());
        if (!check(rc == 0, fmt("tiny checkpoint (%s): the script runs", c.args).c_str(), "exit status %d", rc)) continue;
        const Qwen2Config q = qwen2_config_read((dir + "/config.json").c_str());
        const Table t = qwen2_table(q.num_hidden_layers, q.hidden_size, q.num_attention_heads, q.num_key_value_heads,
                                    q.intermediate_size, q.vocab_size, !q.tie_word_embeddings);
        const HfWeights w = hf_weights_open(dir.c_str());
        std::vector<float> v(t.n, 0.0f);
        const std::vector<std::string> unused = hf_load_tensors(w, t.tensors, v.data(), t.q_rows, t.kv_rows);
        check(unused.empty() && q.tie_word_embeddings == !c.untied, fmt("tiny checkpoint (%s): every tensor loads into the fused table", c.args).c_str(),
              "%zu unused, tied %d", unused.size(), q.tie_word_embeddings);
        const int64_t D = q.hidden_size, I = q.intermediate_size;
        const std::string last = "model.layers." + std::to_string(q.num_hidden_layers - 1) + ".";
        std::vector<float> vp(t.kv_rows * D), up(I * D), qb(t.q_rows), norm(D);
        hf_weights_get(w, last + "self_attn.v_proj.weight", {t.kv_rows, D}, vp.data());
        hf_weights_get(w, last + "mlp.up_proj.weight", {I, D}, up.data());
        hf_weights_get(w, "model.layers.0.self_attn.q_proj.bias", {t.q_rows}, qb.data());
        hf_weights_get(w, "model.norm.weight", {D}, norm.data());
        const size_t qkv = find_tensor(t, last + "self_attn.qkv_proj.weight").offset, gu = find_tensor(t, last + "mlp.gate_up_proj.weight").offset;
        const size_t bias = find_tensor(t, "model.layers.0.self_attn.qkv_proj.bias").offset;
        const bool rows = memcmp(vp.data(), &v[qkv + (t.q_rows + t.kv_rows) * D], vp.size() * 4) == 0 &&
                          memcmp(up.data(), &v[gu + I * D], up.size() * 4) == 0 && memcmp(qb.data(), &v[bias], qb.size() * 4) == 0;
        check(rows, fmt("tiny checkpoint (%s): v_proj, up_proj, q bias land in their rows of the fused tensors", c.args).c_str());
        double mean = 0;
        for (float x : norm) mean += x / D;
        check(fabs(mean - 1) < 0.05, fmt("tiny checkpoint (%s): norm weights near 1", c.args).c_str(), "mean %g", mean);
    }
}

// ----------------------------------------------------------------------------------------------------------------
// PEFT adapters

// A PEFT-written adapter_config.json (the keys PEFT 0.13 writes).
static const std::string PEFT_CONFIG = R"({
  "alpha_pattern": {},
  "auto_mapping": null,
  "base_model_name_or_path": "Qwen/Qwen2.5-0.5B",
  "bias": "none",
  "fan_in_fan_out": false,
  "inference_mode": true,
  "init_lora_weights": true,
  "layer_replication": null,
  "layers_pattern": null,
  "layers_to_transform": null,
  "loftq_config": {},
  "lora_alpha": 16,
  "lora_dropout": 0.05,
  "megatron_config": null,
  "megatron_core": "megatron.core",
  "modules_to_save": null,
  "peft_type": "LORA",
  "r": 8,
  "rank_pattern": {},
  "revision": null,
  "target_modules": [
    "v_proj",
    "q_proj"
  ],
  "task_type": "CAUSAL_LM",
  "use_dora": false,
  "use_rslora": false
}
)";

static PeftConfig parse_peft(const std::string& text) {
    JsonDoc doc = json_parse("ad/adapter_config.json", text.data(), text.size());
    return peft_config_parse(doc);
}

static void test_peft_config() {
    const PeftConfig c = parse_peft(PEFT_CONFIG);
    check(c.r == 8 && c.lora_alpha == 16 && c.lora_dropout == 0.05 && !c.use_rslora && c.base_model == "Qwen/Qwen2.5-0.5B" &&
              c.target_modules == std::vector<std::string>{"q_proj", "v_proj"} && peft_scale(c) == 2.0,
          "peft config: a PEFT-written file (targets in our order, scale alpha / r)", "r %d alpha %g dropout %g targets %s", c.r,
          c.lora_alpha, c.lora_dropout, peft_list(c.target_modules).c_str());
    const PeftConfig all = parse_peft(with(with(PEFT_CONFIG, "[\n    \"v_proj\",\n    \"q_proj\"\n  ]", "\"all-linear\""),
                                           "\"use_rslora\": false", "\"use_rslora\": true"));
    check(all.target_modules.size() == 7 && all.target_modules[6] == "down_proj" && fabs(peft_scale(all) - 16 / sqrt(8.0)) < 1e-12,
          "peft config: \"all-linear\" is the 7 projections; rsLoRA scale alpha / sqrt(r)");
    const PeftConfig back = parse_peft(peft_config_json(c));
    check(back.r == c.r && back.lora_alpha == c.lora_alpha && back.lora_dropout == c.lora_dropout && back.use_rslora == c.use_rslora &&
              back.target_modules == c.target_modules && back.base_model == c.base_model,
          "peft config: parse(peft_config_json(c)) == c");
    struct Case { const char* name; const char* from; const char* to; std::vector<std::string> must; };
    const std::vector<Case> cases = {
        {"peft_type PREFIX_TUNING", "\"LORA\"", "\"PREFIX_TUNING\"", {"peft_type: \"PREFIX_TUNING\": expected \"LORA\""}},
        {"task_type SEQ_CLS", "\"CAUSAL_LM\"", "\"SEQ_CLS\"", {"task_type: \"SEQ_CLS\": expected \"CAUSAL_LM\""}},
        {"r 0", "\"r\": 8", "\"r\": 0", {"r: 0 is out of range"}},
        {"r missing", "\"r\": 8,", "", {"missing key \"r\""}},
        {"lora_alpha 0", "\"lora_alpha\": 16", "\"lora_alpha\": 0", {"lora_alpha: 0: expected a positive number"}},
        {"lora_dropout 1", "\"lora_dropout\": 0.05", "\"lora_dropout\": 1", {"lora_dropout: 1: expected 0 <= dropout < 1"}},
        {"lora_dropout negative", "\"lora_dropout\": 0.05", "\"lora_dropout\": -0.1", {"lora_dropout", "expected 0 <= dropout < 1"}},
        {"target lm_head", "\"q_proj\"\n", "\"lm_head\"\n", {"target_modules[1]: \"lm_head\" is not a module this model adapts"}},
        {"target a pattern", "[\n    \"v_proj\",\n    \"q_proj\"\n  ]", "\".*proj\"", {"target_modules", "patterns are not supported"}},
        {"target twice", "\"q_proj\"\n", "\"v_proj\"\n", {"target_modules[1]: \"v_proj\" is listed twice"}},
        {"target empty", "[\n    \"v_proj\",\n    \"q_proj\"\n  ]", "[]", {"target_modules", "non-empty list"}},
        {"bias all", "\"bias\": \"none\"", "\"bias\": \"all\"", {"bias: \"all\": expected \"none\""}},
        {"fan_in_fan_out true", "\"fan_in_fan_out\": false", "\"fan_in_fan_out\": true", {"fan_in_fan_out", "not supported"}},
        {"modules_to_save", "\"modules_to_save\": null", "\"modules_to_save\": [\"lm_head\"]", {"modules_to_save", "not supported"}},
        {"use_dora true", "\"use_dora\": false", "\"use_dora\": true", {"use_dora: expected null, false or empty (not supported: DoRA)"}},
        {"layers_to_transform", "\"layers_to_transform\": null", "\"layers_to_transform\": [0, 1]", {"layers_to_transform", "not supported"}},
        {"rank_pattern", "\"rank_pattern\": {}", "\"rank_pattern\": {\"q_proj\": 4}", {"rank_pattern", "not supported"}},
        {"alpha_pattern", "\"alpha_pattern\": {}", "\"alpha_pattern\": {\"q_proj\": 4}", {"alpha_pattern", "not supported"}},
        {"layer_replication", "\"layer_replication\": null", "\"layer_replication\": [[0, 2]]", {"layer_replication", "not supported"}},
    };
    for (const Case& k : cases) {
        const std::string text = with(PEFT_CONFIG, k.from, k.to);
        std::vector<std::string> must = k.must;
        must.push_back("ad/adapter_config.json");
        expect_error(std::string("peft config refuses: ") + k.name, [&] { parse_peft(text); }, must);
    }
    const PeftConfig bare = parse_peft(R"({"peft_type": "LORA", "r": 2, "target_modules": ["down_proj"], "init_lora_weights": "gaussian"})");
    check(bare.lora_alpha == 8 && bare.lora_dropout == 0 && !bare.use_rslora && bare.base_model.empty(),
          "peft config: PEFT's defaults for absent keys; init_lora_weights of any kind");
}

// Our adapter tensors for `layers` layers of the small table's sizes (D 8, QD 8, KD 4, I 12), the modules of `c`.
static Table adapter_table(int layers, const PeftConfig& c) {
    Table t;
    t.n = 0;
    t.q_rows = t.kv_rows = 0;
    const std::map<std::string, std::pair<int, int>> in_out = {{"q_proj", {8, 8}}, {"k_proj", {8, 4}}, {"v_proj", {8, 4}}, {"o_proj", {8, 8}},
                                                               {"gate_proj", {8, 12}}, {"up_proj", {8, 12}}, {"down_proj", {12, 8}}};
    for (int l = 0; l < layers; l++)
        for (const std::string& m : c.target_modules) {
            const bool attn = std::find(peft_modules().begin(), peft_modules().begin() + 4, m) != peft_modules().begin() + 4;
            const std::string name = "model.layers." + std::to_string(l) + (attn ? ".self_attn." : ".mlp.") + m;
            table_add(&t, name + ".lora_A.weight", {c.r, in_out.at(m).first});
            table_add(&t, name + ".lora_B.weight", {in_out.at(m).second, c.r});
        }
    t.n += 3;
    return t;
}

// Writes tmp/<dir>/adapter_model.safetensors with tensors (name, shape), values 0.5, and the config of `c`.
static std::string make_adapter(const std::string& dir, const PeftConfig& c, const std::vector<std::pair<std::string, std::vector<int64_t>>>& tensors) {
    make_dirs(tmp_path(dir));
    SafetensorsWriter w;
    for (const auto& t : tensors) {
        std::vector<float> v(1000, 0.5f);
        safetensors_add_f32(&w, t.first, t.second, v.data());
    }
    safetensors_write(w, tmp_path(dir) + "/adapter_model.safetensors");
    write_file_bytes(tmp_path(dir) + "/adapter_config.json", peft_config_json(c));
    return tmp_path(dir);
}

static void test_peft_files() {
    PeftConfig c = {4, 8.0, 0.05, false, {"q_proj", "v_proj", "down_proj"}, "Qwen/Qwen2.5-0.5B"};
    const Table t = adapter_table(2, c);
    const std::vector<float> src = table_values(t, 4);
    const std::string dir = tmp_path("adapter");
    peft_write(dir, c, t.tensors, src.data());
    std::vector<float> got(t.n, 7.0f);
    peft_read(dir, c, t.tensors, got.data());
    std::string why;
    check(same_values(t, got, src, keep, 7.0f, &why), "peft: write -> read round trip, bit exact", "%s", why.c_str());
    const Safetensors st = safetensors_read((dir + "/adapter_model.safetensors").c_str());
    check(safetensors_find(st, "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight") != nullptr && st.entries.size() == 12 &&
              safetensors_find(st, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")->shape == std::vector<int64_t>{4, 8},
          "peft: tensors named base_model.model.<ours>, A (r, in), B (out, r)");
    const PeftConfig back = peft_config_read((dir + "/adapter_config.json").c_str());
    check(back.r == 4 && back.lora_alpha == 8 && back.target_modules == c.target_modules && back.base_model == c.base_model,
          "peft: adapter_config.json reads back");
    // the run expects other settings
    struct Mismatch { const char* name; PeftConfig want; std::vector<std::string> must; };
    PeftConfig r8 = c, a16 = c, rs = c, qv = c;
    r8.r = 8;
    a16.lora_alpha = 16;
    rs.use_rslora = true;
    qv.target_modules = {"q_proj", "v_proj"};
    for (const Mismatch& m : {Mismatch{"r", r8, {"r: the file has 4, this run expects 8"}},
                              Mismatch{"lora_alpha", a16, {"lora_alpha: the file has 8, this run expects 16"}},
                              Mismatch{"use_rslora", rs, {"use_rslora: the file has false, this run expects true"}},
                              Mismatch{"target_modules", qv, {"target_modules: the file has [q_proj, v_proj, down_proj], this run expects [q_proj, v_proj]"}}}) {
        std::vector<std::string> must = m.must;
        must.push_back("adapter/adapter_config.json");
        expect_error(std::string("peft refuses: another ") + m.name, [&] { peft_read(dir, m.want, t.tensors, got.data()); }, must);
    }
    // hostile adapter files
    std::vector<std::pair<std::string, std::vector<int64_t>>> names;
    for (const TensorInfo& ti : t.tensors) names.push_back({"base_model.model." + ti.name, ti.shape});
    auto read_dir = [&](const std::string& d) { peft_read(d, c, t.tensors, got.data()); };
    std::vector<std::pair<std::string, std::vector<int64_t>>> extra = names;
    extra.push_back({"base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight", {4, 8}});
    const std::string d_extra = make_adapter("ad_extra", c, extra);
    expect_error("peft refuses: a tensor of a layer the model does not have", [&] { read_dir(d_extra); },
                 {"ad_extra/adapter_model.safetensors", "unexpected tensor 'base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight'"});
    std::vector<std::pair<std::string, std::vector<int64_t>>> named = names;
    for (auto& n : named) n.first = with(n.first, ".weight", ".default.weight");
    const std::string d_named = make_adapter("ad_named", c, named);
    expect_error("peft refuses: names with the adapter name", [&] { read_dir(d_named); },
                 {"ad_named/adapter_model.safetensors", ".lora_A.default.weight", "adapter name", "without it"});
    std::vector<std::pair<std::string, std::vector<int64_t>>> fewer(names.begin(), names.end() - 1);
    const std::string d_missing = make_adapter("ad_missing", c, fewer);
    expect_error("peft refuses: a missing tensor", [&] { read_dir(d_missing); },
                 {"ad_missing/adapter_model.safetensors", "missing adapter tensor 'base_model.model.model.layers.1.mlp.down_proj.lora_B.weight'"});
    std::vector<std::pair<std::string, std::vector<int64_t>>> shaped = names;
    shaped[0].second = {5, 8};
    const std::string d_shape = make_adapter("ad_shape", c, shaped);
    expect_error("peft refuses: a shape mismatch", [&] { read_dir(d_shape); },
                 {"ad_shape/adapter_model.safetensors", "q_proj.lora_A.weight' has shape [5, 8], expected [4, 8]"});
    std::vector<float> bad = src;
    bad[t.tensors[3].offset + 1] = -INFINITY;
    expect_error("peft refuses to write: a non-finite value", [&] { peft_write(tmp_path("ad_inf"), c, t.tensors, bad.data()); },
                 {"ad_inf", "v_proj.lora_B.weight' element 1 is -inf"});
    const std::string d_inf = make_adapter("ad_inf2", c, names);
    SafetensorsWriter w;
    for (const auto& n : names) {
        std::vector<float> v(1000, n.first == names[2].first ? NAN : 0.5f);
        safetensors_add_f32(&w, n.first, n.second, v.data());
    }
    safetensors_write(w, d_inf + "/adapter_model.safetensors");
    expect_error("peft refuses: a NaN in the file", [&] { read_dir(d_inf); }, {"ad_inf2/adapter_model.safetensors", "element 0 is nan"});
    make_dirs(tmp_path("ad_noconfig"));
    expect_error("peft refuses: no adapter_config.json", [&] { read_dir(tmp_path("ad_noconfig")); }, {"ad_noconfig/adapter_config.json"});
}

int main() {
    char tmpl[] = "/tmp/test_huggingface.XXXXXX";
    if (!mkdtemp(tmpl)) { perror("mkdtemp"); return 2; }
    g_dir = tmpl;
    test_config_qwen25();
    test_config_refusals();
    test_config_json();
    test_parts();
    test_roundtrip_single();
    test_roundtrip_sharded();
    test_write_refusals();
    test_index_refusals();
    test_tensor_refusals();
    test_tiny_python_checkpoint();
    test_peft_config();
    test_peft_files();
    if (system(("rm -rf " + g_dir).c_str()) != 0) fprintf(stderr, "warning: could not remove %s\n", g_dir.c_str());
    return test_summary();
}
