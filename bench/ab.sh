#!/usr/bin/env bash
# A/B two builds of forkpool under the same load, alternating, a fresh server each run:
#   bench/ab.sh DIR_A DIR_B [SERVER ARGS...]
# DIR_A and DIR_B each hold a `forkpool` and `forkpool-bench` (copies of target/release). Each round runs
# JOBS `/bin/true` jobs (default 4000) at CONC in flight (default 64) against A, then B, and prints jobs/s and the
# server's CPU per job (its own, and with its reaped children) from /proc/PID/stat. ROUNDS rounds (default 3).
# Raw commands must be allowed (e.g. --allow-raw-commands, or a --config that does).
set -euo pipefail
a=$1 b=$2
shift 2
jobs=${JOBS:-4000} conc=${CONC:-64} rounds=${ROUNDS:-3}
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15, $16 + $17}' "/proc/$1/stat"; }
for round in $(seq 1 "$rounds"); do
    for dir in "$a" "$b"; do
        port=$((50000 + RANDOM % 10000))
        "$dir/forkpool" serve --listen "127.0.0.1:$port" "$@" > /dev/null 2>&1 &
        pid=$!
        for _ in $(seq 1 100); do "$dir/forkpool" status --server "http://127.0.0.1:$port" > /dev/null 2>&1 && break; sleep 0.05; done
        "$dir/forkpool" bench --target "http://127.0.0.1:$port" --jobs 300 --concurrency 8 -- /bin/true > /dev/null
        read -r self0 children0 < <(cpu "$pid")
        rate=$("$dir/forkpool" bench --target "http://127.0.0.1:$port" --jobs "$jobs" --concurrency "$conc" -- /bin/true |
            awk '$1 == "rate" {print $2}')
        read -r self1 children1 < <(cpu "$pid")
        kill -TERM "$pid"
        wait "$pid" || true
        us() { echo $(( ($1) * 1000000 / tck / jobs )); }
        echo "round $round $dir: $rate jobs/s; server CPU per job $(us "$self1 - $self0") µs, with its children $(us "$self1 + $children1 - $self0 - $children0") µs"
    done
done
