//! A reader for PyTorch checkpoints in the legacy (non-zip) `torch.save` format, enough to take
//! the float tensors out of a state dict, and the converter that writes them as safetensors
//! (`morag-agent model import ge2e`).
//!
//! The legacy format is five pickles in a row (a magic number, the protocol version, system
//! information, the object itself, then the list of storage keys) followed by each storage's
//! bytes in that order, every one after an 8-byte little-endian element count. Tensors inside the
//! object are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` calls whose
//! storage is a persistent id `('storage', StorageType, key, location, numel, view)`.
//!
//! Only what such checkpoints use is understood; anything else is refused with the opcode and
//! its position, so a different file fails clearly instead of loading wrong weights.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::ConvertError;

/// The first pickle of every legacy checkpoint holds this number.
const MAGIC: i128 = 0x1950a86a20f9469cfc6c;

/// A value built by the pickle machine.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// `module.name` from a GLOBAL opcode.
    Global(String, String),
    /// A persistent id (a storage reference).
    Persistent(Box<Value>),
    /// A call of a callable this reader does not model, kept for error messages.
    Object(String),
    Tensor(TensorRef),
    Mark,
}

/// Where a tensor's numbers are: a storage key and a view of it.
#[derive(Debug, Clone, PartialEq)]
struct TensorRef {
    key: String,
    dtype: Dtype,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// Element types of the storages this reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
    I64,
}

impl Dtype {
    fn from_storage(name: &str) -> Option<Self> {
        match name {
            "FloatStorage" => Some(Self::F32),
            "DoubleStorage" => Some(Self::F64),
            "LongStorage" => Some(Self::I64),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F64 | Self::I64 => 8,
        }
    }
}

/// A value's debug form, cut short for an error message.
fn brief(v: &impl std::fmt::Debug) -> String {
    let mut s = format!("{v:?}");
    if s.len() > 120 {
        let mut end = 120;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

fn bad(msg: impl Into<String>) -> ConvertError {
    ConvertError::Checkpoint(msg.into())
}

/// A byte cursor over the checkpoint.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ConvertError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| bad(format!("truncated checkpoint at byte {}", self.pos)))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, ConvertError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ConvertError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, ConvertError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, ConvertError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn line(&mut self) -> Result<String, ConvertError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("unterminated GLOBAL name"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
}

/// Deepest nesting of containers accepted (a state dict needs a handful; deeper input could
/// exhaust the stack in the recursive walks below).
const MAX_DEPTH: u32 = 64;
/// Most values one pickle may build, memo copies included (a state dict needs thousands).
const MAX_VALUES: u64 = 4_000_000;

/// A value on the machine's stack, with its nesting depth.
type Entry = (Value, u32);

/// The number of values in `v` (recursion bounded by [`MAX_DEPTH`]).
fn size_of(v: &Value) -> u64 {
    1 + match v {
        Value::List(items) | Value::Tuple(items) => items.iter().map(size_of).sum(),
        Value::Dict(items) => items.iter().map(|(k, v)| size_of(k) + size_of(v)).sum(),
        Value::Persistent(p) => size_of(p),
        _ => 0,
    }
}

/// Run one pickle from the cursor's position to its STOP opcode.
fn unpickle(c: &mut Cursor<'_>) -> Result<Value, ConvertError> {
    let mut stack: Vec<Entry> = Vec::new();
    let mut memo: HashMap<u32, (Value, u32, u64)> = HashMap::new();
    let mut made: u64 = 0;
    // Charge `n` new values to the budget.
    let mut charge = |n: u64| -> Result<(), ConvertError> {
        made += n;
        if made > MAX_VALUES {
            Err(bad(format!("pickle builds more than {MAX_VALUES} values")))
        } else {
            Ok(())
        }
    };
    let nested = |depth: u32| -> Result<u32, ConvertError> {
        if depth > MAX_DEPTH {
            Err(bad(format!("pickle nests deeper than {MAX_DEPTH}")))
        } else {
            Ok(depth)
        }
    };
    let pop = |stack: &mut Vec<Entry>| stack.pop().ok_or_else(|| bad("pickle stack underflow"));
    let pop_mark = |stack: &mut Vec<Entry>| -> Result<(Vec<Value>, u32), ConvertError> {
        let at = stack
            .iter()
            .rposition(|(v, _)| *v == Value::Mark)
            .ok_or_else(|| bad("pickle MARK missing"))?;
        let items = stack.split_off(at + 1);
        stack.pop();
        let depth = items.iter().map(|(_, d)| *d).max().unwrap_or(0);
        Ok((items.into_iter().map(|(v, _)| v).collect(), depth))
    };
    loop {
        let at = c.pos;
        let op = c.u8()?;
        if !matches!(op, 0x80 | 0x95 | b'.' | b'q' | b'r' | 0x94 | b'b') {
            charge(1)?;
        }
        let leaf = |v: Value| (v, 0u32);
        match op {
            0x80 => {
                c.u8()?; // PROTO
            }
            0x95 => {
                c.u64()?; // FRAME
            }
            b'.' => return pop(&mut stack).map(|(v, _)| v),
            b'(' => stack.push(leaf(Value::Mark)),
            b'N' => stack.push(leaf(Value::None)),
            0x88 => stack.push(leaf(Value::Bool(true))),
            0x89 => stack.push(leaf(Value::Bool(false))),
            b'J' => stack.push(leaf(Value::Int(c.u32()? as i32 as i128))),
            b'K' => stack.push(leaf(Value::Int(c.u8()? as i128))),
            b'M' => stack.push(leaf(Value::Int(c.u16()? as i128))),
            0x8a => {
                let n = c.u8()? as usize;
                let bytes = c.take(n)?;
                if n > 16 {
                    return Err(bad("integer too long"));
                }
                let mut v: i128 = 0;
                for (i, b) in bytes.iter().enumerate() {
                    v |= (*b as i128) << (8 * i);
                }
                if n > 0 && n < 16 && bytes[n - 1] & 0x80 != 0 {
                    v -= 1i128 << (8 * n);
                }
                stack.push(leaf(Value::Int(v)));
            }
            b'G' => stack.push(leaf(Value::Float(f64::from_be_bytes(
                c.take(8)?.try_into().expect("8 bytes"),
            )))),
            b'X' => {
                let n = c.u32()? as usize;
                stack.push(leaf(Value::Str(
                    String::from_utf8_lossy(c.take(n)?).into_owned(),
                )));
            }
            0x8c => {
                let n = c.u8()? as usize;
                stack.push(leaf(Value::Str(
                    String::from_utf8_lossy(c.take(n)?).into_owned(),
                )));
            }
            b'T' => {
                let n = c.u32()? as usize;
                stack.push(leaf(Value::Bytes(c.take(n)?.to_vec())));
            }
            b'U' => {
                let n = c.u8()? as usize;
                stack.push(leaf(Value::Bytes(c.take(n)?.to_vec())));
            }
            b'}' => stack.push(leaf(Value::Dict(Vec::new()))),
            b']' => stack.push(leaf(Value::List(Vec::new()))),
            b')' => stack.push(leaf(Value::Tuple(Vec::new()))),
            b'd' => {
                let (items, d) = pop_mark(&mut stack)?;
                stack.push((Value::Dict(pairs(items)?), nested(d + 1)?));
            }
            b'l' => {
                let (items, d) = pop_mark(&mut stack)?;
                stack.push((Value::List(items), nested(d + 1)?));
            }
            b't' => {
                let (items, d) = pop_mark(&mut stack)?;
                stack.push((Value::Tuple(items), nested(d + 1)?));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(bad("pickle stack underflow"));
                }
                let items = stack.split_off(stack.len() - n);
                let d = items.iter().map(|(_, d)| *d).max().unwrap_or(0);
                let items = items.into_iter().map(|(v, _)| v).collect();
                stack.push((Value::Tuple(items), nested(d + 1)?));
            }
            b'q' | b'r' | 0x94 => {
                let k = match op {
                    b'q' => c.u8()? as u32,
                    b'r' => c.u32()?,
                    _ => memo.len() as u32,
                };
                let (v, d) = stack
                    .last()
                    .cloned()
                    .ok_or_else(|| bad("memo store on an empty stack"))?;
                let size = size_of(&v);
                charge(size)?;
                memo.insert(k, (v, d, size));
            }
            b'h' | b'j' => {
                let k = if op == b'h' { c.u8()? as u32 } else { c.u32()? };
                let (v, d, size) = memo
                    .get(&k)
                    .ok_or_else(|| bad(format!("memo {k} missing")))?;
                charge(*size)?;
                stack.push((v.clone(), *d));
            }
            b'c' => {
                let module = c.line()?;
                let name = c.line()?;
                stack.push(leaf(Value::Global(module, name)));
            }
            b'Q' => {
                let (pid, d) = pop(&mut stack)?;
                stack.push((Value::Persistent(Box::new(pid)), nested(d + 1)?));
            }
            b's' => {
                let (v, dv) = pop(&mut stack)?;
                let (k, dk) = pop(&mut stack)?;
                match stack.last_mut() {
                    Some((Value::Dict(items), d)) => {
                        items.push((k, v));
                        *d = nested((*d).max(dv.max(dk) + 1))?;
                    }
                    _ => return Err(bad("SETITEM on a non-dict")),
                }
            }
            b'u' => {
                let (items, di) = pop_mark(&mut stack)?;
                let new = pairs(items)?;
                match stack.last_mut() {
                    Some((Value::Dict(items), d)) => {
                        items.extend(new);
                        *d = nested((*d).max(di + 1))?;
                    }
                    _ => return Err(bad("SETITEMS on a non-dict")),
                }
            }
            b'a' => {
                let (v, dv) = pop(&mut stack)?;
                match stack.last_mut() {
                    Some((Value::List(items), d)) => {
                        items.push(v);
                        *d = nested((*d).max(dv + 1))?;
                    }
                    _ => return Err(bad("APPEND on a non-list")),
                }
            }
            b'e' => {
                let (new, di) = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some((Value::List(items), d)) => {
                        items.extend(new);
                        *d = nested((*d).max(di + 1))?;
                    }
                    _ => return Err(bad("APPENDS on a non-list")),
                }
            }
            b'R' | 0x81 => {
                let (args, _) = pop(&mut stack)?;
                let (callable, _) = pop(&mut stack)?;
                stack.push(leaf(call(callable, args)?));
            }
            b'b' => {
                // BUILD: state for the object below it (an OrderedDict's `_metadata` and the
                // like); the tensors do not depend on it.
                pop(&mut stack)?;
            }
            other => {
                return Err(bad(format!(
                    "unsupported pickle opcode 0x{other:02x} at byte {at}"
                )))
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, ConvertError> {
    if !items.len().is_multiple_of(2) {
        return Err(bad("odd number of dict items"));
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn as_usize(v: &Value) -> Result<usize, ConvertError> {
    match v {
        Value::Int(i) if *i >= 0 && *i <= usize::MAX as i128 => Ok(*i as usize),
        other => Err(bad(format!("expected a size, got {}", brief(other)))),
    }
}

fn usizes(v: &Value) -> Result<Vec<usize>, ConvertError> {
    match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(as_usize).collect(),
        other => Err(bad(format!(
            "expected a tuple of sizes, got {}",
            brief(other)
        ))),
    }
}

/// The calls a state dict is made of.
fn call(callable: Value, args: Value) -> Result<Value, ConvertError> {
    let Value::Global(module, name) = &callable else {
        return Err(bad(format!("call of {}", brief(&callable))));
    };
    let Value::Tuple(args) = args else {
        return Err(bad(format!("{module}.{name} called without a tuple")));
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            if args.len() < 4 {
                return Err(bad("_rebuild_tensor with too few arguments"));
            }
            let Value::Persistent(pid) = &args[0] else {
                return Err(bad("tensor without a storage"));
            };
            let Value::Tuple(pid) = &**pid else {
                return Err(bad("storage id is not a tuple"));
            };
            if !matches!(pid.get(5), None | Some(Value::None)) {
                return Err(bad("storage views (old torch.save files) are not read"));
            }
            let (Some(Value::Global(_, storage)), Some(key)) = (pid.get(1), pid.get(2)) else {
                return Err(bad(format!("unexpected storage id {}", brief(pid))));
            };
            let dtype = Dtype::from_storage(storage)
                .ok_or_else(|| bad(format!("unsupported storage type {storage}")))?;
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
                other => return Err(bad(format!("storage key {}", brief(other)))),
            };
            let size = usizes(&args[2])?;
            let stride = usizes(&args[3])?;
            if size.len() != stride.len() {
                return Err(bad("tensor size and stride differ in rank"));
            }
            Ok(Value::Tensor(TensorRef {
                key,
                dtype,
                offset: as_usize(&args[1])?,
                size,
                stride,
            }))
        }
        _ => Ok(Value::Object(format!("{module}.{name}"))),
    }
}

/// A float tensor, materialised row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Read every float tensor reachable from the checkpoint's top-level dict entry `field`
/// (`None`: the top level itself is the state dict), by name.
pub fn read_state_dict(
    bytes: &[u8],
    field: Option<&str>,
) -> Result<BTreeMap<String, Tensor>, ConvertError> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Err(bad(
            "a zip checkpoint (torch.save's newer format); only the legacy format is read",
        ));
    }
    let mut c = Cursor {
        data: bytes,
        pos: 0,
    };
    match unpickle(&mut c)? {
        Value::Int(m) if m == MAGIC => {}
        _ => {
            return Err(bad(
                "not a legacy PyTorch checkpoint (no magic number; zip checkpoints are not read)",
            ))
        }
    }
    unpickle(&mut c)?; // protocol version
    unpickle(&mut c)?; // sys info
    let object = unpickle(&mut c)?;
    let keys = match unpickle(&mut c)? {
        Value::List(keys) => keys,
        other => {
            return Err(bad(format!(
                "storage key list expected, got {}",
                brief(&other)
            )))
        }
    };
    // Storages follow in key order; which dtype each has comes from the tensors, anywhere in
    // the object (an optimizer's state has storages of its own).
    let mut elem_size: HashMap<String, usize> = HashMap::new();
    collect_storage_sizes(&object, &mut elem_size);
    let mut raw: HashMap<String, &[u8]> = HashMap::new();
    let state = match field {
        None => object.clone(),
        Some(f) => match &object {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| *k == Value::Str(f.to_string()))
                .map(|(_, v)| v.clone())
                .ok_or_else(|| bad(format!("the checkpoint has no {f:?}")))?,
            _ => return Err(bad("the checkpoint is not a dict")),
        },
    };
    let Value::Dict(items) = state else {
        return Err(bad("the state is not a dict"));
    };
    let mut tensors: Vec<(String, TensorRef)> = Vec::new();
    for (k, v) in items {
        if let (Value::Str(name), Value::Tensor(t)) = (k, v) {
            tensors.push((name, t));
        }
    }
    for key in &keys {
        let key = match key {
            Value::Str(s) => s.clone(),
            Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            other => return Err(bad(format!("storage key {}", brief(other)))),
        };
        let n = c.u64()? as usize;
        let size = *elem_size
            .get(&key)
            .ok_or_else(|| bad(format!("storage {key} is used by no tensor")))?;
        let len = n
            .checked_mul(size)
            .ok_or_else(|| bad("storage size overflows"))?;
        raw.insert(key, c.take(len)?);
    }
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        let data = raw
            .get(&t.key)
            .ok_or_else(|| bad(format!("{name}: storage {} missing", t.key)))?;
        out.insert(name.clone(), materialise(&name, &t, data)?);
    }
    Ok(out)
}

fn collect_storage_sizes(v: &Value, out: &mut HashMap<String, usize>) {
    match v {
        Value::Tensor(t) => {
            out.insert(t.key.clone(), t.dtype.size());
        }
        Value::List(items) | Value::Tuple(items) => {
            items.iter().for_each(|i| collect_storage_sizes(i, out))
        }
        Value::Dict(items) => items.iter().for_each(|(k, v)| {
            collect_storage_sizes(k, out);
            collect_storage_sizes(v, out);
        }),
        _ => {}
    }
}

/// Gather a strided view into a row-major f32 vector.
fn materialise(name: &str, t: &TensorRef, data: &[u8]) -> Result<Tensor, ConvertError> {
    let esize = t.dtype.size();
    let elems = data.len() / esize;
    let past = || bad(format!("{name}: view reaches past its storage"));
    // Every index the view can reach, checked before anything is allocated.
    let n = t
        .size
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(past)?;
    if n > elems {
        return Err(past());
    }
    if n > 0 {
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |a, (&d, &st)| {
                (d - 1).checked_mul(st).and_then(|x| a.checked_add(x))
            })
            .ok_or_else(past)?;
        if last >= elems {
            return Err(past());
        }
    }
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; t.size.len()];
    for _ in 0..n {
        // In bounds: each index is at most the last one checked above.
        let at = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        let b = &data[at * esize..(at + 1) * esize];
        out.push(match t.dtype {
            Dtype::F32 => f32::from_le_bytes(b.try_into().expect("4 bytes")),
            Dtype::F64 => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            Dtype::I64 => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
        });
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(Tensor {
        shape: t.size.clone(),
        data: out,
    })
}

/// Write `tensors` as a safetensors file (F32, little-endian), atomically via `OUT.partial`.
pub fn write_safetensors(
    tensors: &BTreeMap<String, Tensor>,
    metadata: &[(&str, String)],
    out: &Path,
) -> Result<u64, ConvertError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".into(), meta.into());
    }
    let mut offset = 0usize;
    for (name, t) in tensors {
        let end = offset + t.data.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut head = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| bad(format!("header: {e}")))?;
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let mut bytes = Vec::with_capacity(8 + head.len() + offset);
    bytes.extend_from_slice(&(head.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&head);
    for t in tensors.values() {
        for v in &t.data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let partial = out.with_extension("partial");
    std::fs::write(&partial, &bytes).map_err(|e| ConvertError::io(&partial, e))?;
    std::fs::rename(&partial, out).map_err(|e| ConvertError::io(out, e))?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zip_checkpoint_or_junk_is_refused_clearly() {
        let err = read_state_dict(b"\x00junk", None).unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported pickle opcode 0x00 at byte 0"),
            "{err}"
        );
        let err = read_state_dict(&[0x80, 0x02, b'K', 7, b'.'], None).unwrap_err();
        assert!(
            err.to_string().contains("not a legacy PyTorch checkpoint"),
            "{err}"
        );
    }

    #[test]
    fn hostile_pickles_are_refused_without_exhausting_memory_or_stack() {
        // A list copied into itself through the memo, doubling each time.
        let mut p = vec![b']', b'q', 0];
        for _ in 0..64 {
            p.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        p.push(b'.');
        let err = unpickle(&mut Cursor { data: &p, pos: 0 }).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
        // Lists nested a million deep.
        let mut p = vec![b']'; 1_000_000];
        p.extend(std::iter::repeat_n(b'a', 999_999));
        p.push(b'.');
        let err = unpickle(&mut Cursor { data: &p, pos: 0 }).unwrap_err();
        assert!(err.to_string().contains("nests deeper"), "{err}");
        // A zip checkpoint says what it is.
        let err = read_state_dict(b"PK\x03\x04rest", None).unwrap_err();
        assert!(err.to_string().contains("zip checkpoint"), "{err}");
    }

    #[test]
    fn negative_long1_integers_decode() {
        let mut c = Cursor {
            data: &[0x8a, 0x02, 0xff, 0xff, b'.'],
            pos: 0,
        };
        assert_eq!(unpickle(&mut c).unwrap(), Value::Int(-1));
    }

    #[test]
    fn strided_views_materialise_row_major() {
        // A 2x3 storage read transposed (3x2).
        let data: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = TensorRef {
            key: "0".into(),
            dtype: Dtype::F32,
            offset: 0,
            size: vec![3, 2],
            stride: vec![1, 3],
        };
        let m = materialise("t", &t, &data).unwrap();
        assert_eq!(m.data, vec![1., 4., 2., 5., 3., 6.]);
        let past = TensorRef {
            offset: 1,
            ..t.clone()
        };
        assert!(materialise("t", &past, &data).is_err());
        // Sizes and strides that overflow, or ask for more than the storage holds.
        let huge = TensorRef {
            size: vec![1 << 40],
            stride: vec![0],
            ..t.clone()
        };
        assert!(materialise("t", &huge, &data).is_err());
        let wraps = TensorRef {
            size: vec![2, 2],
            stride: vec![usize::MAX / 2, 1],
            ..t
        };
        assert!(materialise("t", &wraps, &data).is_err());
    }
}
