#!/usr/bin/env bash
# A real single-node SLURM on this machine for the SLURM campaign test (tests/test_cluster.py):
# Debian's slurm-wlm and munge, a munge key, a slurm.conf for this host with its real CPU
# count and memory (from `slurmd -C`), then munged, slurmctld and slurmd.
#
#   bash .ci/start-slurm.sh            # install if needed (apt), configure, start; idempotent
#   bash .ci/start-slurm.sh --no-install
#
# Never fails the caller: when SLURM cannot be installed or started it says why and exits 0,
# and the SLURM test skips with that reason. Needs root (it writes /etc/slurm, starts daemons).
set -uo pipefail

say() { echo "start-slurm: $*"; }
install=1
[ "${1:-}" = "--no-install" ] && install=0

if [ "$(id -u)" != 0 ]; then say "not root: SLURM not started (the SLURM test will skip)"; exit 0; fi

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  if [ "$install" = 1 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
      || { say "could not install slurm-wlm/munge; the SLURM test will skip"; exit 0; }
  else
    say "slurm-wlm/munge not installed and apt-get unavailable; the SLURM test will skip"; exit 0
  fi
fi

# already up (a second call, or a machine that runs it): nothing to do
if scontrol ping 2>/dev/null | grep -q UP && sinfo -h -o %T 2>/dev/null | grep -q -E 'idle|mix|alloc'; then
  say "SLURM already running: $(sinfo -h -o '%P %D %T %c CPUs' | head -1)"; exit 0
fi

# ---- munge
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey -c -f -k /etc/munge/munge.key 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key && chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged || { say "munged did not start; the SLURM test will skip"; exit 0; }
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# ---- slurm.conf for this host: its real CPUs, sockets, cores and memory
node=$(slurmd -C 2>/dev/null | head -1)
case "$node" in NodeName=*) ;; *) say "slurmd -C failed; the SLURM test will skip"; exit 0;; esac
host=$(echo "$node" | sed 's/^NodeName=\([^ ]*\).*/\1/')
mem=$(echo "$node" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
# leave the system some memory: SLURM may hand out 90% of it
node=$(echo "$node" | sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 9 / 10))/")
mkdir -p /etc/slurm /var/spool/slurm/ctld /var/spool/slurm/d /var/log/slurm /run/slurm
cat > /etc/slurm/slurm.conf <<EOF
# written by hydrolayer/.ci/start-slurm.sh for a single-node test cluster
ClusterName=hydrolayer-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
ReturnToService=2
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmdSpoolDir=/var/spool/slurm/d
StateSaveLocation=/var/spool/slurm/ctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=5
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
# cgroup.conf is read by slurmd even without cgroup plugins on some versions
[ -f /etc/slurm/cgroup.conf ] || echo "CgroupPlugin=autodetect" > /etc/slurm/cgroup.conf

# ---- daemons (no systemd in a container: start them directly)
pgrep -x slurmctld >/dev/null || slurmctld || { say "slurmctld did not start (see /var/log/slurm/slurmctld.log); the SLURM test will skip"; exit 0; }
pgrep -x slurmd >/dev/null || slurmd || { say "slurmd did not start (see /var/log/slurm/slurmd.log); the SLURM test will skip"; exit 0; }
for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -q -E '^(idle|mix|alloc)'; then
    say "SLURM up: $(sinfo -h -o 'partition %P, %D node(s), %T, %c CPUs, %m MB')"; exit 0
  fi
  # a node that came back from an earlier configuration may need a nudge
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 0.5
done
say "SLURM did not come up: $(sinfo 2>&1 | tail -1); the SLURM test will skip"
exit 0
