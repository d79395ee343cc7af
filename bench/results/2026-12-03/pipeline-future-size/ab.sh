#!/bin/bash
# interleaved A/B of the kiln (processes) side: A = /tmp/kiln-old, B = the new release kiln
B=$HOME/.cache/kiln/target/release/kiln-bench
for i in 1 2 3; do
  for arm in old new; do
    if [ $arm = old ]; then bin=/tmp/kiln-old; else bin=$HOME/.cache/kiln/target/release/kiln; fi
    KILN_BIN=$bin $B pipeline --runs 3 --jobs 20000 --json /tmp/ab-$arm-$i.json > /tmp/ab-$arm-$i.log 2>&1
    echo "$arm $i: $(grep '^kiln / ceiling' /tmp/ab-$arm-$i.log | head -1)"
    grep "^kiln  " /tmp/ab-$arm-$i.log | tail -3
  done
done
