#!/bin/sh
case "$1" in worker) E=$WORKER_ENV; echo $$ > /tmp/kiln-worker.pid;; aggregator) E=$AGG_ENV;; *) E=X=1;; esac
exec env ${E:-X=1} $KILN_REAL "$@"
