#!/usr/bin/env bash
# Side-by-side benchmark of flamegrid's sampler against eu-stack and gdb, and of its two
# backends (--sampler ptrace / perf) against `perf record --call-graph dwarf` (Debian package
# linux-perf; the backends section needs perf_event_open, i.e. root or CAP_PERFMON), in one run.
#
#   benches/compare.sh            # full run (about 5 minutes on a 2-vCPU machine)
#   benches/compare.sh --quick    # fewer rounds, for a smoke test
#
# Builds the release agent and the comparison driver, installs eu-stack (elfutils) and gdb if
# missing, then runs `flamegrid-compare`, which alternates all tools on the same processes and
# prints a Markdown report: to stdout and to benches/report.md. Extra arguments are passed to
# flamegrid-compare (see `--help`). Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

need_install=()
command -v eu-stack >/dev/null || need_install+=(elfutils)
command -v gdb >/dev/null || need_install+=(gdb)
if ((${#need_install[@]})); then
    echo "[compare.sh] installing ${need_install[*]}" >&2
    if [[ $(id -u) -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_install[@]}" >&2
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_install[@]}" >&2
    fi
fi

echo "[compare.sh] building (release)" >&2
cargo build --release --quiet -p flamegrid-agent --bin flamegrid-agent >&2
cargo build --release --quiet -p flamegrid-benches --bin flamegrid-compare >&2

target_dir="${CARGO_TARGET_DIR:-target}"
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
"$target_dir/release/flamegrid-compare" --agent "$target_dir/release/flamegrid-agent" "$@" >"$report"
{
    cat "$report"
    echo
    echo "_Reproduce with \`benches/compare.sh $*\` (commit $(git rev-parse --short HEAD 2>/dev/null || echo 'uncommitted'), $(date -u '+%Y-%m-%d %H:%M UTC'))._"
} | tee benches/report.md
