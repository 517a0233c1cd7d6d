#!/usr/bin/env bash
# Every GPU check of issues 11 and 13 on a GPU machine, in two parts of at most ten minutes each: one device call
# each, back to back so that the machine stays warm. Part 1: the CUDA-marked tests of the samplers and the
# tokenizer, and recipes/bench_gpu.py (random-weight models from the real configs, so no weight file is needed
# there). Part 2: bench_gpu.py's torch.compile and CUDA-graph rows; recipes/bench_prompted.py (which LM engine pays
# on CUDA: the model's own forward, the default there, or the packed rows after stored prompts with their tree of
# scored tokens, the default on CPU; new rows and MH-like proposals); the CUDA rows of recipes/bench_tokenize.py.
# Logs and JSON go to $OUT (the device tool's output folder), else ./gpu-out.
#
#   bash recipes/gpu_checks.sh 1          # from the repository root; textdiff is imported from the checkout
#   bash recipes/gpu_checks.sh 2
#
# The tracked tree (about 205 MiB with the shipped weights) is over the device tool's 64 MiB transfer limit: run
# `bash recipes/device_tree.sh shrink` here before the device call (about 21 MiB then travel; no check here needs a
# shipped weight) and `bash recipes/device_tree.sh restore` after it.
#
# The machine's image has torch, transformers, tokenizers, sentencepiece, scipy and pyarrow, but not `datasets`, so
# the test files that import it are not collected here (they hold no CUDA test).
set -o pipefail
part=${1:-}
if [[ $part != 1 && $part != 2 ]]; then echo "usage: bash recipes/gpu_checks.sh 1|2" >&2; exit 2; fi
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$out/gpu.txt"
case "$part" in
  1)
    timeout 180 python3 -m pytest -q -p no:cacheprovider -m gpu tests/mcmc tests/udm tests/models tests/tokenization \
      tests/bad_input/test_keywords_input.py 2>&1 | tee "$out/gpu_tests.log"
    timeout 360 python3 recipes/bench_gpu.py --sets 64 --out "$out/bench_gpu.json" 2>&1 \
      | grep -v "it/s\]" | tee "$out/bench_gpu.log" ;;
  2)
    timeout 300 python3 recipes/bench_gpu.py --compile --skip startup keywords --out "$out/bench_gpu_compile.json" 2>&1 \
      | grep -v "it/s\]" | tee "$out/bench_gpu_compile.log"
    timeout 120 python3 recipes/bench_prompted.py --device cuda --random-weights --rows 512 2>&1 \
      | tee "$out/bench_prompted.log"
    timeout 120 python3 recipes/bench_tokenize.py --lines 50000 --workers 0 --repeats 2 \
      --rows "sentencepiece sample,sentencepiece viterbi,sample cpu,sample cuda,viterbi cuda" 2>&1 \
      | tee "$out/bench_tokenize.log" ;;
esac
