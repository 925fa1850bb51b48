#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30), one after the other, one process
# each, from its committed seeds (seeds/<target>) plus the corpus grown so far
# (corpus/<target>, not committed). Stops at the first crash: the input is left in
# artifacts/<target>/ (reproduce with `cargo fuzz run --sanitizer none <target> <file>`).
#
# No nightly toolchain is needed: cargo-fuzz runs on the stable compiler with
# RUSTC_BOOTSTRAP=1 and without a sanitizer (Rust code panics where ASan would report).
# The build goes to $CARGO_TARGET_DIR/fuzz when that is set, else to fuzz/target.
#
#   fuzz/run.sh            # 30 s per target
#   fuzz/run.sh 600        # a long session: 10 minutes per target
set -euo pipefail

seconds="${1:-30}"
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
target_dir="${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz}"
target_dir="${target_dir:-target}"
fuzz=(--sanitizer none --target-dir "$target_dir")

cargo fuzz build "${fuzz[@]}"
for target in $(cargo fuzz list); do
  echo "== fuzz $target for ${seconds}s"
  mkdir -p "corpus/$target"
  # A UDP datagram is at most 64 KiB: let chitchat's packets be that long, so a
  # decompression bomb of many small blocks fits. Wire messages stay at libFuzzer's default.
  max_len=4096
  [ "$target" = chitchat_packet ] && max_len=65507
  cargo fuzz run "${fuzz[@]}" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len="$max_len" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1
done
