#!/bin/bash
# Start munge, slurmctld and slurmd as a one-node cluster on 127.0.0.1 (needs root; no systemd).
# Usage: start_slurm.sh  -- exits 0 once the node is idle, 3 if SLURM is not installed.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
  || { echo "slurmctld/slurmd/munge are not installed" >&2; exit 3; }
HOST=$(hostname -s)
NODELINE=$(slurmd -C | head -1)
mkdir -p /etc/slurm
sed -e "s/@HOST@/${HOST}/g" -e "s/^@NODELINE@/${NODELINE}/" "$HERE/slurm.conf.in" > /etc/slurm/slurm.conf
rm -f /etc/slurm/cgroup.conf
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
[ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; chown munge:munge /etc/munge/munge.key; }
if ! munge -n >/dev/null 2>&1; then runuser -u munge -- /usr/sbin/munged; fi
for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/log/slurm
install -d -o root -g root /var/lib/slurm/slurmd
if ! { [ -f /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; }; then /usr/sbin/slurmctld; fi
if ! { [ -f /run/slurmd.pid ] && kill -0 "$(cat /run/slurmd.pid)" 2>/dev/null; }; then /usr/sbin/slurmd; fi
for _ in $(seq 150); do
  sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed)' && exit 0
  sleep 0.2
done
echo "the SLURM node did not become idle; see /var/log/slurm/" >&2
exit 1
