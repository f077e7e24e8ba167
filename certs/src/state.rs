//! The CA's revocation state, kept next to the CA as `revoked.txt`.
//!
//! Format (one record a line, `#` starts a comment):
//!
//! ```text
//! crl-number 3
//! revoked 4f1c0e...9a 1735689600
//! ```
//!
//! `crl-number` is the number of the last CRL signed; `revoked` lines give a
//! serial (hex, leading zero bytes stripped) and the Unix time it was revoked.

use std::collections::BTreeMap;

use crate::crl::normalize_serial;

/// Longest serial accepted, in bytes (RFC 5280 allows 20 octets).
pub const MAX_SERIAL_LEN: usize = 20;

/// Revoked serials and the CRL number, as persisted in `revoked.txt`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RevocationState {
    /// Number of the last CRL signed (0: none yet).
    pub crl_number: u64,
    /// Normalized serial -> Unix time of revocation.
    pub revoked: BTreeMap<Vec<u8>, i64>,
}

/// A line of `revoked.txt` that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateLineError {
    pub line: usize,
    pub message: String,
}

impl RevocationState {
    pub fn parse(text: &str) -> Result<Self, StateLineError> {
        let mut state = Self::default();
        for (index, raw) in text.lines().enumerate() {
            let err = |message: String| StateLineError {
                line: index + 1,
                message,
            };
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["crl-number", n] => {
                    state.crl_number = n
                        .parse()
                        .map_err(|_| err(format!("crl-number {n:?} is not a number")))?;
                }
                ["revoked", serial, when] => {
                    let serial = parse_serial_hex(serial).map_err(err)?;
                    let when = when
                        .parse()
                        .map_err(|_| err(format!("revocation time {when:?} is not a number")))?;
                    state.revoked.insert(serial, when);
                }
                _ => return Err(err(format!("unrecognized line {line:?}"))),
            }
        }
        Ok(state)
    }

    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "# morag-certs revocation state; written by `morag-certs revoke`, do not edit\n",
        );
        out.push_str(&format!("crl-number {}\n", self.crl_number));
        for (serial, when) in &self.revoked {
            out.push_str(&format!("revoked {} {when}\n", hex::encode(serial)));
        }
        out
    }
}

/// Parse a hex serial (`:` separators and a `0x` prefix allowed), leading zero
/// bytes stripped. Errors are lowercase sentences for the user.
pub fn parse_serial_hex(text: &str) -> Result<Vec<u8>, String> {
    let cleaned: String = text
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|&c| c != ':')
        .collect();
    let cleaned = if cleaned.len() % 2 == 1 {
        format!("0{cleaned}")
    } else {
        cleaned
    };
    let bytes = hex::decode(&cleaned).map_err(|e| {
        format!("serial {text:?} is not hex ({e}); copy it from `morag-certs show`")
    })?;
    check_serial(&bytes).map_err(|e| format!("serial {text:?}: {e}"))?;
    Ok(normalize_serial(&bytes).to_vec())
}

/// Check that a serial is non-zero and at most [`MAX_SERIAL_LEN`] bytes once normalized.
pub(crate) fn check_serial(serial: &[u8]) -> Result<(), String> {
    let serial = normalize_serial(serial);
    if serial.is_empty() {
        return Err("serial is zero or empty".into());
    }
    if serial.len() > MAX_SERIAL_LEN {
        return Err(format!(
            "serial is {} bytes long; at most {MAX_SERIAL_LEN} allowed",
            serial.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut state = RevocationState {
            crl_number: 7,
            ..Default::default()
        };
        state.revoked.insert(vec![0x4f, 0x01], 1_735_689_600);
        state.revoked.insert(vec![0x12; 16], -5);
        let text = state.to_text();
        assert_eq!(RevocationState::parse(&text).unwrap(), state);
    }

    #[test]
    fn empty_text_is_empty_state() {
        assert_eq!(
            RevocationState::parse("# nothing\n\n").unwrap(),
            RevocationState::default()
        );
    }

    #[test]
    fn bad_lines_name_their_number() {
        let err = RevocationState::parse("crl-number 1\nrevoked zz 1\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("not hex"), "{}", err.message);
        let err = RevocationState::parse("crl-number x\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(RevocationState::parse("surprise\n").is_err());
    }

    #[test]
    fn serial_hex_forms() {
        assert_eq!(parse_serial_hex("00:8f:01").unwrap(), vec![0x8f, 0x01]);
        assert_eq!(parse_serial_hex("0x801").unwrap(), vec![0x08, 0x01]);
        assert_eq!(parse_serial_hex("ABcd").unwrap(), vec![0xab, 0xcd]);
        assert!(parse_serial_hex("00").is_err());
        assert!(parse_serial_hex("").is_err());
        assert!(parse_serial_hex(&"11".repeat(21)).is_err());
        assert!(parse_serial_hex("xyz").is_err());
    }
}
