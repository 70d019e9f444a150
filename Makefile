# vlmrl: every target sets up .venv first if it is missing (torch 2.13.0 first, then the project).
#   make test | make demo | make iteration N=2 EXP=name RECIPE=recipes/<model>/<game> | make experiment ITERATIONS=5
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vlmrl-installed

EXP ?= demo
RECIPE ?= recipes/tiny-smolvlm/pong
N ?= 1
ITERATIONS ?= 2
TINY_MODEL ?= data/models/tiny-smolvlm
# Extra flags of the tiny model's build, e.g. TINY_ARGS=--physics-caption (give it its own TINY_MODEL).
TINY_ARGS ?=
# The base model of iteration 1 (and of entry 0), instead of the recipe's: e.g. BASE=$(TINY_MODEL).
BASE ?=
GAME ?= ALE/Pong-v5
REF_EPISODES ?= 10
# Seed knobs: empty means "as the recipe says".
EPISODES ?=
MAX_STEPS ?=
REFLECTION_RATE ?=
EPOCHS ?=
BATCH_SIZE ?=
LR ?=
# A rate that falls across iterations: LR_SCHEDULE=11:3e-4 starts each cosine from iteration 11 on at 3e-4
# (the iterations before keep LR or the recipe's); several steps 6:5e-4,11:3e-4; none drops the recipe's.
LR_SCHEDULE ?=
EVAL_EPISODES ?=
EVAL_MAX_STEPS ?=
# EVAL_EVERY=2: `make experiment` evaluates every 2nd iteration and the last one (the others train only); a later
# run with EVAL_EVERY=1 evaluates the ones it skipped. `make iteration N=k` always evaluates iteration k.
EVAL_EVERY ?= 1
# LOOP_JOBS=2: `make experiment` evaluates iteration k while iteration k+1 collects, reflects and trains (both start
# from checkpoint k, so the results are the same); 1 (the default) runs one phase at a time.
LOOP_JOBS ?= 1
# AVERAGE=11:3: iteration k >= 11 is evaluated (and published) as the mean of the weights of the last 3 checkpoints
# from 11 on; collection and training still use each iteration's own checkpoint. Default: the recipe's
# average_checkpoints; AVERAGE=none evaluates each checkpoint as itself.
AVERAGE ?=
TEACHER_MIX ?=
# A teacher mix that changes across iterations: TEACHER_MIX_SCHEDULE=11:0 lets the oracle play no collection step
# from iteration 11 on (the iterations before keep TEACHER_MIX or the recipe's). The tiny Pong recipe names 11:0
# (teacher_mix_schedule in its experiment.yaml); none drops the recipe's.
TEACHER_MIX_SCHEDULE ?=
SAMPLE_BUDGET ?=
# PHASE_WEIGHT=toward=2: a step with Pong's ball coming toward you is twice as likely to be drawn into the budget.
PHASE_WEIGHT ?=
# Who reflects and on what (learning without the oracle): REFLECTOR=grounded|self-imitation|self|model:<id>,
# OUTCOME=ahead|ball_at_paddle|point|next, REHEARSAL_SHARE=0.2 (perception questions in each training set),
# ADVANTAGE=1 (self-imitation keeps the steps that beat their episode's mean return). A reflector other than
# the oracle also collects with no oracle play (teacher mix 0) unless TEACHER_MIX is given.
REFLECTOR ?=
ADVANTAGE ?=
# LORA=1: each iteration fine-tunes LoRA adapters (r 16, alpha 32), merged into its checkpoint, not every weight.
LORA ?=
# VISION_HEAD=1: while training, a linear head on the vision tower also learns each corrected action, its loss
# times this weight added (train.py --vision-head-weight; the head is dropped before saving). The tiny Pong
# recipe trains with weight 1; VISION_HEAD=0 turns it off.
VISION_HEAD ?=
# VISION_HEAD_AT=connector: that head reads the image tokens the language model reads, not the tower's features.
VISION_HEAD_AT ?=
OUTCOME ?=
REHEARSAL_SHARE ?=
# The experiment's seed (0-9): collection seeds, reflection sampling, training and evaluation sampling.
SEED ?=
HUB ?=
LAUNCH ?=
# FORCE=1: knobs that differ from those a finished phase ran with are reported, not refused; what ran is kept
# and what is left runs with the new knobs. Without it such a run is refused (use a new EXP instead).
FORCE ?=
# Set by `experiment` for the iterations it runs: the knobs were checked once, up front.
CHECKED ?=

# PORTABLE=1: every phase (and the tiny model's build) on the CPU's baseline kernels, at about twice the CPU time:
# the same weights whichever kernels one CPU offers, not across CPU makers (see README, Reproducibility).
ifeq ($(PORTABLE),1)
export VLMRL_PORTABLE_KERNELS := 1
endif

EXPERIMENTS ?= data/experiments
EXP_DIR := $(EXPERIMENTS)/$(EXP)
OVERRIDES := $(if $(EPISODES),--episodes $(EPISODES)) $(if $(MAX_STEPS),--max-steps $(MAX_STEPS)) \
	$(if $(REFLECTION_RATE),--reflection-rate $(REFLECTION_RATE)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
	$(if $(BATCH_SIZE),--batch-size $(BATCH_SIZE)) $(if $(LR),--lr $(LR)) \
	$(if $(LR_SCHEDULE),--lr-schedule $(LR_SCHEDULE)) \
	$(if $(AVERAGE),--average $(AVERAGE)) \
	$(if $(EVAL_EPISODES),--eval-episodes $(EVAL_EPISODES)) $(if $(EVAL_MAX_STEPS),--eval-max-steps $(EVAL_MAX_STEPS)) \
	$(if $(TEACHER_MIX),--teacher-mix $(TEACHER_MIX)) $(if $(HUB),--hub $(HUB)) \
	$(if $(TEACHER_MIX_SCHEDULE),--teacher-mix-schedule $(TEACHER_MIX_SCHEDULE)) \
	$(if $(SEED),--seed $(SEED)) $(if $(SAMPLE_BUDGET),--sample-budget $(SAMPLE_BUDGET)) \
	$(if $(PHASE_WEIGHT),--phase-weight $(PHASE_WEIGHT)) \
	$(if $(REFLECTOR),--reflector $(REFLECTOR)) $(if $(OUTCOME),--outcome $(OUTCOME)) \
	$(if $(REHEARSAL_SHARE),--rehearsal-share $(REHEARSAL_SHARE)) $(if $(ADVANTAGE),--advantage $(ADVANTAGE)) \
	$(if $(LORA),--lora $(LORA)) $(if $(VISION_HEAD),--vision-head $(VISION_HEAD)) \
	$(if $(VISION_HEAD_AT),--vision-head-at $(VISION_HEAD_AT)) \
	$(if $(LAUNCH),--launch "$(LAUNCH)") $(if $(BASE),--base-model $(BASE))
PHASE = $(PY) -m vlmrl.experiment phase --exp $(EXP) --root $(EXPERIMENTS) --recipe $(RECIPE) $(OVERRIDES)
# Every phase's knobs parsed by its own script's dataclasses, and compared with what finished phases ran with,
# before any phase runs: a bad knob of a late phase is refused before collection starts.
CHECK = $(PY) -m vlmrl.experiment check --exp $(EXP) --root $(EXPERIMENTS) --recipe $(RECIPE) $(OVERRIDES) \
	$(if $(FORCE),--force)
# The tiny recipe's base model is built here; other recipes' come from the Hub.
BASE_DEP ?= $(if $(findstring tiny-smolvlm,$(RECIPE)),$(TINY_MODEL)/config.json)
prev = $(shell echo $$(($(1)-1)))
model_dep = $(if $(filter 1,$(1)),$(BASE_DEP),$(EXP_DIR)/iteration_$(call prev,$(1))/checkpoint/train_metrics.json)

.PHONY: install test test-slow lint tiny-model demo iteration experiment branch report reference baseline compare clean-demo

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,baselines]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check .

tiny-model: $(TINY_MODEL)/config.json

$(TINY_MODEL)/config.json: | $(STAMP)
	$(PY) -m vlmrl.tiny_model --output-dir $(TINY_MODEL) $(TINY_ARGS)

# --- reference lines: the random and the oracle policy under the evaluation protocol --------------
REF_DIR = data/reference/$(shell echo '$(GAME)' | sed 's|.*/||' | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\{1,\}/-/g')
reference: $(REF_DIR)/random/results.json $(REF_DIR)/oracle/results.json

$(REF_DIR)/%/results.json: | $(STAMP)
	$(PY) evaluate.py --policy $* --game $(GAME) --episodes $(REF_EPISODES) --output-dir $(REF_DIR)/$*

# --- the loop: each phase a file target, so an interrupted iteration resumes where it stopped --------
.SECONDEXPANSION:
# Phase outputs are results, never intermediates to delete.
.SECONDARY:
$(EXP_DIR)/iteration_0/results.json: $(BASE_DEP) | $(STAMP)
	$(PHASE) evaluate --iteration 0

$(EXP_DIR)/iteration_%/episodes/.vlmrl/summary.json: $$(call model_dep,$$*) | $(STAMP)
	$(PHASE) collect --iteration $*

$(EXP_DIR)/iteration_%/reflections/.vlmrl/summary.json: $(EXP_DIR)/iteration_%/episodes/.vlmrl/summary.json
	$(PHASE) reflect --iteration $*

$(EXP_DIR)/iteration_%/checkpoint/train_metrics.json: $(EXP_DIR)/iteration_%/reflections/.vlmrl/summary.json
	$(PHASE) train --iteration $*

$(EXP_DIR)/iteration_%/results.json: $(EXP_DIR)/iteration_%/checkpoint/train_metrics.json
	$(PHASE) evaluate --iteration $*
	$(PY) -m vlmrl.experiment summarize --exp $(EXP) --root $(EXPERIMENTS) --recipe $(RECIPE)

iteration: $(BASE_DEP) | $(STAMP)
	$(if $(CHECKED),,$(CHECK) --iterations '$(N)')
	@$(MAKE) --no-print-directory $(EXP_DIR)/iteration_$(N)/results.json CHECKED=1
	$(PY) -m vlmrl.experiment summarize --exp $(EXP) --root $(EXPERIMENTS) --recipe $(RECIPE)

experiment: $(BASE_DEP) | $(STAMP)
	$(CHECK) --iterations '$(ITERATIONS)' --base-eval --eval-every '$(EVAL_EVERY)' --loop-jobs '$(LOOP_JOBS)'
	@$(MAKE) --no-print-directory $(EXP_DIR)/iteration_0/results.json CHECKED=1
	@$(MAKE) --no-print-directory -j$(LOOP_JOBS) CHECKED=1 $$(for k in $$(seq 1 $(ITERATIONS)); do \
		if (( k % $(EVAL_EVERY) == 0 || k == $(ITERATIONS) )); then echo $(EXP_DIR)/iteration_$$k/results.json; \
		else echo $(EXP_DIR)/iteration_$$k/checkpoint/train_metrics.json; fi; done)
	$(PY) -m vlmrl.experiment report --exp $(EXP) --root $(EXPERIMENTS) --recipe $(RECIPE)

# A copy of experiment FROM as it was after iteration AT, to go on with a changed knob:
#   make branch EXP=lr3-s0 FROM=warm-s0 AT=10 && make experiment EXP=lr3-s0 ITERATIONS=14 LR_SCHEDULE=11:3e-4
FROM ?=
AT ?=
branch: | $(STAMP)
	$(PY) -m vlmrl.experiment branch --exp $(EXP) --root $(EXPERIMENTS) --from '$(FROM)' --at '$(AT)'

report: | $(STAMP)
	$(PY) -m vlmrl.experiment report --exp $(EXP) --root $(EXPERIMENTS) --recipe $(RECIPE)

# --- classic RL on the same protocol, and the comparison report -----------------------------------
ALGO ?= ppo
STEPS ?= 100000
SEEDS ?= 3
BUDGETS ?= 10000,25000,50000,100000

baseline: | $(STAMP)
	$(PY) baselines.py --algo $(ALGO) --game $(GAME) --steps $(STEPS) --seeds $(SEEDS) \
		--budgets $(BUDGETS) --output-dir data/baselines

compare: | $(STAMP)
	$(PY) -m vlmrl.compare --experiment $(EXP_DIR) --baselines data/baselines --output-dir $(EXP_DIR)/compare \
		$(if $(wildcard $(REF_DIR)/random/results.json),--random $(REF_DIR)/random/results.json) \
		$(if $(wildcard $(REF_DIR)/oracle/results.json),--oracle $(REF_DIR)/oracle/results.json)

# The quick run: the base model's evaluation, then 2 iterations of 10 episodes, tiny recipe, oracle teacher.
# Three iterations: the first point the tiny model wins on this recipe (15,000 agent steps).
DEMO_ITERATIONS ?= 3
# The tiny model's build runs on one thread: the reference lines run beside it, on the other core.
# Its loop runs two phases at once (LOOP_JOBS=2) unless LOOP_JOBS is given: 19.4 min from a fresh clone, against 22.5.
DEMO_LOOP_JOBS = $(if $(filter command line environment,$(origin LOOP_JOBS)),$(LOOP_JOBS),2)
demo: | $(STAMP)
	@$(MAKE) --no-print-directory -j2 tiny-model reference
	@$(MAKE) --no-print-directory experiment EXP=$(EXP) RECIPE=recipes/tiny-smolvlm/pong ITERATIONS=$(DEMO_ITERATIONS) \
		LOOP_JOBS=$(DEMO_LOOP_JOBS)

clean-demo:
	rm -rf data/experiments/demo
