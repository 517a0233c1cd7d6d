#!/usr/bin/env bash
# Make the working tree fit the GPU machine's 64 MiB transfer limit, and put it back afterwards.
#
#   bash recipes/device_tree.sh shrink    # before the device calls: the shipped weights stop travelling
#   bash recipes/device_tree.sh size      # what would travel now (tracked + untracked-not-ignored files), in MiB
#   bash recipes/device_tree.sh restore   # after them: the index and .git/info/exclude as they were
#
# The shipped checkpoints (textdiff/assets/models/*/model.safetensors, about 190 MB) are taken out of the index and
# ignored through .git/info/exclude; the files stay on disk, their configs and tokenizers keep travelling. The GPU
# checks need no shipped weight: recipes/bench_gpu.py builds random-weight models from the configs and the CUDA tests
# build their own. Do not commit between shrink and restore (the commit would delete the weights).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude=.git/info/exclude
weights='textdiff/assets/models/*/model.safetensors'
begin='# device_tree.sh: begin' end='# device_tree.sh: end'

size() {
  git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
    | awk '{s += $1} END {printf "%.1f MiB travel (limit 64 MiB)\n", s / 1048576}'
}

case "${1:-}" in
  shrink)
    if grep -qxF "$begin" "$exclude" 2>/dev/null; then echo "already shrunk"; size; exit 0; fi
    mapfile -d '' files < <(git ls-files -z -- "$weights")
    { echo "$begin"; printf '/%s\n' "${files[@]}"; echo "$end"; } >> "$exclude"
    git rm -q --cached -- "${files[@]}"
    size ;;
  restore)
    git reset -q -- textdiff/assets/models
    sed -i "/^$begin\$/,/^$end\$/d" "$exclude"
    git status --short -- textdiff/assets/models
    size ;;
  size) size ;;
  *) echo "usage: bash recipes/device_tree.sh shrink|size|restore" >&2; exit 2 ;;
esac
