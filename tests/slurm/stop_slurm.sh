#!/bin/bash
# Stop what start_slurm.sh started, by pid file only, and remove stale pid files.
scancel -u "$(id -un)" 2>/dev/null || true
for f in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$f"
done
