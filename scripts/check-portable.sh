#!/usr/bin/env bash
# Checks that an x86-64 cpipe binary runs on every CPU with AVX2, FMA and F16C: instructions
# beyond that level (AVX-512's registers and masks, EVEX encodings, VNNI, AMX) may appear only in
# functions that run after a check of the CPU (ARCHITECTURE.md, "Invariants"). Anything else is
# listed, and the check fails.
#
# usage: scripts/check-portable.sh [BINARY]   (default: target/debug/cpipe)
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-target/debug/cpipe}"
[ "$(uname -m)" = x86_64 ] || { echo "check-portable: not an x86-64 machine; nothing to check"; exit 0; }
[ -f "$binary" ] || { echo "check-portable: $binary is missing; build it first (cargo build)" >&2; exit 1; }
command -v objdump >/dev/null || { echo "check-portable: objdump is needed (apt-get install binutils)" >&2; exit 1; }

# Functions reached only after a run-time check of the CPU, by mangled-name fragment: cpipe's
# kernels (llm/quant/simd.rs, embed/bert.rs), the intrinsics they call when not inlined, and
# the crates that dispatch on their own (gemm, candle's repacked kernels, crc32fast).
dispatched='quant4simd|dot_avx512|activate_avx512|core_arch|gemm_|pulp|repack_x86|crc32fast'

# A line of `objdump -d` holds an instruction's bytes (all of them, at this width) and the
# instruction. EVEX encodings begin with 0x62 (in 64-bit mode it is nothing else).
offenders=$(objdump -d --no-addresses --insn-width=16 "$binary" | awk -v ok="$dispatched" '
  /^<.*>:$/ { name = $0; next }
  name ~ ok { next }
  /zmm|%k[0-7]|%[xy]mm(1[6-9]|2[0-9]|3[01])|vpdpbusd|vpdpwssd|tdpb|tileload|^\t62 / { bad[name] = $0 }
  END { for (n in bad) print n "  " bad[n] }')
if [ -n "$offenders" ]; then
  echo "check-portable: $binary uses instructions beyond x86-64-v3 outside run-time dispatch:" >&2
  echo "$offenders" | head -40 >&2
  exit 1
fi
echo "check-portable: $binary runs on any x86-64-v3 CPU (AVX-512 and VNNI only behind run-time checks)"
