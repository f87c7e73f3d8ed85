# Smallest possible test: the guest reached init with its modules loaded.
. /lib/vtest.sh
vt_detail "uptime=$(cut -d' ' -f1 /proc/uptime)" "cpus=$(nproc)" "mem_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"
exit 0
