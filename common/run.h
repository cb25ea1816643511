// The scaffolding of a trainer's main(): start-up (processes, arguments, device, log) and the timing of the
// training loop (ms per step, samples/s, model TFLOP/s and MFU against the device's peak, progress and ETA).
#pragma once
#include <stdio.h>
#include <map>
#include <string>
#include <vector>
#include "args.h"
#include "checkpoint.h"
#include "device.h"
#include "distributed.h"
#include "logger.h"
#include "rand.h"
#include "utils.h"

typedef struct {
    int rank, world;
    std::string config_text;     // args_dump of the configuration (written into checkpoints and exports)
    std::string device_name;
    double peak_flops;           // the device's dense peak in the build's precision (0: unknown, no MFU)
    Logger log;                  // rank 0 logs; the others only compute
} Run;

// Starts a run: MPI, the arguments (false after --help: the caller returns 0), validate(), the same configuration
// on every rank, the device, the log file `dir`/log.txt (none when dir is empty).
template <typename Validate>
bool run_begin(Run* r, int* argc, char*** argv, const std::vector<ArgSpec>& specs, const char* usage, Validate validate,
               const std::string& dir) {
    dist_init(argc, argv);
    r->rank = dist().rank;
    r->world = dist().world;
    if (!args_parse(*argc, *argv, specs, usage)) {
        dist_finish();
        return false;
    }
    validate();
    r->config_text = args_dump(specs);
    dist_check_same(split_lines(r->config_text), "the configuration line");
    r->device_name = dist_init_device();
    r->peak_flops = device_peak_tflops(r->device_name) * 1e12;
    if (r->rank == 0 && !dir.empty()) make_dirs(dir);
    logger_open(&r->log, dir.empty() ? "" : dir + "/log.txt", r->rank == 0);
    return true;
}

// The configuration a file was written with (its args_dump text, e.g. a checkpoint's) against this run's. A key of
// `fatal_keys` ("a|b|c": the architecture, which the weights mean nothing without) that differs, or that the file
// does not record, stops the run; with warn_others, any other differing key that is not in `quiet_keys` (run
// control: paths, logging, length) is logged as a warning. An arc.cu checkpoint always records its configuration;
// a safetensors file from outside arc.cu has none (stored empty, not `required`), and only its shapes are checked.
inline void config_check_file(Run* r, const char* path, const std::string& stored, const char* fatal_keys,
                              const char* quiet_keys, bool warn_others, bool required) {
    if (stored.empty() && !required) return;
    std::map<std::string, std::string> now;
    for (const std::string& line : split_lines(r->config_text)) {
        const size_t eq = line.find('=');
        if (eq != std::string::npos) now[line.substr(0, eq)] = line.substr(eq + 1);
    }
    auto clip = [](const std::string& v) {                     // the stored text is untrusted: printable, short
        std::string out;
        for (char c : v.substr(0, 80)) out += (c >= 32 && c < 127) ? c : '?';
        return v.size() > 80 ? out + "..." : out;
    };
    std::map<std::string, bool> recorded;
    for (const std::string& line : split_lines(stored)) {
        const size_t eq = line.find('=');
        if (eq == std::string::npos) continue;
        const std::string key = line.substr(0, eq), value = line.substr(eq + 1);
        recorded[key] = true;
        auto it = now.find(key);
        if (it == now.end() || it->second == value) continue;
        if (choice_allowed(fatal_keys, key))
            fatal("%s was written with %s=%s, this run has %s=%s: the architecture must match", path, key.c_str(),
                  clip(value).c_str(), key.c_str(), it->second.c_str());
        if (warn_others && !choice_allowed(quiet_keys, key))
            log_printf(&r->log, "warning: %s was written with %s=%s, this run has %s=%s\n", path, key.c_str(), clip(value).c_str(),
                       key.c_str(), it->second.c_str());
    }
    for (const auto& kv : now)
        if (choice_allowed(fatal_keys, kv.first) && !recorded.count(kv.first))
            fatal("%s does not record %s (its configuration is incomplete): cannot tell whether the architecture matches",
                  path, kv.first.c_str());
}

// resume: the newest of `paths` (newest first) that reads whole, into *ck; a damaged one is skipped with a warning
// (or is fatal when !fallback) and renamed *.damaged once every rank agrees on the one they continue from. Returns
// its path, or "" when paths is empty; fatal when none reads.
inline std::string run_resume_newest(Run* r, const std::vector<std::string>& paths, Checkpoint* ck, bool fallback,
                                     const std::string& dir) {
    std::vector<std::string> damaged;
    std::string newest_error;
    const std::string path = checkpoint_read_newest(paths, ck, [&](const std::string& p, const std::string& why) {
        if (!fallback) fatal("checkpoint %s: %s", p.c_str(), why.c_str());
        log_printf(&r->log, "warning: checkpoint %s is unreadable (%s); trying the previous one\n", p.c_str(), why.c_str());
        if (newest_error.empty()) newest_error = p + ": " + why;
        damaged.push_back(p);
    });
    if (paths.empty()) return "";
    if (path.empty()) fatal("resume: no checkpoint in %s reads (%zu tried; the newest, %s)", dir.c_str(), paths.size(), newest_error.c_str());
    dist_check_same({path, std::to_string(ck->step)}, "the checkpoint resumed from");
    if (r->rank == 0) checkpoint_set_aside(damaged);
    return path;
}

inline void run_end(Run* r) {
    logger_close(&r->log);
    dist_finish();
}

// Timing of the steps a process runs: the first one (warm-up, allocations) is not counted in the averages.
typedef struct {
    double t_start, seconds, flops;
    int first_step, steps;
} RunTiming;

inline RunTiming timing_begin(int first_step) { return {wall_time(), 0, 0, first_step, 0}; }

// Step `step` (counted from 1) took `seconds` for `flops` model FLOPs.
inline void timing_step(RunTiming* t, int step, double seconds, double flops) {
    if (step == t->first_step) return;
    t->seconds += seconds;
    t->flops += flops;
    t->steps++;
}

// " mfu=12.3" (the step's model FLOPs over the device's peak), or "" where the peak is unknown.
inline std::string mfu_field(const Run& r, double flops, double seconds) {
    if (r.peak_flops <= 0 || seconds <= 0) return "";
    char buf[32];
    snprintf(buf, sizeof buf, " mfu=%.1f", 100.0 * flops / seconds / r.peak_flops);
    return buf;
}

// A progress line with the ETA about every 5% of the run (and at its last step).
inline void log_progress(Run* r, const RunTiming& t, int step, int total) {
    const int done = step - t.first_step + 1;
    if (step != total && done % std::max(1, (total - t.first_step + 1) / 20) != 0) return;
    const double elapsed = wall_time() - t.t_start;
    log_printf(&r->log, "progress step=%d/%d (%.1f%%) elapsed=%s eta=%s\n", step, total, 100.0 * step / total,
               format_duration(elapsed).c_str(), format_duration(elapsed / done * (total - step)).c_str());
}

// The run's averages over the timed steps: ms/step, steps/s, samples/s, model TFLOP/s, MFU.
inline void log_timing(Run* r, const RunTiming& t, double samples_per_step) {
    if (t.steps == 0) return;
    char mfu[64] = "";
    if (r->peak_flops > 0)
        snprintf(mfu, sizeof mfu, " mfu=%.1f (of %.0f TFLOP/s peak)", 100.0 * t.flops / t.seconds / r->peak_flops,
                 r->peak_flops / 1e12);
    log_printf(&r->log, "timing steps=%d ms_per_step=%.1f steps_per_s=%.3f samples_per_s=%.1f tflops=%.3g%s elapsed=%s\n",
               t.steps, 1000 * t.seconds / t.steps, t.steps / t.seconds, t.steps * samples_per_step / t.seconds,
               t.flops / t.seconds / 1e12, mfu, format_duration(wall_time() - t.t_start).c_str());
}
