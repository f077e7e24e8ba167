//! Reader for CTranslate2's `model.bin` (format version 5 and later).
//!
//! # Layout (all integers little-endian)
//!
//! ```text
//! u32 version (>= 5)
//! str spec name            ("WhisperSpec")
//! u32 spec revision
//! u32 variable count
//!   per variable: str name, u8 rank, u32 dims[rank], u8 dtype, u32 byte length, bytes
//! u32 alias count
//!   per alias: str alias, str target
//! ```
//!
//! `str` is a u16 length that counts a trailing NUL, then that many bytes. dtype codes: 0 f32,
//! 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16. The file must end right after the aliases.

use std::collections::HashMap;

use super::ConvertError;

/// Oldest `model.bin` format version this reader understands.
pub const MIN_VERSION: u32 = 5;
/// Most variables a model may declare; tiny.en has 150, large-v3 about 1,300.
pub const MAX_VARIABLES: u32 = 100_000;
/// Highest tensor rank accepted.
pub const MAX_RANK: u8 = 8;

/// Element type of a stored variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl DType {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

/// One variable: a view into the model file's bytes.
#[derive(Debug, Clone)]
pub struct Variable {
    /// Shape, outermost first (numpy order). Empty for a scalar.
    pub dims: Vec<usize>,
    pub dtype: DType,
    /// Byte range of the data in [`Ct2Model::bytes`].
    pub offset: usize,
    pub len: usize,
}

impl Variable {
    /// Number of elements, as stored (the byte length over the element size).
    pub fn count(&self) -> usize {
        self.len / self.dtype.size()
    }
}

/// A parsed `model.bin`, keeping the file's bytes.
#[derive(Debug)]
pub struct Ct2Model {
    pub version: u32,
    pub spec: String,
    pub revision: u32,
    bytes: Vec<u8>,
    /// Variables and aliases by name, in file order.
    names: Vec<String>,
    vars: HashMap<String, Variable>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    off: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ConvertError> {
        let end = self.off.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| {
            ConvertError::Format(format!(
                "model.bin is truncated: needed {n} bytes at offset {}",
                self.off
            ))
        })?;
        let s = &self.buf[self.off..end];
        self.off = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ConvertError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, ConvertError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ConvertError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<String, ConvertError> {
        let n = self.u16()? as usize;
        let raw = self.take(n)?;
        // The length counts a trailing NUL.
        let body = &raw[..n.saturating_sub(1)];
        String::from_utf8(body.to_vec())
            .map_err(|_| ConvertError::Format(format!("non-UTF-8 name at offset {}", self.off)))
    }
}

impl Ct2Model {
    /// Parse a whole `model.bin` held in memory.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, ConvertError> {
        let mut c = Cursor {
            buf: &bytes,
            off: 0,
        };
        let version = c.u32()?;
        if version < MIN_VERSION {
            return Err(ConvertError::Format(format!(
                "model.bin format version {version} is older than {MIN_VERSION}; re-convert it with a recent CTranslate2"
            )));
        }
        let spec = c.string()?;
        let revision = c.u32()?;
        let nvars = c.u32()?;
        if nvars > MAX_VARIABLES {
            return Err(ConvertError::Format(format!(
                "model.bin declares {nvars} variables (limit {MAX_VARIABLES})"
            )));
        }
        let mut names = Vec::with_capacity(nvars as usize);
        let mut vars = HashMap::with_capacity(nvars as usize);
        for _ in 0..nvars {
            let name = c.string()?;
            let rank = c.u8()?;
            if rank > MAX_RANK {
                return Err(ConvertError::Format(format!(
                    "variable {name} has rank {rank} (limit {MAX_RANK})"
                )));
            }
            let mut dims = Vec::with_capacity(rank as usize);
            for _ in 0..rank {
                dims.push(c.u32()? as usize);
            }
            let code = c.u8()?;
            let dtype = DType::from_code(code).ok_or_else(|| {
                ConvertError::Format(format!("variable {name} has unknown dtype code {code}"))
            })?;
            let len = c.u32()? as usize;
            let offset = c.off;
            c.take(len)?;
            let var = Variable {
                dims,
                dtype,
                offset,
                len,
            };
            let expected: usize = var.dims.iter().product();
            if var.count() != expected || !len.is_multiple_of(dtype.size()) {
                return Err(ConvertError::Format(format!(
                    "variable {name}: {len} bytes do not hold shape {:?} of {dtype:?}",
                    var.dims
                )));
            }
            if vars.insert(name.clone(), var).is_none() {
                names.push(name);
            }
        }
        let naliases = c.u32()?;
        for _ in 0..naliases {
            let alias = c.string()?;
            let target = c.string()?;
            let var = vars.get(&target).cloned().ok_or_else(|| {
                ConvertError::Format(format!("alias {alias} names unknown variable {target}"))
            })?;
            if vars.insert(alias.clone(), var).is_none() {
                names.push(alias);
            }
        }
        if c.off != bytes.len() {
            return Err(ConvertError::Format(format!(
                "model.bin has {} trailing bytes after the aliases",
                bytes.len() - c.off
            )));
        }
        Ok(Self {
            version,
            spec,
            revision,
            bytes,
            names,
            vars,
        })
    }

    /// Variable names (aliases included) in file order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// A variable by name.
    pub fn get(&self, name: &str) -> Result<&Variable, ConvertError> {
        self.vars
            .get(name)
            .ok_or_else(|| ConvertError::MissingTensor(name.to_string()))
    }

    /// A variable's values widened to f32 (integers keep their value).
    pub fn to_f32(&self, name: &str) -> Result<Tensor, ConvertError> {
        let v = self.get(name)?;
        let raw = &self.bytes[v.offset..v.offset + v.len];
        let data: Vec<f32> = match v.dtype {
            DType::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::I8 => raw.iter().map(|&b| b as i8 as f32).collect(),
            DType::I16 => raw
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32)
                .collect(),
            DType::I32 => raw
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
                .collect(),
            DType::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::Bf16 => raw
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
        };
        Ok(Tensor {
            dims: v.dims.clone(),
            data,
        })
    }

    /// The first element of a scalar-like variable (`num_heads`, ...), as an integer.
    pub fn scalar(&self, name: &str) -> Result<i64, ConvertError> {
        let t = self.to_f32(name)?;
        t.data
            .first()
            .map(|&x| x as i64)
            .ok_or_else(|| ConvertError::Format(format!("variable {name} is empty")))
    }
}

/// A dense f32 tensor, row-major, shape outermost first.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    /// Rows `start..end` along the first axis (numpy's `t[start:end]`).
    pub fn rows(&self, start: usize, end: usize) -> Result<Tensor, ConvertError> {
        let n = *self
            .dims
            .first()
            .ok_or_else(|| ConvertError::Format("cannot slice a scalar".into()))?;
        if start > end || end > n {
            return Err(ConvertError::Format(format!(
                "slice {start}..{end} out of range for shape {:?}",
                self.dims
            )));
        }
        let row: usize = self.dims[1..].iter().product();
        let mut dims = self.dims.clone();
        dims[0] = end - start;
        Ok(Tensor {
            dims,
            data: self.data[start * row..end * row].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend_from_slice(&((v.len() + 1) as u16).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }

    fn sample() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&6u32.to_le_bytes());
        s(&mut b, "WhisperSpec");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        s(&mut b, "w");
        b.push(2);
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&2u32.to_le_bytes());
        b.push(4); // f16
        b.extend_from_slice(&8u32.to_le_bytes());
        for x in [1.0f32, 2.0, -0.5, 65504.0] {
            b.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
        }
        b.extend_from_slice(&1u32.to_le_bytes());
        s(&mut b, "alias");
        s(&mut b, "w");
        b
    }

    #[test]
    fn parses_variables_and_aliases() {
        let m = Ct2Model::parse(sample()).unwrap();
        assert_eq!(m.spec, "WhisperSpec");
        assert_eq!(m.names(), ["w", "alias"]);
        let t = m.to_f32("alias").unwrap();
        assert_eq!(t.dims, [2, 2]);
        assert_eq!(t.data, [1.0, 2.0, -0.5, 65504.0]);
        assert_eq!(t.rows(1, 2).unwrap().data, [-0.5, 65504.0]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = sample();
        for n in 0..full.len() {
            assert!(Ct2Model::parse(full[..n].to_vec()).is_err(), "len {n}");
        }
        let mut long = full.clone();
        long.push(0);
        assert!(Ct2Model::parse(long).is_err());
    }
}
