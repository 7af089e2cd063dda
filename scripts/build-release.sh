#!/usr/bin/env bash
# A release build the way Docs/WritingParticipants.md ("Building a service for production")
# recommends, for any package (run it in the package's directory; arguments go to `swift build`):
#
#   scripts/build-release.sh --product payment-service
#   scripts/build-release.sh --product SystemBenchmark --scratch-path /tmp/bench-build
#
# - --static-swift-stdlib: the Swift runtime and Foundation linked in (direct calls, no toolchain
#   libraries needed where the binary runs).
# - -use-ld=lld -z pack-relative-relocs: the toolchain's lld writes the executable's ~125,000
#   relative relocations in the compact DT_RELR form (24 KB instead of 3 MB that the dynamic loader
#   reads, and keeps resident, at every start). Needs glibc 2.36 or later where the binary runs
#   (Debian 12, Ubuntu 22.10); an older glibc refuses to start it with "GLIBC_ABI_DT_RELR not found".
# - --no-export-dynamic: the executable does not export its ~41,000 symbols to the dynamic loader
#   (nothing loads code into a service that calls back into it); crash backtraces still name
#   functions, from the binary's own symbol table.
set -euo pipefail
exec swift build -c release --static-swift-stdlib \
    -Xswiftc -use-ld=lld -Xlinker -z -Xlinker pack-relative-relocs -Xlinker --no-export-dynamic "$@"
