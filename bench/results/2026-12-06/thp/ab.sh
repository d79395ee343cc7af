#!/bin/sh
# Four arms, interleaved, two rounds: the role processes' mimalloc as it is, with purging off,
# with transparent huge pages off (which also does prctl(PR_SET_THP_DISABLE)), and both.
# Needs a nats-server: nats-server -js -p 4333 -m 8333 -a 127.0.0.1 -sd /tmp/pb/store
set -eu
T=${CARGO_TARGET_DIR:-$HOME/.cache/kiln/target}
export KILN_BIN=$(dirname "$0")/kiln-env.sh KILN_REAL=$T/release/kiln
SP=$(pgrep -f "nats-server -js -p 4333")
for round in 1 2; do
  for arm in base nopurge nothp both; do
    case $arm in
      base) ROLE_ENV="X=1" ;;
      nopurge) ROLE_ENV="MIMALLOC_PURGE_DELAY=-1" ;;
      nothp) ROLE_ENV="MIMALLOC_ALLOW_THP=0" ;;
      both) ROLE_ENV="MIMALLOC_PURGE_DELAY=-1 MIMALLOC_ALLOW_THP=0" ;;
    esac
    export ROLE_ENV
    "$T/release/kiln-bench" pipeline --external -s nats://127.0.0.1:4333 --server-pid "$SP" \
      --jobs 20000 --runs 3 > "$arm-$round.txt" 2>&1
  done
done
