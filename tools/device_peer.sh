#!/usr/bin/env bash
# Stage the vLLM 0.25.0 peer on the GPU machine, for `tools/device_session.sh vllm` (vLLM measured in the same
# lease as our engine: the side-by-side ratio). Its parts are bigger than one device call carries (64 MiB with the
# working tree), so they go in calls back to back, each copying what it carries into /tmp/peer (kept while the
# machine stays warm: 30 s idle).
# HERE, once:  bash ../shared/peers/vllm/prepare.sh      (fills the git-ignored .peer/: 57 + 52 MB parts, 39 MB wheels)
# Device:      run(command="bash tools/device_peer.sh", carry=[".peer/vllm.part00"])
#              run(command="bash tools/device_peer.sh", carry=[".peer/vllm.part01"])
#              run(command="bash tools/device_peer.sh && bash tools/device_session.sh vllm b1 offline",
#                  carry=[".peer/whl", ".peer/bench_offline.py", ".carry"])
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p /tmp/peer
for f in .peer/vllm.part0* .peer/bench_offline.py .peer/serve_bench.py .peer/serve_on_device.sh; do
  [ -e "$f" ] && cp "$f" /tmp/peer/
done
[ -d .peer/whl ] && mkdir -p /tmp/peer/whl && cp .peer/whl/*.whl /tmp/peer/whl/
echo "device_peer: /tmp/peer holds:"; ls /tmp/peer; [ -d /tmp/peer/whl ] && echo "  whl: $(ls /tmp/peer/whl | wc -l) wheels"
missing=""
for f in vllm.part00 vllm.part01 bench_offline.py whl; do [ -e "/tmp/peer/$f" ] || missing="$missing $f"; done
if [ -n "$missing" ]; then echo "device_peer: still to carry:$missing"; else echo "device_peer: complete"; fi
