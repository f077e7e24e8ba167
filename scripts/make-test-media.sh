#!/usr/bin/env bash
# Generate the agent's audio test media into DIR (default: target/test-media), idempotently.
# Speech comes from espeak-ng; the other formats are made from it with ffmpeg. Nothing here is
# committed: tests call this script into a temporary or target directory.
#
#   speech.wav            16 kHz mono s16 (the reference); speech.txt: the sentence spoken
#   speech_stereo44.wav   44.1 kHz stereo (resampling and downmix)
#   speech.mp3 .m4a .ogg (opus) .flac
#   speech_video.mp4      a 320x240 test pattern with the speech as its audio track
#   silent_video.mp4      video without any audio stream
#   empty.wav             0 bytes
#   notmedia.wav          a text file with an audio extension
#   truncated.m4a         the first 40% of speech.m4a (moov atom lost)
#   truncated.flac        the first 40% of speech.flac
#   truncated_header.wav  the first 20 bytes of speech.wav
#   corrupt.mp3           pseudo-random bytes
#
# Needs espeak-ng and ffmpeg (apt-get install espeak-ng ffmpeg).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/target/test-media}"
STAMP="$DIR/.complete-v2"
SENTENCE="${MORAG_TEST_SENTENCE:-Hello world. The weather today is sunny and warm. Please send the quarterly report to the finance team.}"

if [ -f "$STAMP" ]; then
    exit 0
fi
for tool in espeak-ng ffmpeg; do
    command -v "$tool" >/dev/null || { echo "make-test-media: $tool is not installed" >&2; exit 3; }
done
mkdir -p "$DIR"
tmp="$(mktemp -d "$DIR/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
ff() { ffmpeg -nostdin -hide_banner -loglevel error -y "$@"; }

espeak-ng -s 150 -w "$tmp/raw.wav" "$SENTENCE"
ff -i "$tmp/raw.wav" -ar 16000 -ac 1 -c:a pcm_s16le "$tmp/speech.wav"
printf '%s\n' "$SENTENCE" > "$tmp/speech.txt"
ff -i "$tmp/raw.wav" -ar 44100 -ac 2 -c:a pcm_s16le "$tmp/speech_stereo44.wav"
ff -i "$tmp/speech.wav" -c:a libmp3lame -b:a 64k "$tmp/speech.mp3"
ff -i "$tmp/speech.wav" -c:a aac -b:a 64k "$tmp/speech.m4a"
ff -i "$tmp/speech.wav" -c:a libopus -b:a 32k "$tmp/speech.ogg"
ff -i "$tmp/speech.wav" -c:a flac "$tmp/speech.flac"
dur="$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$tmp/speech.wav")"
ff -f lavfi -i "testsrc=size=320x240:rate=10:duration=$dur" -i "$tmp/speech.wav" \
    -c:v mpeg4 -c:a aac -shortest "$tmp/speech_video.mp4"
ff -f lavfi -i "testsrc=size=320x240:rate=10:duration=2" -c:v mpeg4 "$tmp/silent_video.mp4"

: > "$tmp/empty.wav"
printf 'This is a plain text file, not audio.\n%.0s' {1..50} > "$tmp/notmedia.wav"
cut_to() { head -c "$(( $(stat -c %s "$1") * $2 / 100 ))" "$1" > "$3"; }
cut_to "$tmp/speech.m4a" 40 "$tmp/truncated.m4a"
cut_to "$tmp/speech.flac" 40 "$tmp/truncated.flac"
head -c 20 "$tmp/speech.wav" > "$tmp/truncated_header.wav"
# Deterministic garbage (no /dev/urandom: the same bytes every run).
python3 -c 'import random,sys; r=random.Random(7); sys.stdout.buffer.write(bytes(r.randrange(256) for _ in range(65536)))' \
    > "$tmp/corrupt.mp3" 2>/dev/null || head -c 65536 /dev/zero | tr '\0' '\125' > "$tmp/corrupt.mp3"

rm -f "$tmp/raw.wav"
mv "$tmp"/* "$DIR"/
touch "$STAMP"
