// Hugging Face interop (header-only, host code): a Qwen2 config.json, weights in Hugging Face's safetensors layout
// (one file, or shards with an index), and PEFT LoRA adapters, read and written.
//
// Formats
//   config.json    Qwen2ForCausalLM's configuration, a JSON object. Read: hidden_size, intermediate_size,
//                  num_hidden_layers, num_attention_heads, vocab_size (required); num_key_value_heads (default
//                  num_attention_heads), max_position_embeddings (32768), rope_theta (10000), rms_norm_eps (1e-6),
//                  tie_word_embeddings (false), bos_token_id and eos_token_id (null or absent: -1): transformers'
//                  defaults. Every other key is ignored (configs carry many: transformers_version, sliding_window,
//                  max_window_layers, initializer_range, use_cache, torch_dtype, ...).
//   weights        a .safetensors file; a directory holding model.safetensors; or a directory holding
//                  model.safetensors.index.json, {"metadata": {"total_size": BYTES}, "weight_map": {"<tensor>":
//                  "model-00001-of-00002.safetensors", ...}}, and those shards. Tensors are BF16, F16 or F32.
//   adapters       a directory holding adapter_config.json (PEFT's LoraConfig) and adapter_model.safetensors, whose
//                  tensors are named "base_model.model.<our name>", e.g.
//                  base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight (r, in) and ...lora_B.weight
//                  (out, r): the names PEFT's save_pretrained writes (without the adapter name, "default").
//
// Our layout vs Hugging Face's: a layer's q, k, v projections are one tensor "<prefix>self_attn.qkv_proj.weight"
// (q_rows + 2 kv_rows, D) (q rows, then k, then v; likewise ".bias"), and gate and up one "<prefix>mlp.gate_up_proj.weight"
// (2 I, D) (gate rows, then up). hf_parts() maps such a tensor to its Hugging Face tensors (q_proj, k_proj, v_proj;
// gate_proj, up_proj) and their rows; every other tensor keeps its name. Tensor values live in a flat host buffer of
// float or double at TensorInfo::offset (common/parameters.h), rows contiguous.
//
// Validation (every file is hostile): any problem is one fatal() line naming the file, the key or tensor, and what
// was expected. config.json: model_type "qwen2" and architectures containing "Qwen2ForCausalLM" when present,
// hidden_act "silu", no sliding window, no rope_scaling; sizes positive integers (at most 2^20, vocab 2^24);
// num_key_value_heads divides num_attention_heads, which divides hidden_size into an even head width; a head_dim key
// must equal that width; rope_theta and rms_norm_eps positive (JSON numbers are finite); token ids inside the
// vocabulary. Weights: the index strict ({metadata, weight_map} only), shard names plain "*.safetensors" file names
// inside the directory, every shard read and validated by safetensors_read(), every weight_map entry in the shard it
// names, no tensor in two shards, every shard tensor in the index (all shards are read into host memory); a directory
// holding both model.safetensors and an index is refused (which one is meant?). Reading a tensor: dtype BF16, F16 or F32, shape exactly the one expected,
// every value finite. Adapters: adapter_config.json is a plain LoRA (see peft_config_parse), its r, lora_alpha,
// use_rslora and target modules equal to the run's; adapter_model.safetensors holds exactly the expected tensors.
//
// Writing: every file atomically (write_file_atomic); values must be finite (and fit BF16 when written as BF16:
// round to nearest even). Shards are written before their index, and the files of the other layout (a stale
// model.safetensors, index or model-*-of-*.safetensors shard) are removed after it.
//
// API (T is float or double):
//   Qwen2Config qwen2_config_parse(const JsonDoc&);  qwen2_config_read(path);  qwen2_config_json(c, torch_dtype)
//   HfWeights hf_weights_open(path);  hf_weights_has(w, name);  hf_weights_names(w);  hf_weights_get(w, name, shape, T*)
//   hf_parts(name, shape, q_rows, kv_rows)
//   hf_load_tensors(w, tensors, T* values, q_rows, kv_rows) -> the file's tensors no table tensor used
//   hf_write_tensors(dir, tensors, const T* values, q_rows, kv_rows, dtype, max_shard_bytes, config_json, metadata)
//   PeftConfig peft_config_parse(const JsonDoc&);  peft_config_read(path);  peft_config_json(c);  peft_scale(c)
//   peft_write(dir, c, tensors, const T* values);  peft_read(dir, expected, tensors, T* values)
#pragma once
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>
#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>
#include "json.h"
#include "parameters.h"
#include "safetensors.h"
#include "utils.h"

#define HF_MAX_SIZE (1 << 20)        // cap on every width, layer and head count, and max_position_embeddings
#define HF_MAX_VOCAB (1 << 24)

// ----------------------------------------------------------------------------------------------------------------
// JSON helpers

// A double as the shortest JSON number that reads back exactly, written as Python writes floats ("1000000.0",
// "0.05", "1e-06").
inline std::string hf_json_float(double x) {
    char buf[64];
    int p = 1;
    for (; p < 17; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, x);
        if (strtod(buf, nullptr) == x) break;
    }
    const double a = fabs(x);
    if (a >= 1e-4 && a < 1e16) snprintf(buf, sizeof buf, "%.*f", std::max(0, p - 1 - (int)floor(log10(a))), x);
    else snprintf(buf, sizeof buf, "%.*g", p, x);
    if (strtod(buf, nullptr) != x) snprintf(buf, sizeof buf, "%.17g", x);
    std::string s = buf;
    return s.find_first_of(".e") == std::string::npos ? s + ".0" : s;
}

// A positive integer member, at most `cap`; required when def is 0, else `def` when absent or null.
inline int hf_json_int(const JsonValue& root, const char* key, int64_t cap, int def = 0) {
    JsonValue v;
    if (def > 0 && (!root.find(key, &v) || v.is_null())) return def;
    return (int)root.get(key).as_int(1, cap);
}

// A positive number member; `def` when absent.
inline double hf_json_positive(const JsonValue& root, const char* key, double def) {
    JsonValue v;
    if (!root.find(key, &v)) return def;
    const double x = v.as_number();
    if (!(x > 0)) v.fail("%g: expected a positive number", x);
    return x;
}

// null, false, "", [] or {}: an option left off.
inline bool hf_json_empty(const JsonValue& v) {
    return v.is_null() || (v.is_bool() && !v.as_bool()) || (v.is_string() && v.as_string_view().empty()) ||
           ((v.is_array() || v.is_object()) && v.size() == 0);
}

// True when s ends with `suffix`.
inline bool hf_ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Writes `text` to `path` atomically.
inline void hf_write_text(const std::string& path, const std::string& text) {
    write_file_atomic(path, [&](FILE* f, const char* tmp) { fwrite_check(text.data(), text.size(), f, tmp); });
}

// ----------------------------------------------------------------------------------------------------------------
// Qwen2 configuration

typedef struct {
    int hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim;
    int vocab_size, max_position_embeddings, bos_token_id, eos_token_id;   // bos/eos: -1 when null or absent
    double rope_theta, rms_norm_eps;
    bool tie_word_embeddings;
} Qwen2Config;

// The keys that say which model this is: a Qwen2 causal LM with SwiGLU, full attention and plain RoPE.
inline void qwen2_check_kind(const JsonValue& root) {
    JsonValue v;
    if (root.find("model_type", &v) && v.as_string() != "qwen2")
        v.fail("\"%s\": expected \"qwen2\"", json_printable(v.as_string_view()).c_str());
    if (root.find("architectures", &v) && !v.is_null()) {
        bool found = false;
        if (!v.is_array()) v.fail("expected a list holding \"Qwen2ForCausalLM\", found %s", v.type_name());
        for (size_t i = 0; i < v.size(); i++) found = found || v.at(i).as_string() == "Qwen2ForCausalLM";
        if (!found) v.fail("expected a list holding \"Qwen2ForCausalLM\"");
    }
    if (root.find("hidden_act", &v) && v.as_string() != "silu")
        v.fail("\"%s\": expected \"silu\" (SwiGLU; nothing else is supported)", json_printable(v.as_string_view()).c_str());
    if (root.get_bool_or("use_sliding_window", false))
        root.get("use_sliding_window").fail("true: sliding-window attention is not supported (expected false)");
    if (root.find("rope_scaling", &v) && !v.is_null()) v.fail("expected null: RoPE scaling is not supported");
}

// The head layout: GQA groups, and one even head width hidden_size / num_attention_heads (head_dim, if given, equal).
inline void qwen2_check_heads(const JsonValue& root, Qwen2Config* c) {
    if (c->num_attention_heads % c->num_key_value_heads)
        root.get("num_key_value_heads").fail("%d does not divide num_attention_heads = %d", c->num_key_value_heads, c->num_attention_heads);
    if (c->hidden_size % c->num_attention_heads)
        root.get("num_attention_heads").fail("%d does not divide hidden_size = %d", c->num_attention_heads, c->hidden_size);
    c->head_dim = c->hidden_size / c->num_attention_heads;
    JsonValue v;
    if (root.find("head_dim", &v) && !v.is_null() && v.as_int(1, HF_MAX_SIZE) != c->head_dim)
        v.fail("%lld differs from hidden_size / num_attention_heads = %d (a separate head width is not supported)",
               (long long)v.as_int(), c->head_dim);
    if (c->head_dim % 2)
        root.get("num_attention_heads").fail("the head width hidden_size / num_attention_heads = %d is odd (RoPE needs it even)", c->head_dim);
}

// A Qwen2 config.json (doc.name names the file in every message).
inline Qwen2Config qwen2_config_parse(const JsonDoc& doc) {
    const JsonValue root = doc.root();
    if (!root.is_object()) root.fail("expected an object (a Hugging Face config.json), found %s", root.type_name());
    qwen2_check_kind(root);
    Qwen2Config c;
    c.hidden_size = hf_json_int(root, "hidden_size", HF_MAX_SIZE);
    c.intermediate_size = hf_json_int(root, "intermediate_size", HF_MAX_SIZE);
    c.num_hidden_layers = hf_json_int(root, "num_hidden_layers", HF_MAX_SIZE);
    c.num_attention_heads = hf_json_int(root, "num_attention_heads", HF_MAX_SIZE);
    c.num_key_value_heads = hf_json_int(root, "num_key_value_heads", HF_MAX_SIZE, c.num_attention_heads);
    c.vocab_size = hf_json_int(root, "vocab_size", HF_MAX_VOCAB);
    c.max_position_embeddings = hf_json_int(root, "max_position_embeddings", HF_MAX_SIZE, 32768);
    c.bos_token_id = (int)root.get_int_or("bos_token_id", -1, 0, c.vocab_size - 1);
    c.eos_token_id = (int)root.get_int_or("eos_token_id", -1, 0, c.vocab_size - 1);
    c.rope_theta = hf_json_positive(root, "rope_theta", 10000.0);
    c.rms_norm_eps = hf_json_positive(root, "rms_norm_eps", 1e-6);
    c.tie_word_embeddings = root.get_bool_or("tie_word_embeddings", false);
    qwen2_check_heads(root, &c);
    return c;
}

// json_read_file + qwen2_config_parse.
inline Qwen2Config qwen2_config_read(const char* path) { return qwen2_config_parse(json_read_file(path)); }

// A config.json transformers loads as Qwen2ForCausalLM (keys sorted, as transformers writes them); torch_dtype is
// "float32", "bfloat16" or "float16" (what the weights are stored as).
inline std::string qwen2_config_json(const Qwen2Config& c, const std::string& torch_dtype = "float32") {
    if (torch_dtype != "float32" && torch_dtype != "bfloat16" && torch_dtype != "float16")
        fatal("internal: qwen2_config_json: torch_dtype '%s' (expected float32, bfloat16 or float16)", torch_dtype.c_str());
    auto id = [](int t) { return t < 0 ? std::string("null") : std::to_string(t); };
    auto num = [](int n) { return std::to_string(n); };
    return std::string("{\n") +
           "  \"architectures\": [\"Qwen2ForCausalLM\"],\n"
           "  \"attention_dropout\": 0.0,\n"
           "  \"bos_token_id\": " + id(c.bos_token_id) + ",\n"
           "  \"eos_token_id\": " + id(c.eos_token_id) + ",\n"
           "  \"hidden_act\": \"silu\",\n"
           "  \"hidden_size\": " + num(c.hidden_size) + ",\n"
           "  \"intermediate_size\": " + num(c.intermediate_size) + ",\n"
           "  \"max_position_embeddings\": " + num(c.max_position_embeddings) + ",\n"
           "  \"model_type\": \"qwen2\",\n"
           "  \"num_attention_heads\": " + num(c.num_attention_heads) + ",\n"
           "  \"num_hidden_layers\": " + num(c.num_hidden_layers) + ",\n"
           "  \"num_key_value_heads\": " + num(c.num_key_value_heads) + ",\n"
           "  \"rms_norm_eps\": " + hf_json_float(c.rms_norm_eps) + ",\n"
           "  \"rope_theta\": " + hf_json_float(c.rope_theta) + ",\n"
           "  \"tie_word_embeddings\": " + (c.tie_word_embeddings ? "true" : "false") + ",\n"
           "  \"torch_dtype\": \"" + torch_dtype + "\",\n"
           "  \"use_sliding_window\": false,\n"
           "  \"vocab_size\": " + num(c.vocab_size) + "\n}\n";
}

// ----------------------------------------------------------------------------------------------------------------
// Weights: reading

typedef struct {
    std::string path;                                              // what was opened (file or directory)
    std::vector<Safetensors> files;                                // the file, or the shards in index order
    std::map<std::string, std::pair<size_t, size_t>> tensors;      // name -> (index in files, index in its entries)
} HfWeights;

// Reads one safetensors file into `w` (a tensor already in another shard is refused).
inline void hf_weights_add_file(HfWeights* w, const std::string& path) {
    w->files.push_back(safetensors_read(path.c_str()));
    const Safetensors& st = w->files.back();
    for (size_t e = 0; e < st.entries.size(); e++) {
        auto it = w->tensors.find(st.entries[e].name);
        if (it != w->tensors.end())
            fatal("%s: tensor '%s' is also in %s (a tensor must be in one shard)", path.c_str(),
                  safetensors_printable(st.entries[e].name).c_str(), w->files[it->second.first].path.c_str());
        w->tensors[st.entries[e].name] = {w->files.size() - 1, e};
    }
}

// A shard name of an index: a plain "*.safetensors" file name (no directory part, no "..").
inline void hf_check_shard_name(const JsonValue& v) {
    const std::string s = v.as_string();
    const bool plain = s.find_first_of(std::string("/\\\0", 3)) == std::string::npos && s[0] != '.';
    if (!plain || s.size() <= 12 || !hf_ends_with(s, ".safetensors"))
        v.fail("shard \"%s\": expected a plain *.safetensors file name inside the directory", json_printable(s).c_str());
}

// The shards of an index: reads and validates the index, then every shard it names, and matches the two.
inline void hf_weights_open_index(HfWeights* w, const std::string& dir, const std::string& index) {
    JsonDoc doc = json_read_file(index.c_str());
    const JsonValue root = doc.root();
    if (!root.is_object()) root.fail("expected an object {\"metadata\": ..., \"weight_map\": ...}, found %s", root.type_name());
    root.check_keys({"metadata", "weight_map"});
    JsonValue meta;
    if (root.find("metadata", &meta)) meta.expect_type(JSON_OBJECT);
    const JsonValue map = root.get("weight_map");
    map.expect_type(JSON_OBJECT);
    if (map.size() == 0) map.fail("expected at least one tensor, found {}");
    std::vector<std::string> shards;
    for (size_t i = 0; i < map.size(); i++) {
        hf_check_shard_name(map.at(i));
        const std::string shard = map.at(i).as_string();
        if (std::find(shards.begin(), shards.end(), shard) != shards.end()) continue;
        if (!file_exists((dir + "/" + shard).c_str())) map.at(i).fail("shard %s/%s does not exist", dir.c_str(), shard.c_str());
        shards.push_back(shard);
        hf_weights_add_file(w, dir + "/" + shard);
    }
    for (size_t i = 0; i < map.size(); i++) {
        const std::string name(map.at(i).key()), shard = dir + "/" + map.at(i).as_string();
        auto it = w->tensors.find(name);
        if (it == w->tensors.end()) map.at(i).fail("tensor not found in its shard %s", shard.c_str());
        if (w->files[it->second.first].path != shard)
            map.at(i).fail("tensor not in its shard %s but in %s", shard.c_str(), w->files[it->second.first].path.c_str());
    }
    for (const auto& kv : w->tensors)
        if (!map.has(kv.first))
            fatal("%s: tensor '%s' is not in the index %s", w->files[kv.second.first].path.c_str(),
                  safetensors_printable(kv.first).c_str(), index.c_str());
}

// Opens Hugging Face weights: a .safetensors file, or a directory holding model.safetensors or an index and its shards.
inline HfWeights hf_weights_open(const char* path) {
    struct stat sb;
    if (stat(path, &sb) != 0) fatal("cannot open Hugging Face weights %s: %s", path, strerror(errno));
    HfWeights w;
    w.path = path;
    if (!S_ISDIR(sb.st_mode)) {
        hf_weights_add_file(&w, path);
        return w;
    }
    const std::string dir = path, single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
    const bool has_single = file_exists(single.c_str()), has_index = file_exists(index.c_str());
    if (has_single && has_index)
        fatal("%s: holds both model.safetensors and model.safetensors.index.json (which one is meant? remove the other)", path);
    if (has_single) hf_weights_add_file(&w, single);
    else if (has_index) hf_weights_open_index(&w, dir, index);
    else fatal("%s: expected Hugging Face weights: a directory holding model.safetensors or model.safetensors.index.json", path);
    return w;
}

// True when the weights hold a tensor of that name.
inline bool hf_weights_has(const HfWeights& w, const std::string& name) { return w.tensors.count(name) != 0; }

// Every tensor name, sorted.
inline std::vector<std::string> hf_weights_names(const HfWeights& w) {
    std::vector<std::string> out;
    for (const auto& kv : w.tensors) out.push_back(kv.first);
    return out;
}

// "" when every value is finite, else "element I is nan" (or inf, -inf) of the first that is not.
template <typename T> std::string hf_nonfinite(const T* v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!std::isfinite((double)v[i]))
            return "element " + std::to_string(i) + " is " + (std::isnan((double)v[i]) ? "nan" : v[i] > 0 ? "inf" : "-inf");
    return "";
}

// Tensor `name` of one file into dst: dtype BF16, F16 or F32, exactly `shape`, finite values.
template <typename T>
void hf_tensor_read(const Safetensors& st, const std::string& name, const std::vector<int64_t>& shape, T* dst) {
    const SafetensorsEntry* e = safetensors_require(st, name);
    const std::string pname = safetensors_printable(name);
    if (e->dtype != "BF16" && e->dtype != "F16" && e->dtype != "F32")
        fatal("%s: tensor '%s' has dtype %s, expected BF16, F16 or F32", st.path.c_str(), pname.c_str(), e->dtype.c_str());
    safetensors_get(st, name, shape, dst);
    const std::string bad = hf_nonfinite(dst, safetensors_numel(*e));
    if (!bad.empty()) fatal("%s: tensor '%s' %s (expected finite values)", st.path.c_str(), pname.c_str(), bad.c_str());
}

// Tensor `name` into dst (numel(shape) values); a missing tensor, another shape, dtype or a non-finite value is fatal.
template <typename T>
void hf_weights_get(const HfWeights& w, const std::string& name, const std::vector<int64_t>& shape, T* dst) {
    auto it = w.tensors.find(name);
    if (it == w.tensors.end())
        fatal("%s: no tensor '%s' (the weights hold %zu tensors)", w.path.c_str(), safetensors_printable(name).c_str(), w.tensors.size());
    hf_tensor_read(w.files[it->second.first], name, shape, dst);
}

// ----------------------------------------------------------------------------------------------------------------
// Our fused tensors vs Hugging Face's

typedef struct {
    std::string hf_name;
    int64_t row_begin, rows;     // the rows of our tensor it holds
} HfPart;

// True when name = prefix + infix + suffix with suffix "weight" or "bias" and prefix empty or ending in '.'.
inline bool hf_split_fused(const std::string& name, const std::string& infix, std::string* prefix, std::string* suffix) {
    const size_t at = name.rfind(infix);
    if (at == std::string::npos || (at > 0 && name[at - 1] != '.')) return false;
    *prefix = name.substr(0, at);
    *suffix = name.substr(at + infix.size());
    return *suffix == "weight" || *suffix == "bias";
}

// The Hugging Face tensors of one of ours: q/k/v of a fused qkv_proj (q_rows, kv_rows, kv_rows rows), gate/up of a
// fused gate_up_proj (halves), otherwise the tensor itself (all its rows; 1 for a 0-d scalar).
inline std::vector<HfPart> hf_parts(const std::string& name, const std::vector<int64_t>& shape, int64_t q_rows, int64_t kv_rows) {
    std::string prefix, suffix;
    const int64_t rows = shape.empty() ? 1 : shape[0];
    if (hf_split_fused(name, "self_attn.qkv_proj.", &prefix, &suffix)) {
        if (q_rows <= 0 || kv_rows <= 0 || rows != q_rows + 2 * kv_rows)
            fatal("internal: %s has %lld rows, expected q %lld + 2 x kv %lld", name.c_str(), (long long)rows, (long long)q_rows, (long long)kv_rows);
        const std::string p = prefix + "self_attn.";
        return {{p + "q_proj." + suffix, 0, q_rows}, {p + "k_proj." + suffix, q_rows, kv_rows},
                {p + "v_proj." + suffix, q_rows + kv_rows, kv_rows}};
    }
    if (hf_split_fused(name, "mlp.gate_up_proj.", &prefix, &suffix)) {
        if (rows <= 0 || rows % 2) fatal("internal: %s has %lld rows, expected an even number (gate, then up)", name.c_str(), (long long)rows);
        return {{prefix + "mlp.gate_proj." + suffix, 0, rows / 2}, {prefix + "mlp.up_proj." + suffix, rows / 2, rows / 2}};
    }
    return {{name, 0, rows}};
}

// The shape of a part: ours with `rows` rows.
inline std::vector<int64_t> hf_part_shape(const std::vector<int64_t>& shape, const HfPart& p) {
    std::vector<int64_t> s = shape;
    if (!s.empty()) s[0] = p.rows;
    return s;
}

// Elements per row of a shape (1 for a vector or a scalar).
inline size_t hf_row_numel(const std::vector<int64_t>& shape) {
    size_t n = 1;
    for (size_t d = 1; d < shape.size(); d++) n *= (size_t)shape[d];
    return n;
}

// Loads `tensors` (host values of a flat layout at TensorInfo::offset) from Hugging Face weights, part by part;
// returns the names in the weights that no tensor used (sorted; the caller decides whether to warn).
template <typename T>
std::vector<std::string> hf_load_tensors(const HfWeights& w, const std::vector<TensorInfo>& tensors, T* values, int64_t q_rows, int64_t kv_rows) {
    std::set<std::string> used;
    for (const TensorInfo& ti : tensors)
        for (const HfPart& p : hf_parts(ti.name, ti.shape, q_rows, kv_rows)) {
            if (!hf_weights_has(w, p.hf_name))
                fatal("%s: no tensor '%s'%s (the weights hold %zu tensors)", w.path.c_str(), safetensors_printable(p.hf_name).c_str(),
                      p.hf_name == ti.name ? "" : (", part of our " + ti.name).c_str(), w.tensors.size());
            hf_weights_get(w, p.hf_name, hf_part_shape(ti.shape, p), values + ti.offset + (size_t)p.row_begin * hf_row_numel(ti.shape));
            used.insert(p.hf_name);
        }
    std::vector<std::string> unused;
    for (const auto& kv : w.tensors)
        if (!used.count(kv.first)) unused.push_back(kv.first);
    return unused;
}

// ----------------------------------------------------------------------------------------------------------------
// Weights: writing

// float -> bf16 bits, rounded to nearest even (x finite).
inline uint16_t hf_float_to_bf16(float x) {
    uint32_t bits;
    memcpy(&bits, &x, 4);
    return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

// A Hugging Face tensor to write: values[offset, offset + numel) under `name`.
typedef struct {
    std::string name;
    std::vector<int64_t> shape;
    size_t offset, numel;
} HfPiece;

// Our tensors as Hugging Face tensors (parts split out), in table order; names must be unique.
inline std::vector<HfPiece> hf_pieces(const std::vector<TensorInfo>& tensors, int64_t q_rows, int64_t kv_rows) {
    std::vector<HfPiece> out;
    std::set<std::string> seen;
    for (const TensorInfo& ti : tensors)
        for (const HfPart& p : hf_parts(ti.name, ti.shape, q_rows, kv_rows)) {
            if (!seen.insert(p.hf_name).second) fatal("internal: Hugging Face tensor '%s' written twice", p.hf_name.c_str());
            const size_t row = hf_row_numel(ti.shape);
            out.push_back({p.hf_name, hf_part_shape(ti.shape, p), ti.offset + (size_t)p.row_begin * row, (size_t)p.rows * row});
        }
    return out;
}

// Adds one piece to a shard as F32 or BF16 (double values are rounded to float first); `dir` names the checkpoint in
// the message of a non-finite value.
template <typename T>
void hf_add_piece(SafetensorsWriter* st, const HfPiece& p, const T* values, const std::string& dtype, const std::string& dir) {
    const T* src = values + p.offset;
    const std::string bad = hf_nonfinite(src, p.numel);
    if (!bad.empty()) fatal("not writing %s: tensor '%s' %s (the run diverged?)", dir.c_str(), p.name.c_str(), bad.c_str());
    if (dtype == "F32") {
        safetensors_add_f32(st, p.name, p.shape, src);
        return;
    }
    std::vector<uint16_t> h(p.numel);
    for (size_t i = 0; i < p.numel; i++) {
        h[i] = hf_float_to_bf16((float)src[i]);
        if ((h[i] & 0x7F80) == 0x7F80)
            fatal("not writing %s: tensor '%s' element %zu = %g overflows bf16", dir.c_str(), p.name.c_str(), i, (double)src[i]);
    }
    safetensors_add_raw(st, p.name, "BF16", p.shape, h.data(), h.size() * 2);
}

// Groups pieces (in order) into shards of at most max_bytes each (a bigger piece gets a shard of its own).
inline std::vector<std::vector<size_t>> hf_plan_shards(const std::vector<HfPiece>& pieces, size_t esize, size_t max_bytes) {
    std::vector<std::vector<size_t>> shards(1);
    size_t bytes = 0;
    for (size_t i = 0; i < pieces.size(); i++) {
        const size_t b = pieces[i].numel * esize;
        if (!shards.back().empty() && bytes + b > max_bytes) {
            shards.emplace_back();
            bytes = 0;
        }
        shards.back().push_back(i);
        bytes += b;
    }
    return shards;
}

// True for a shard file name of Hugging Face's pattern, model-<digits>-of-<digits>.safetensors.
inline bool hf_is_shard_name(const std::string& s) {
    const std::string head = "model-", mid = "-of-", tail = ".safetensors";
    if (s.size() < head.size() + mid.size() + tail.size() + 2 || s.compare(0, head.size(), head) != 0 || !hf_ends_with(s, tail))
        return false;
    const std::string nums = s.substr(head.size(), s.size() - head.size() - tail.size());
    const size_t m = nums.find(mid);
    if (m == std::string::npos || m == 0 || m + mid.size() == nums.size()) return false;
    const std::string digits = nums.substr(0, m) + nums.substr(m + mid.size());
    return digits.find_first_not_of("0123456789") == std::string::npos;
}

// Removes the weight files of `dir` that the checkpoint just written does not use: model.safetensors, the index,
// and model-*-of-*.safetensors shards not in `keep`.
inline void hf_remove_stale(const std::string& dir, const std::vector<std::string>& keep) {
    std::vector<std::string> stale = {"model.safetensors", "model.safetensors.index.json"};
    if (DIR* d = opendir(dir.c_str())) {
        while (struct dirent* e = readdir(d))
            if (hf_is_shard_name(e->d_name)) stale.push_back(e->d_name);
        closedir(d);
    }
    for (const std::string& name : stale) {
        if (std::find(keep.begin(), keep.end(), name) != keep.end()) continue;
        const std::string path = dir + "/" + name;
        if (remove(path.c_str()) != 0 && errno != ENOENT) fatal("cannot remove the stale %s: %s", path.c_str(), strerror(errno));
    }
}

// The index of shards: {"metadata": {"total_size": bytes of tensor data}, "weight_map": {name: shard, ...}}.
inline std::string hf_index_json(const std::vector<HfPiece>& pieces, const std::vector<std::vector<size_t>>& shards,
                                 const std::vector<std::string>& names, size_t esize) {
    std::map<std::string, std::string> map;
    size_t total = 0;
    for (size_t s = 0; s < shards.size(); s++)
        for (size_t i : shards[s]) {
            map[pieces[i].name] = names[s];
            total += pieces[i].numel * esize;
        }
    std::string out = "{\n  \"metadata\": {\n    \"total_size\": " + std::to_string(total) + "\n  },\n  \"weight_map\": {";
    size_t k = 0;
    for (const auto& kv : map) out += (k++ ? ",\n    " : "\n    ") + json_quote(kv.first) + ": " + json_quote(kv.second);
    return out + "\n  }\n}\n";
}

// Writes `tensors` under Hugging Face's names (parts split out) as dtype "F32" or "BF16" into `dir` (created):
// model.safetensors when their data fits in max_shard_bytes, else model-0000K-of-0000N.safetensors shards and
// model.safetensors.index.json; every file's metadata {"format": "pt"} plus `metadata`; then config.json
// (config_json, e.g. qwen2_config_json()).
template <typename T>
void hf_write_tensors(const std::string& dir, const std::vector<TensorInfo>& tensors, const T* values, int64_t q_rows, int64_t kv_rows,
                      const std::string& dtype, size_t max_shard_bytes, const std::string& config_json,
                      const std::vector<std::pair<std::string, std::string>>& metadata) {
    if (dtype != "F32" && dtype != "BF16") fatal("internal: hf_write_tensors: dtype '%s' (expected F32 or BF16)", dtype.c_str());
    const size_t esize = safetensors_dtype_size(dtype);
    const std::vector<HfPiece> pieces = hf_pieces(tensors, q_rows, kv_rows);
    const std::vector<std::vector<size_t>> shards = hf_plan_shards(pieces, esize, max_shard_bytes);
    std::vector<std::string> names;
    for (size_t s = 0; s < shards.size(); s++) {
        char buf[64];
        snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
        names.push_back(shards.size() == 1 ? "model.safetensors" : buf);
    }
    make_dirs(dir);
    for (size_t s = 0; s < shards.size(); s++) {
        SafetensorsWriter st;
        safetensors_add_meta(&st, "format", "pt");
        for (const auto& kv : metadata) safetensors_add_meta(&st, kv.first, kv.second);
        for (size_t i : shards[s]) hf_add_piece(&st, pieces[i], values, dtype, dir);
        safetensors_write(st, dir + "/" + names[s]);
    }
    std::vector<std::string> keep = names;
    if (shards.size() > 1) {
        hf_write_text(dir + "/model.safetensors.index.json", hf_index_json(pieces, shards, names, esize));
        keep.push_back("model.safetensors.index.json");
    }
    hf_remove_stale(dir, keep);
    hf_write_text(dir + "/config.json", config_json);
}

// ----------------------------------------------------------------------------------------------------------------
// PEFT LoRA adapters

typedef struct {
    int r;
    double lora_alpha, lora_dropout;
    bool use_rslora;
    std::vector<std::string> target_modules;   // in the order of peft_modules()
    std::string base_model;                    // base_model_name_or_path ("" when null or absent)
} PeftConfig;

// The projections an adapter may target, in our site order (LORA_SITE_NAMES of common/transformer.h).
inline const std::vector<std::string>& peft_modules() {
    static const std::vector<std::string> names = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    return names;
}

// "[q_proj, v_proj]"
inline std::string peft_list(const std::vector<std::string>& names) {
    std::string s;
    for (const std::string& n : names) s += (s.empty() ? "" : ", ") + n;
    return "[" + s + "]";
}

// target_modules: "all-linear" (every projection) or a list of projection names, returned in peft_modules() order.
inline std::vector<std::string> peft_parse_targets(const JsonValue& v) {
    const std::vector<std::string>& known = peft_modules();
    if (v.is_string() && v.as_string() == "all-linear") return known;
    if (v.is_string()) v.fail("\"%s\": expected a list of module names or \"all-linear\" (patterns are not supported)", json_printable(v.as_string_view()).c_str());
    if (!v.is_array() || v.size() == 0) v.fail("expected a non-empty list of module names, found %s", v.is_array() ? "[]" : v.type_name());
    std::vector<bool> on(known.size(), false);
    for (size_t i = 0; i < v.size(); i++) {
        const std::string name = v.at(i).as_string();
        const size_t k = (size_t)(std::find(known.begin(), known.end(), name) - known.begin());
        if (k == known.size()) v.at(i).fail("\"%s\" is not a module this model adapts (expected some of %s)", json_printable(name).c_str(), peft_list(known).c_str());
        if (on[k]) v.at(i).fail("\"%s\" is listed twice", name.c_str());
        on[k] = true;
    }
    std::vector<std::string> out;
    for (size_t k = 0; k < known.size(); k++)
        if (on[k]) out.push_back(known[k]);
    return out;
}

// The keys that say what kind of adapter this is: a plain LoRA of a causal LM, without PEFT's variants.
inline void peft_check_kind(const JsonValue& root) {
    const JsonValue type = root.get("peft_type");
    if (type.as_string() != "LORA") type.fail("\"%s\": expected \"LORA\"", json_printable(type.as_string_view()).c_str());
    JsonValue v;
    if (root.find("task_type", &v) && !v.is_null() && v.as_string() != "CAUSAL_LM")
        v.fail("\"%s\": expected \"CAUSAL_LM\"", json_printable(v.as_string_view()).c_str());
    if (root.find("bias", &v) && v.as_string() != "none")
        v.fail("\"%s\": expected \"none\" (trained biases are not supported)", json_printable(v.as_string_view()).c_str());
    static const struct { const char* key; const char* what; } unsupported[] = {
        {"fan_in_fan_out", "transposed (Conv1D) weights"}, {"use_dora", "DoRA"}, {"modules_to_save", "fully trained extra modules"},
        {"layers_to_transform", "adapting a subset of the layers"}, {"rank_pattern", "a rank per module"},
        {"alpha_pattern", "an alpha per module"}, {"layer_replication", "layer replication"}, {"lora_bias", "a bias on lora_B"},
        {"exclude_modules", "excluding modules"}, {"target_parameters", "adapting parameters"},
        {"trainable_token_indices", "trainable token embeddings"}};
    for (const auto& u : unsupported)
        if (root.find(u.key, &v) && !hf_json_empty(v)) v.fail("expected null, false or empty (not supported: %s)", u.what);
}

// A PEFT adapter_config.json (doc.name names the file): peft_type "LORA", task_type "CAUSAL_LM" or absent, r >= 1,
// lora_alpha > 0, 0 <= lora_dropout < 1, target_modules (see peft_parse_targets), bias "none", and none of PEFT's
// variants (peft_check_kind). init_lora_weights and the other keys are ignored.
inline PeftConfig peft_config_parse(const JsonDoc& doc) {
    const JsonValue root = doc.root();
    if (!root.is_object()) root.fail("expected an object (a PEFT adapter_config.json), found %s", root.type_name());
    peft_check_kind(root);
    PeftConfig c;
    c.r = (int)root.get("r").as_int(1, 1 << 16);
    c.lora_alpha = hf_json_positive(root, "lora_alpha", 8.0);
    c.lora_dropout = root.get_number_or("lora_dropout", 0.0);
    if (!(c.lora_dropout >= 0 && c.lora_dropout < 1)) root.get("lora_dropout").fail("%g: expected 0 <= dropout < 1", c.lora_dropout);
    c.use_rslora = root.get_bool_or("use_rslora", false);
    c.target_modules = peft_parse_targets(root.get("target_modules"));
    c.base_model = root.get_string_or("base_model_name_or_path", "");
    return c;
}

// json_read_file + peft_config_parse.
inline PeftConfig peft_config_read(const char* path) { return peft_config_parse(json_read_file(path)); }

// An adapter_config.json PEFT loads (keys sorted, as PEFT writes them).
inline std::string peft_config_json(const PeftConfig& c) {
    std::string targets;
    for (const std::string& t : c.target_modules) targets += (targets.empty() ? "" : ", ") + json_quote(t);
    return std::string("{\n") +
           "  \"alpha_pattern\": {},\n"
           "  \"base_model_name_or_path\": " + (c.base_model.empty() ? "null" : json_quote(c.base_model)) + ",\n"
           "  \"bias\": \"none\",\n"
           "  \"fan_in_fan_out\": false,\n"
           "  \"inference_mode\": true,\n"
           "  \"init_lora_weights\": true,\n"
           "  \"layers_pattern\": null,\n"
           "  \"layers_to_transform\": null,\n"
           "  \"lora_alpha\": " + hf_json_float(c.lora_alpha) + ",\n"
           "  \"lora_dropout\": " + hf_json_float(c.lora_dropout) + ",\n"
           "  \"modules_to_save\": null,\n"
           "  \"peft_type\": \"LORA\",\n"
           "  \"r\": " + std::to_string(c.r) + ",\n"
           "  \"rank_pattern\": {},\n"
           "  \"revision\": null,\n"
           "  \"target_modules\": [" + targets + "],\n"
           "  \"task_type\": \"CAUSAL_LM\",\n"
           "  \"use_dora\": false,\n"
           "  \"use_rslora\": " + (c.use_rslora ? "true" : "false") + "\n}\n";
}

// The factor of an adapter's output: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA.
inline double peft_scale(const PeftConfig& c) { return c.use_rslora ? c.lora_alpha / sqrt((double)c.r) : c.lora_alpha / c.r; }

// Our adapter tensor's name in a PEFT file.
inline std::string peft_file_name(const std::string& name) { return "base_model.model." + name; }

// Writes an adapter as PEFT's save_pretrained does: dir/adapter_model.safetensors (F32, our names prefixed
// "base_model.model.") and dir/adapter_config.json.
template <typename T>
void peft_write(const std::string& dir, const PeftConfig& c, const std::vector<TensorInfo>& tensors, const T* values) {
    make_dirs(dir);
    SafetensorsWriter st;
    safetensors_add_meta(&st, "format", "pt");
    for (const TensorInfo& ti : tensors) {
        const std::string bad = hf_nonfinite(values + ti.offset, ti.numel);
        if (!bad.empty()) fatal("not writing the adapter %s: tensor '%s' %s (the run diverged?)", dir.c_str(), ti.name.c_str(), bad.c_str());
        safetensors_add_f32(&st, peft_file_name(ti.name), ti.shape, values + ti.offset);
    }
    safetensors_write(st, dir + "/adapter_model.safetensors");
    hf_write_text(dir + "/adapter_config.json", peft_config_json(c));
}

// The adapter settings the weights depend on must be the run's: r, lora_alpha, use_rslora, target_modules.
inline void peft_check_matches(const std::string& path, const PeftConfig& got, const PeftConfig& want) {
    if (got.r != want.r) fatal("%s: r: the file has %d, this run expects %d", path.c_str(), got.r, want.r);
    if (got.lora_alpha != want.lora_alpha)
        fatal("%s: lora_alpha: the file has %g, this run expects %g", path.c_str(), got.lora_alpha, want.lora_alpha);
    if (got.use_rslora != want.use_rslora)
        fatal("%s: use_rslora: the file has %s, this run expects %s", path.c_str(), got.use_rslora ? "true" : "false",
              want.use_rslora ? "true" : "false");
    if (got.target_modules != want.target_modules)
        fatal("%s: target_modules: the file has %s, this run expects %s", path.c_str(), peft_list(got.target_modules).c_str(),
              peft_list(want.target_modules).c_str());
}

// A tensor of the adapter file that the run does not expect: fatal, with a hint when it carries an adapter name.
inline void peft_refuse_extra(const Safetensors& st, const std::string& name, const std::vector<TensorInfo>& tensors) {
    const bool named = (name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos) &&
                       !hf_ends_with(name, ".lora_A.weight") && !hf_ends_with(name, ".lora_B.weight");
    fatal("%s: unexpected tensor '%s'%s: this adapter has %zu tensors, named like '%s'", st.path.c_str(), safetensors_printable(name).c_str(),
          named ? " (it carries an adapter name: expected PEFT's saved names, without it)" : "", tensors.size(),
          tensors.empty() ? "" : peft_file_name(tensors[0].name).c_str());
}

// Reads an adapter written by PEFT (or peft_write) into `tensors` (our names, host values at TensorInfo::offset):
// adapter_config.json must match `expected` (peft_check_matches), adapter_model.safetensors must hold exactly the
// expected tensors, with their shapes, finite.
template <typename T>
void peft_read(const std::string& dir, const PeftConfig& expected, const std::vector<TensorInfo>& tensors, T* values) {
    const std::string config = dir + "/adapter_config.json", model = dir + "/adapter_model.safetensors";
    peft_check_matches(config, peft_config_read(config.c_str()), expected);
    const Safetensors st = safetensors_read(model.c_str());
    std::set<std::string> wanted;
    for (const TensorInfo& ti : tensors) wanted.insert(peft_file_name(ti.name));
    for (const SafetensorsEntry& e : st.entries)
        if (!wanted.count(e.name)) peft_refuse_extra(st, e.name, tensors);
    for (const TensorInfo& ti : tensors) {
        if (!safetensors_find(st, peft_file_name(ti.name)))
            fatal("%s: missing adapter tensor '%s'", model.c_str(), peft_file_name(ti.name).c_str());
        hf_tensor_read(st, peft_file_name(ti.name), ti.shape, values + ti.offset);
    }
}
