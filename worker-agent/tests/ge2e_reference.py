#!/usr/bin/env python3
"""Reference oracle for the agent's GE2E speaker encoder (numpy only).

It checks two things in the agent:
  * the GE2E converter (`morag-agent model import ge2e`), which turns the
    Resemblyzer checkpoint `pretrained.pt` (torch legacy, non-zip format) into
    a safetensors file holding the encoder weights (lstm.*, linear.*);
  * the Rust speaker encoder, whose embedding must match the one computed here
    the way Resemblyzer's VoiceEncoder.embed_utterance(rate=1.3,
    min_coverage=0.75) does, on a 16 kHz mono wav that is only
    volume-normalised (-30 dBFS, increase only; no VAD trimming).

Usage:
  ge2e_reference.py dump PT                       JSON {name: {shape, dtype}}
  ge2e_reference.py check-weights PT SAFETENSORS  exit 0 if byte-identical
  ge2e_reference.py embed PT WAV                  JSON {embedding, partials, frames}
"""
import collections
import json
import math
import pickle
import struct
import sys
import wave

import numpy as np

# ---------------------------------------------------------------- checkpoint
# Storage class names used by torch's legacy format -> numpy dtypes.
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64,
    "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TensorRef:
    """A tensor as pickled: a view (offset, size, stride) into a storage."""

    def __init__(self, storage, offset, size, stride, *_rest):
        self.storage, self.offset = storage, offset  # storage: (key, view)
        self.size, self.stride = tuple(size), tuple(stride)


class LegacyUnpickler(pickle.Unpickler):
    """Main pickle of the checkpoint, with torch classes replaced by stand-ins."""

    def __init__(self, f):
        super().__init__(f)
        self.storage_dtypes = {}  # storage key -> numpy dtype

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return TensorRef
        if module == "torch" and name in STORAGE_DTYPES:
            return np.dtype(STORAGE_DTYPES[name]).newbyteorder("<")
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if pid[0] != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        self.storage_dtypes[pid[2]] = pid[1]
        return pid[2], (pid[5] if len(pid) > 5 else None)


def load_model_state(path):
    """Returns (model_state: {name: contiguous ndarray}, whole checkpoint)."""
    with open(path, "rb") as f:
        if pickle.load(f) != 0x1950A86A20F9469CFC6C:
            raise SystemExit(f"{path}: not a torch legacy checkpoint")
        pickle.load(f)  # protocol version
        if not pickle.load(f).get("little_endian", True):  # sys_info
            raise SystemExit(f"{path}: big-endian checkpoint")
        unpickler = LegacyUnpickler(f)
        ckpt = unpickler.load()
        storages = {}
        for key in pickle.load(f):  # raw data follows in this key order
            (count,) = struct.unpack("<q", f.read(8))  # element count
            dtype = unpickler.storage_dtypes[key]
            data = f.read(count * dtype.itemsize)
            assert len(data) == count * dtype.itemsize, f"{path}: truncated"
            storages[key] = np.frombuffer(data, dtype)
    out = {}
    for name, t in ckpt["model_state"].items():
        key, view = t.storage
        base = storages[key]
        if view is not None:  # old-style storage view: (view_key, offset, size)
            base = base[view[1]:view[1] + view[2]]
        last = t.offset + sum((n - 1) * st for n, st in zip(t.size, t.stride))
        assert last < len(base), f"{name}: view runs past its storage"
        arr = np.lib.stride_tricks.as_strided(
            base[t.offset:], shape=t.size,
            strides=[st * base.itemsize for st in t.stride], writeable=False)
        out[name] = np.ascontiguousarray(arr)
    return out, ckpt


def cmd_dump(pt):
    state, _ = load_model_state(pt)
    lines = [f'  {json.dumps(k)}: {{"shape": {list(v.shape)}, "dtype": "{v.dtype.name}"}}'
             for k, v in sorted(state.items())]
    print("{\n" + ",\n".join(lines) + "\n}")
    return 0


# --------------------------------------------------------------- safetensors
def cmd_check_weights(pt, st_path):
    state, _ = load_model_state(pt)
    want = {k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}
    with open(st_path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    header.pop("__metadata__", None)
    buf = blob[8 + n:]
    bad = 0
    for name in sorted(set(want) | set(header)):
        if name not in header:
            print(f"MISSING {name}"); bad += 1; continue
        if name not in want:
            print(f"EXTRA   {name}"); bad += 1; continue
        h, ref = header[name], want[name]
        begin, end = h["data_offsets"]
        problems = []
        if h["dtype"] != "F32" or ref.dtype != np.float32:
            problems.append(f"dtype {h['dtype']} (checkpoint {ref.dtype.name})")
        if list(h["shape"]) != list(ref.shape):
            problems.append(f"shape {h['shape']} != {list(ref.shape)}")
        data = buf[begin:end]
        expect = ref.astype("<f4").tobytes()
        if end > len(buf) or len(data) != len(expect):
            problems.append(f"{end - begin} bytes, expected {len(expect)}")
        elif data != expect:
            diff = np.flatnonzero(np.frombuffer(data, np.uint8) != np.frombuffer(expect, np.uint8))
            problems.append(f"{len(diff)} bytes differ, first at byte {diff[0]}")
        if problems:
            print(f"DIFF    {name}: " + "; ".join(problems)); bad += 1
        else:
            print(f"ok      {name} {list(ref.shape)}")
    if bad:
        print(f"FAILED {bad} of {len(set(want) | set(header))} tensors")
        return 1
    print(f"ok {len(want)} tensors")
    return 0


# -------------------------------------------------------------------- audio
SR, HOP, N_FFT, N_MELS, PARTIAL = 16000, 160, 400, 40, 160


def read_wav(path):
    with wave.open(path, "rb") as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, SR):
            raise SystemExit(f"{path}: need 16 kHz mono 16-bit PCM")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / np.float32(32768.0)


def normalize_volume(wav, target_dbfs=-30.0):
    """Raise (never lower) the level to target_dbfs, as Resemblyzer does."""
    rms = math.sqrt(np.mean((wav.astype(np.float64) * 32767.0) ** 2))
    change = target_dbfs - 20.0 * math.log10(max(rms, 1e-300) / 32767.0)
    if rms == 0.0 or change < 0:  # silence, or already loud enough
        return wav
    return (wav.astype(np.float64) * 10.0 ** (change / 20.0)).astype(np.float32)


# Slaney mel scale: linear (200/3 Hz per mel) below 1 kHz = 15 mel, log above.
F_SP, LOGSTEP = 200.0 / 3, math.log(6.4) / 27.0


def hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / LOGSTEP, f / F_SP)


def mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp(LOGSTEP * (m - 15.0)), m * F_SP)


def mel_filters():
    """[40, 201] Slaney-normalised triangles over rfft bins, rounded to f32."""
    fft_f = np.linspace(0.0, SR / 2, N_FFT // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(SR / 2), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_f[None, :]
    w = np.zeros((N_MELS, len(fft_f)))
    for i in range(N_MELS):
        lower, upper = -ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]
        w[i] = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (mel_f[i + 2] - mel_f[i]))
    return w.astype(np.float32)


def mel_spectrogram(wav):
    """[frames, 40] power mel spectrogram (no log), frames = 1 + len//160."""
    y = np.pad(wav.astype(np.float64), (N_FFT // 2, N_FFT // 2))
    n_frames = 1 + (len(y) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n_frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    spec = np.fft.rfft(y[idx] * window, axis=1).astype(np.complex64)
    power = (np.abs(spec) ** 2).astype(np.float32)
    return (power @ mel_filters().T).astype(np.float32)


def partial_slices(n_samples, rate=1.3, min_coverage=0.75):
    n_frames = math.ceil((n_samples + 1) / HOP)
    step = int(round((SR / rate) / HOP))
    steps = max(1, n_frames - PARTIAL + step + 1)
    starts = list(range(0, steps, step))
    if (n_samples - starts[-1] * HOP) / (PARTIAL * HOP) < min_coverage and len(starts) > 1:
        starts.pop()
    return starts


# -------------------------------------------------------------------- model
def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def encoder(state, mels):
    """mels [P, 160, 40] float32 -> L2-normalised partial embeddings [P, 256]."""
    x = mels.astype(np.float32)
    batch, steps, _ = x.shape
    for k in range(3):
        w_ih, w_hh = state[f"lstm.weight_ih_l{k}"], state[f"lstm.weight_hh_l{k}"]
        bias = state[f"lstm.bias_ih_l{k}"] + state[f"lstm.bias_hh_l{k}"]
        hidden = w_hh.shape[1]
        pre = x @ w_ih.T + bias  # input contribution for every step at once
        h, c = np.zeros((2, batch, hidden), np.float32)
        seq = np.empty((batch, steps, hidden), np.float32)
        for t in range(steps):
            g = pre[:, t] + h @ w_hh.T  # gate order i, f, g, o
            i, f = sigmoid(g[:, :hidden]), sigmoid(g[:, hidden:2 * hidden])
            cand, o = np.tanh(g[:, 2 * hidden:3 * hidden]), sigmoid(g[:, 3 * hidden:])
            c = f * c + i * cand
            h = o * np.tanh(c)
            seq[:, t] = h
        x = seq
    emb = np.maximum(h @ state["linear.weight"].T + state["linear.bias"], 0.0)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def cmd_embed(pt, wav_path):
    state, _ = load_model_state(pt)
    wav = normalize_volume(read_wav(wav_path))
    starts = partial_slices(len(wav))
    stop = (starts[-1] + PARTIAL) * HOP
    if stop >= len(wav):
        wav = np.pad(wav, (0, stop - len(wav)))
    mel = mel_spectrogram(wav)
    raw = encoder(state, np.stack([mel[s:s + PARTIAL] for s in starts])).mean(axis=0)
    embed = raw / np.linalg.norm(raw)
    print(json.dumps({"embedding": [float(v) for v in embed],
                      "partials": len(starts), "frames": int(mel.shape[0])}))
    return 0


def main(argv):
    cmds = {"dump": (cmd_dump, 1), "check-weights": (cmd_check_weights, 2),
            "embed": (cmd_embed, 2)}
    fn, nargs = cmds.get(argv[1] if len(argv) > 1 else "", (None, -1))
    if len(argv) - 2 != nargs:
        print(__doc__, file=sys.stderr)
        return 2
    return fn(*argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
