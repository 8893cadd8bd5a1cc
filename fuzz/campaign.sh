#!/usr/bin/env bash
# Long AFL++ campaigns over every fuzz target, resumable across sessions, so that executions
# accumulate towards issue 15's goal (10^8 per target) on a small shared machine.
#
# Each target fuzzes in its own out/<target> (gitignored). A "lane" is one background
# supervisor running one afl-fuzz at a time: it takes the first target (in ORDER) below GOAL
# executions that no other lane holds, fuzzes it until GOAL (afl-fuzz -E counts the executions
# of earlier sessions too: a resume reloads execs_done), then takes the next. Stopped and
# started again, a lane resumes each campaign with `-i -` where it left off.
#
#   ./campaign.sh start [LANES]   start LANES lanes (default 2, at most 2: one per core)
#   ./campaign.sh stop            stop every lane and its afl-fuzz (AFL saves its state)
#   ./campaign.sh probe [SECONDS] every target below GOAL for SECONDS (default 60), two at a
#                                 time, in the foreground (lanes stopped): each one's execs/s
#   ./campaign.sh status          per target: execs_done, execs/s, crashes, hangs, corpus,
#                                 coverage, and the time to GOAL at the current rate
#
# Environment: GOAL (default 100000000), ORDER (targets, first served first; default fastest
# first so the most targets reach GOAL soonest), AFL_FUZZ (the afl-fuzz binary; default the
# one cargo-afl built). Build the binaries first: `cargo afl build --release` in fuzz/.
set -euo pipefail
cd "$(dirname "$0")"

GOAL=${GOAL:-100000000}
ORDER=${ORDER:-"drain_inbound modbus_tcp state_json drain_json rtu_reply command serial_lines sunspec_chain outbox config"}
OUT=out
CLAIMS=$OUT/.claims

afl_fuzz() {
    if [ -n "${AFL_FUZZ:-}" ]; then
        echo "$AFL_FUZZ"
        return
    fi
    local f
    f=$(ls -d "$HOME"/.local/share/afl.rs/rustc-*/afl.rs-*/afl/bin/afl-fuzz 2>/dev/null | tail -n 1)
    if [ -z "$f" ]; then
        echo "campaign.sh: no afl-fuzz under ~/.local/share/afl.rs (cargo install cargo-afl)" >&2
        exit 1
    fi
    echo "$f"
}

stat_of() { # target key -> value from its fuzzer_stats, or empty
    local f=$OUT/$1/default/fuzzer_stats
    [ -f "$f" ] && awk -v k="$2" '$1 == k { print $3 }' "$f" || true
}

execs_of() {
    local e
    e=$(stat_of "$1" execs_done)
    echo "${e:-0}"
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# Claims a target for this lane: a file holding the lane's pid; a dead lane's claim is stale.
claim() {
    local c=$CLAIMS/$1
    if [ -f "$c" ] && alive "$(cat "$c")"; then
        return 1
    fi
    echo $$ >"$c"
}

run_target() { # target [afl-fuzz options]
    local t=$1 input
    shift
    if [ -f "$OUT/$t/default/fuzzer_stats" ]; then
        input=- # resume: the queue, the crashes and execs_done carry on
    else
        input=corpus/$t
    fi
    echo "$(date -u +%FT%TZ) lane $$: $t from $(execs_of "$t") executions" >>"$OUT/campaign.log"
    # -m 200: AFL's memory limit turns an unbounded allocation into a crash.
    AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
        nice -n 19 "$(afl_fuzz)" -m 200 -t 1000 -E "$GOAL" "$@" -i "$input" -o "$OUT/$t" \
        -- "target/release/$t" 2>&1 |
        # Without its screen afl-fuzz prints a line per queue entry (about 1 MB a minute):
        # keep the rest (start-up, warnings that matter, the end) in the log.
        grep -av --line-buffered -e 'Fuzzing test case' -e 'instability detected' \
            >>"$OUT/$t.log" || true
    echo "$(date -u +%FT%TZ) lane $$: $t stopped at $(execs_of "$t") executions" >>"$OUT/campaign.log"
}

lane() {
    trap 'rm -f $(grep -lx $$ $CLAIMS/* 2>/dev/null); exit 0' TERM INT
    while true; do
        local took=""
        for t in $ORDER; do
            [ "$(execs_of "$t")" -lt "$GOAL" ] || continue
            [ -x "target/release/$t" ] || continue
            claim "$t" || continue
            took=$t
            run_target "$t"
            rm -f "$CLAIMS/$t"
            break
        done
        if [ -z "$took" ]; then
            echo "$(date -u +%FT%TZ) lane $$: nothing left below $GOAL" >>"$OUT/campaign.log"
            exit 0
        fi
    done
}

# Every target below GOAL for SECONDS, two at a time, in the foreground: each one's execs/s
# under AFL on this machine (for `status`'s estimates), and the start of its campaign.
probe() {
    local secs=${1:-60} running=()
    for p in "$OUT"/lane-*.pid; do
        if [ -f "$p" ] && alive "$(cat "$p")"; then
            echo "campaign.sh: lanes are running; stop them first" >&2
            exit 1
        fi
    done
    for t in $ORDER; do
        [ "$(execs_of "$t")" -lt "$GOAL" ] && [ -x "target/release/$t" ] || continue
        run_target "$t" -V "$secs" &
        running+=($!)
        if [ "${#running[@]}" -ge 2 ]; then
            wait "${running[@]}"
            running=()
        fi
    done
    wait
}

start() {
    local lanes=${1:-2} running=0
    if [ "$lanes" -gt 2 ]; then
        echo "campaign.sh: at most 2 lanes (one afl-fuzz per core)" >&2
        exit 1
    fi
    mkdir -p "$CLAIMS"
    for p in "$OUT"/lane-*.pid; do
        [ -f "$p" ] && alive "$(cat "$p")" && running=$((running + 1))
    done
    for i in $(seq 1 "$lanes"); do
        [ "$running" -lt "$lanes" ] || break
        local pidfile=$OUT/lane-$i.pid
        if [ -f "$pidfile" ] && alive "$(cat "$pidfile")"; then
            continue
        fi
        setsid nohup "$0" lane </dev/null >>"$OUT/campaign.log" 2>&1 &
        echo $! >"$pidfile"
        running=$((running + 1))
        echo "lane $i: pid $! (process group $!)"
        sleep 1 # so the lanes claim different targets
    done
}

stop() {
    for p in "$OUT"/lane-*.pid; do
        [ -f "$p" ] || continue
        local pid
        pid=$(cat "$p")
        # The lane leads its own process group (setsid): this stops its afl-fuzz too.
        alive "$pid" && kill -TERM -- "-$pid" 2>/dev/null && echo "stopped lane pid $pid"
        rm -f "$p"
    done
    rm -f "$CLAIMS"/* 2>/dev/null || true
}

status() {
    local total=0
    printf '%-14s %-7s %13s %8s %7s %5s %7s %8s %10s\n' \
        target state execs_done execs/s crashes hangs corpus bitmap "to goal"
    for t in $ORDER; do
        local e s state="-" eta="-"
        e=$(execs_of "$t")
        total=$((total + e))
        s=$(stat_of "$t" execs_per_sec)
        if alive "$(stat_of "$t" fuzzer_pid)"; then
            state=running
        elif [ "$e" -ge "$GOAL" ]; then
            state=done
        elif [ -f "$OUT/$t/default/fuzzer_stats" ]; then
            state=stopped
        fi
        if [ "$e" -lt "$GOAL" ] && [ -n "$s" ]; then
            eta=$(awk -v g="$GOAL" -v e="$e" -v s="$s" \
                'BEGIN { if (s > 0) printf "%.1fh", (g - e) / s / 3600; else print "-" }')
        fi
        printf '%-14s %-7s %13s %8s %7s %5s %7s %8s %10s\n' "$t" "$state" "$e" "${s:--}" \
            "$(stat_of "$t" saved_crashes)" "$(stat_of "$t" saved_hangs)" \
            "$(stat_of "$t" corpus_count)" "$(stat_of "$t" bitmap_cvg)" "$eta"
    done
    echo "total executions: $total (goal $GOAL per target)"
    for p in "$OUT"/lane-*.pid; do
        [ -f "$p" ] || continue
        alive "$(cat "$p")" && echo "lane $(basename "$p" .pid): pid $(cat "$p") running"
    done
    true
}

mkdir -p "$OUT"
case "${1:-status}" in
start) start "${2:-2}" ;;
stop) stop ;;
status) status ;;
probe) probe "${2:-60}" ;;
lane) lane ;;
*)
    echo "usage: $0 start [LANES] | stop | status | probe [SECONDS]" >&2
    exit 2
    ;;
esac
