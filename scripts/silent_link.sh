#!/bin/bash
# How long a peer link that dies without a reset costs: alice (the data owner, which
# drives) and bob run in two network namespaces joined by a veth pair; a few seconds
# into training, bob's end of the link goes down, so nothing is reset and nothing
# answers. Prints when alice's worker first logged the loss and when the run ended.
#
#   sudo bash scripts/silent_link.sh
#
# Needs root and `ip netns`. Uses a private subnet that exists only in the two
# namespaces it makes, and removes them (and stops the processes it started) at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TAG=$(printf '%04x' $((RANDOM % 65536)))
NS_A=snn-sl-a-$TAG NS_B=snn-sl-b-$TAG
ADDR_A=10.231.5.1 ADDR_B=10.231.5.2
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS_A" 2>/dev/null || true
    ip netns del "$NS_B" 2>/dev/null || true
}
trap cleanup EXIT

ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add "sl$TAG-a" type veth peer name "sl$TAG-b"
ip link set "sl$TAG-a" netns "$NS_A"
ip link set "sl$TAG-b" netns "$NS_B"
ip -n "$NS_A" addr add "$ADDR_A/24" dev "sl$TAG-a"
ip -n "$NS_B" addr add "$ADDR_B/24" dev "sl$TAG-b"
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set "sl$TAG-a" up
ip -n "$NS_B" link set "sl$TAG-b" up

cat > "$WORK/job.toml" <<TOML
name = "silent-link"
seed = 1
input_shape = [4]
[workers]
alice = { address = "$ADDR_A:50061" }
bob = { address = "$ADDR_B:50062" }
[training]
owners = ["alice"]
epochs = 1000000
batch_size = 0
loss = "sum_squared_error"
dataset = "toy"
[optimizer]
name = "sgd"
lr = 0.2
[[segments]]
host = "owner"
layers = [{ type = "Linear", in_features = 4, out_features = 3 }, { type = "Tanh" }]
[[segments]]
host = "bob"
layers = [{ type = "Linear", in_features = 3, out_features = 3 }, { type = "Sigmoid" }]
[[segments]]
host = "owner"
layers = [{ type = "Linear", in_features = 3, out_features = 1 }, { type = "Sigmoid" }]
TOML

ip netns exec "$NS_B" $PY -m splitnn.services.server --name bob --listen "$ADDR_B:50062" \
    --insecure >"$WORK/bob.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS_A" $PY -m splitnn.services.server --name alice --listen "$ADDR_A:50061" \
    --insecure >"$WORK/alice.log" 2>&1 &
PIDS+=($!)
sleep 3
ip netns exec "$NS_A" $PY -m splitnn.orchestrator.cli train "$WORK/job.toml" --out "$WORK/out" \
    >"$WORK/train.log" 2>&1 &
TRAIN=$!
PIDS+=("$TRAIN")
sleep 6
CUT=$(date +%s.%N)
ip -n "$NS_B" link set "sl$TAG-b" down
echo "cut bob's end of the link at $(date -d "@$CUT" '+%H:%M:%S.%3N')"
set +e
wait "$TRAIN"
RC=$?
set -e
ENDED=$(date +%s.%N)
LOST=$(grep -m1 " lost " "$WORK/alice.log" | cut -d' ' -f1-2 || true)
if [ -n "$LOST" ]; then
    LOST_S=$($PY -c "import datetime as d, sys; t = d.datetime.strptime(sys.argv[1], '%Y-%m-%d %H:%M:%S,%f').timestamp(); print(f'{t - float(sys.argv[2]):.1f}')" "$LOST" "$CUT")
    echo "alice's worker logged the loss ${LOST_S} s after the cut:"
    grep -m1 " lost " "$WORK/alice.log"
else
    echo "alice's worker never logged the loss"
fi
echo "the run ended (exit $RC) $($PY -c "print(f'{$ENDED - $CUT:.1f}')") s after the cut:"
tail -n 1 "$WORK/train.log"
echo "logs in $WORK"
