# Sourced by benches/run.sh and scripts/profile-ab.sh: waiting for an idle machine
# before a timed run. Needs QUIET_WAIT (seconds) set by the caller.

# Percentage of CPU time busy (all cores) over half a second, from /proc/stat.
cpu_busy() {
    local a b
    a=($(head -1 /proc/stat)); sleep 0.5; b=($(head -1 /proc/stat))
    local total=0 i
    for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
    local idle=$((b[4] - a[4] + b[5] - a[5]))
    echo $(((100 * (total - idle)) / (total > 0 ? total : 1)))
}

# Waits (up to QUIET_WAIT seconds) until the machine is mostly idle.
wait_quiet() {
    local start=$SECONDS busy
    while busy=$(cpu_busy); [ "$busy" -gt 10 ]; do
        if [ $((SECONDS - start)) -ge "$QUIET_WAIT" ]; then
            echo "warning: CPUs still ${busy}% busy after ${QUIET_WAIT}s; measuring anyway" >&2
            return
        fi
        sleep 1
    done
}
