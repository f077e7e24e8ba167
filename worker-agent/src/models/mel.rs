//! Whisper's mel filter bank (librosa's slaney filters, as OpenAI's `mel_filters.npz`) and the
//! GPT-2 byte <-> unicode table used by Whisper's BPE vocabulary.
//!
//! The arithmetic follows numpy's step by step (f64, then rounded to f32) so that the converted
//! model is byte-identical to the Python reference converter's, signed zeros included.

/// Slaney mel scale: Hz to mel.
fn hz_to_mel(f: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f.max(1e-10) / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

/// Slaney mel scale: mel to Hz.
fn mel_to_hz(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// numpy's `linspace(start, stop, num)` with the endpoint: `i * step + start`, last = stop.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let div = (num - 1) as f64;
    let step = (stop - start) / div;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// numpy's `minimum` / `maximum` as their SIMD loops evaluate them (`a < b ? a : b`), which
/// decides the sign of a zero result.
fn np_min(a: f64, b: f64) -> f64 {
    if a < b {
        a
    } else {
        b
    }
}
fn np_max(a: f64, b: f64) -> f64 {
    if a > b {
        a
    } else {
        b
    }
}

/// The `n_mels x (n_fft / 2 + 1)` filter bank, row-major.
pub fn mel_filters(sr: f64, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_freq = 1 + n_fft / 2;
    let fftfreqs = linspace(0.0, sr / 2.0, n_freq);
    let mel_f: Vec<f64> = linspace(hz_to_mel(0.0), hz_to_mel(sr / 2.0), n_mels + 2)
        .into_iter()
        .map(mel_to_hz)
        .collect();
    let fdiff: Vec<f64> = mel_f.windows(2).map(|w| w[1] - w[0]).collect();
    let mut out = Vec::with_capacity(n_mels * n_freq);
    for i in 0..n_mels {
        let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
        for &freq in &fftfreqs {
            let lower = -(mel_f[i] - freq) / fdiff[i];
            let upper = (mel_f[i + 2] - freq) / fdiff[i + 1];
            let w = np_max(0.0, np_min(lower, upper));
            out.push((w * enorm) as f32);
        }
    }
    out
}

/// GPT-2's table mapping each byte to a printable unicode character.
pub fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| {
        (u32::from('!')..=u32::from('~')).contains(&b)
            || (u32::from('¡')..=u32::from('¬')).contains(&b)
            || (u32::from('®')..=u32::from('ÿ')).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut n = 0;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            n += 1;
            256 + n - 1
        };
        table[b as usize] = char::from_u32(c).expect("valid code point");
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_have_slaney_shape() {
        let f = mel_filters(16000.0, 400, 80);
        assert_eq!(f.len(), 80 * 201);
        // Each filter is a triangle: non-negative, with a single peak region.
        assert!(f.iter().all(|&x| x >= 0.0));
        assert!(f[..201].iter().any(|&x| x > 0.02));
        // numpy's maximum(0, -0.0) keeps the negative zero at [0][0].
        assert!(f[0] == 0.0 && f[0].is_sign_negative());
    }

    #[test]
    fn byte_table_is_a_bijection() {
        let t = bytes_to_unicode();
        let mut seen: Vec<char> = t.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
    }
}
