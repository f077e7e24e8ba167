"""Time faster-whisper on audio files: the baseline of `worker-agent/benches/transcribe.rs`.

Run by scripts/bench-transcribe.sh inside the virtual environment it creates. Loads the model
once, warms up once, then times `--runs` transcriptions of every file (the decode and the whole
`transcribe()` generator, as MoRAG's worker calls it) and prints one JSON object per file and
setting on stdout:

    {"engine": "faster-whisper", "file": ..., "compute_type": "float32" | "int8",
     "device_compute_type": ..., "device": ..., "beam": ..., "seconds": best,
     "all_seconds": [...], "audio_seconds": ..., "text": ...}
"""

import argparse
import json
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="CTranslate2 Whisper model directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--beams", default="1,5", help="comma-separated beam sizes (1 = greedy)")
    ap.add_argument("--compute-types", default="float32,int8")
    ap.add_argument(
        "--device",
        default="cpu",
        help="cpu or cuda; on cuda float32 runs as float16 and int8 as int8_float16",
    )
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    from faster_whisper import WhisperModel

    on_gpu = {"float32": "float16", "int8": "int8_float16"}
    for requested in args.compute_types.split(","):
        compute_type = on_gpu.get(requested, requested) if args.device == "cuda" else requested
        model = WhisperModel(
            args.model, device=args.device, compute_type=compute_type, cpu_threads=args.threads
        )
        for beam in (int(b) for b in args.beams.split(",")):

            def run(path):
                # temperature=0.0: no fallback re-decoding, as whisper.cpp is driven here.
                segments, info = model.transcribe(
                    path, language="en", beam_size=beam, temperature=0.0
                )
                text = "".join(s.text for s in segments).strip()
                return text, info.duration

            run(args.files[0])  # warm-up
            for path in args.files:
                times = []
                text, duration = "", 0.0
                for _ in range(args.runs):
                    started = time.perf_counter()
                    text, duration = run(path)
                    times.append(time.perf_counter() - started)
                print(
                    json.dumps(
                        {
                            "engine": "faster-whisper",
                            "file": path,
                            "compute_type": requested,
                            "device_compute_type": compute_type,
                            "device": args.device,
                            "beam": beam,
                            "seconds": min(times),
                            "all_seconds": times,
                            "audio_seconds": duration,
                            "text": text,
                        }
                    ),
                    flush=True,
                )
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
