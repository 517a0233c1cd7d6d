#!/usr/bin/env bash
# Every GPU check of issues 11 and 13 in one call on a GPU machine (about 8 minutes on an H200): the CUDA-marked
# tests of the samplers and the tokenizer, recipes/bench_gpu.py (random-weight models from the real configs, so no
# weight file is needed there), recipes/bench_prompted.py (which LM engine pays on CUDA: the model's own forward, the
# default there, or the packed rows after stored prompts with their tree of scored tokens, the default on CPU; new
# rows and MH-like proposals) and the CUDA rows of
# recipes/bench_tokenize.py. Logs and JSON go to $OUT (the device
# tool's output folder), else ./gpu-out.
#
#   bash recipes/gpu_checks.sh            # from the repository root; textdiff is imported from the checkout
#
# The tracked tree (about 205 MiB with the shipped weights) is over the device tool's 64 MiB transfer limit: run
# `bash recipes/device_tree.sh shrink` here before the device call (about 21 MiB then travel; no check here needs a
# shipped weight) and `bash recipes/device_tree.sh restore` after it.
#
# The machine's image has torch, transformers, tokenizers, sentencepiece, scipy and pyarrow, but not `datasets`, so
# the test files that import it are not collected here (they hold no CUDA test).
set -o pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$out/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/mcmc tests/udm tests/models tests/tokenization \
  tests/bad_input/test_keywords_input.py 2>&1 | tee "$out/gpu_tests.log"
timeout 240 python3 recipes/bench_gpu.py --compile --sets 64 --out "$out/bench_gpu.json" 2>&1 \
  | grep -v "it/s\]" | tee "$out/bench_gpu.log"
timeout 90 python3 recipes/bench_prompted.py --device cuda --random-weights --rows 512 2>&1 | tee "$out/bench_prompted.log"
timeout 90 python3 recipes/bench_tokenize.py --lines 50000 --workers 0 --repeats 2 \
  --rows "sentencepiece sample,sentencepiece viterbi,sample cpu,sample cuda,viterbi cuda" 2>&1 | tee "$out/bench_tokenize.log"
