# Shared by the A/B bench scripts (sourced): dropjit's images/s for one
# `bench` run, and the median of a list of numbers.
BIN=${BIN:-target/release/dropjit}
STEPS=${STEPS:-10}
THREADS=${THREADS:-2}
ips() { "$BIN" bench --threads "$THREADS" --steps "$STEPS" --json "$@" | sed 's/.*"images_per_second":\([0-9.]*\).*/\1/'; }
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
