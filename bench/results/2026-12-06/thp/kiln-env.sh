#!/bin/sh
exec env $ROLE_ENV $KILN_REAL "$@"
