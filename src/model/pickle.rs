//! The pickle of a PyTorch state dict (`data.pkl` in a `torch.save` archive), read as data.
//!
//! A pickle is a program for a small stack machine whose instructions may import and call any
//! Python function: `torch.load` without `weights_only=True` runs whatever a file asks for
//! (`os.system`, `builtins.eval`, ...). This module runs none of it. It interprets the handful of
//! instructions that `torch.save` writes for a dict of tensors (protocol 2, and the protocol 4
//! spellings of the same things) and accepts only the globals such a dict names: `OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter` and the typed storages of
//! the dtypes vlm reads. Those are not called either: each is a tag that says which plain record
//! to build (a dict, a tensor description). Any other global is refused when it is named, before
//! the next instruction, as PyTorch's own `weights_only` unpickler does
//! (`torch/_weights_only_unpickler.py`), and so is any other instruction.
//!
//! Why not `candle_core::pickle`: it accepts every global (an `os.system` call becomes an object
//! that is later skipped, with a message on stdout, instead of a refusal), it panics on short
//! argument tuples (`Vec::remove` out of range) and on wide `LONG1` integers, allocates a string's
//! declared length (up to 4 GiB) before reading it, copies memoised objects on every `BINGET`
//! (a few bytes of pickle can ask for exponential memory), maps `DICT` to `EMPTY_DICT`, and reads
//! each tensor through a fresh zip reader into a new buffer, never in place. It is a converter for
//! trusted files; this is a reader for any file a user downloads.
//!
//! Memory is linear in the pickle's length: objects live in one arena and the stack, the memo and
//! containers hold small `Copy` handles into it (a `BINGET` copies a handle, never an object), and
//! the number of values created is capped ([`MAX_VALUES`]). Nothing is recursive, so no nesting
//! depth can overflow the stack, and dropping the arena is flat.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::DType;

use crate::error::escape_controls;

/// At most this many values (stack entries, objects, memo entries) per pickle: about 100 bytes
/// each, so a pickle costs at most ~200 MB whatever it holds. A state dict needs about 15 per
/// tensor (ViT-B/32's 398 tensors: 5,000).
const MAX_VALUES: usize = 1 << 21;

/// The globals a state dict's pickle names; nothing else is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    /// `collections.OrderedDict`: the state dict itself, and each tensor's empty backward hooks.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`: an `nn.Parameter`.
    RebuildParameter,
    /// `torch.FloatStorage` and the like: a storage's element type, in a persistent id.
    Storage(DType),
}

/// The typed storages vlm reads, as `torch.save` names them (it still writes these legacy names,
/// PyTorch 2.x included), with their element types.
const STORAGES: [(&str, DType); 8] = [
    ("FloatStorage", DType::F32),
    ("HalfStorage", DType::F16),
    ("BFloat16Storage", DType::BF16),
    ("DoubleStorage", DType::F64),
    ("LongStorage", DType::I64),
    ("IntStorage", DType::I32),
    ("ShortStorage", DType::I16),
    ("ByteStorage", DType::U8),
];

/// A global the pickle names that is not part of a state dict: refused, never looked up.
#[derive(Debug, thiserror::Error)]
#[error(
    "refused: its pickle asks for {global}, which is not part of a PyTorch state dict (vlm reads pickles as data and never runs them)"
)]
pub(crate) struct Refused {
    /// `module.name`, control characters escaped and cut to a printable length.
    pub global: String,
}

/// `module.name` as a message may quote it: one line, at most 120 characters.
fn display_name(module: &str, name: &str) -> String {
    let full = format!("{module}.{name}");
    let mut shown: String = escape_controls(&full).chars().take(120).collect();
    if shown.chars().count() < escape_controls(&full).chars().count() {
        shown.push('…');
    }
    shown
}

fn resolve(module: &str, name: &str) -> Result<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => return Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => return Ok(Global::RebuildTensor),
        ("torch._utils", "_rebuild_parameter") => return Ok(Global::RebuildParameter),
        _ => {}
    }
    if module == "torch" {
        if let Some((_, dtype)) = STORAGES.iter().find(|(n, _)| *n == name) {
            return Ok(Global::Storage(*dtype));
        }
        if name.ends_with("Storage") && name.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!(
                "a tensor is stored as torch.{name}, a dtype vlm does not read (it reads {})",
                STORAGES.map(|(n, _)| n).join(", ")
            );
        }
    }
    Err(Refused {
        global: display_name(module, name),
    }
    .into())
}

/// A stack, memo or container entry: plain values, or a handle to an object in the arena.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Global(Global),
    Obj(usize),
}

#[derive(Debug)]
enum Object {
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// A dict or `OrderedDict`, in insertion order (keys are not deduplicated here).
    Dict(Vec<(Value, Value)>),
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// A storage as a persistent id names it: `('storage', torch.FloatStorage, key, location, numel)`;
/// its bytes are the archive's entry `data/<key>`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: DType,
    /// Elements, as the pickle states them (checked against the entry by the caller).
    pub numel: u64,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a view of a storage, in elements.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

/// The pickle as the instructions build it: an arena of objects and a stack of handles.
struct Machine<'a> {
    code: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each open MARK (Python's metastack).
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Object>,
    /// Values created so far, against [`MAX_VALUES`].
    created: usize,
}

impl<'a> Machine<'a> {
    fn new(code: &'a [u8]) -> Self {
        Machine {
            code,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            objects: Vec::new(),
            created: 0,
        }
    }

    fn count(&mut self) -> Result<()> {
        self.created += 1;
        if self.created > MAX_VALUES {
            bail!("the pickle builds more than {MAX_VALUES} values, far more than a state dict");
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| self.code.get(self.pos..end))
            .context("the pickle ends inside an instruction (truncated?)")?;
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// The text up to the next newline (GLOBAL's arguments).
    fn line(&mut self) -> Result<&'a str> {
        let rest = self.code.get(self.pos..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .context("the pickle ends inside a GLOBAL instruction (truncated?)")?;
        let text = self.take(len)?;
        self.pos += 1;
        std::str::from_utf8(text).context("a GLOBAL name is not UTF-8")
    }

    fn text(&mut self, len: usize) -> Result<Value> {
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).context("a string is not UTF-8")?;
        self.object(Object::Str(text.to_string()))
    }

    fn object(&mut self, object: Object) -> Result<Value> {
        self.count()?;
        self.objects.push(object);
        Ok(Value::Obj(self.objects.len() - 1))
    }

    fn push(&mut self, value: Value) -> Result<()> {
        self.count()?;
        self.stack.push(value);
        Ok(())
    }

    /// The stack height below which the current MARK's frame cannot reach.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value> {
        if self.stack.len() <= self.floor() {
            bail!("the pickle pops an empty stack");
        }
        self.stack.pop().context("the pickle pops an empty stack")
    }

    fn top(&self) -> Result<Value> {
        if self.stack.len() <= self.floor() {
            bail!("the pickle reads an empty stack");
        }
        self.stack
            .last()
            .copied()
            .context("the pickle reads an empty stack")
    }

    /// The values pushed since the last MARK, which is closed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .context("the pickle closes a MARK it never opened")?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn get(&self, value: Value) -> Option<&Object> {
        match value {
            Value::Obj(id) => self.objects.get(id),
            _ => None,
        }
    }

    fn str(&self, value: Value) -> Option<&str> {
        match self.get(value) {
            Some(Object::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn tuple(&self, value: Value) -> Option<&[Value]> {
        match self.get(value) {
            Some(Object::Tuple(items)) => Some(items),
            _ => None,
        }
    }

    fn is_dict(&self, value: Value) -> bool {
        matches!(self.get(value), Some(Object::Dict(_)))
    }

    /// The dict or list on top of the stack, to add to.
    fn container(&mut self) -> Result<&mut Object> {
        let target = self.top()?;
        match target {
            Value::Obj(id) => self.objects.get_mut(id),
            _ => None,
        }
        .context("the pickle adds items to something that is not a dict or list")
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            bail!("the pickle sets a dict item without a value");
        }
        let Object::Dict(dict) = self.container()? else {
            bail!("the pickle sets an item of something that is not a dict");
        };
        dict.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        let Object::List(list) = self.container()? else {
            bail!("the pickle appends to something that is not a list");
        };
        list.extend(items);
        Ok(())
    }

    fn memo_put(&mut self, id: u32) -> Result<()> {
        let value = self.top()?;
        self.count()?;
        self.memo.insert(id, value);
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Result<()> {
        let value = *self
            .memo
            .get(&id)
            .with_context(|| format!("the pickle reads memo entry {id}, never stored"))?;
        self.push(value)
    }

    fn int(&self, value: Value, what: &str) -> Result<u64> {
        match value {
            Value::Int(n) => {
                u64::try_from(n).with_context(|| format!("tensor {what} {n} is negative"))
            }
            _ => bail!("tensor {what} is not an integer"),
        }
    }

    fn ints(&self, value: Value, what: &str) -> Result<Vec<u64>> {
        let items = self
            .tuple(value)
            .with_context(|| format!("tensor {what} is not a tuple"))?;
        items.iter().map(|&v| self.int(v, what)).collect()
    }

    /// `_rebuild_tensor_v2`'s arguments as a tensor record.
    fn rebuild_tensor(&self, args: &[Value]) -> Result<TensorRef> {
        let [storage, offset, size, stride, grad, hooks, rest @ ..] = args else {
            bail!(
                "_rebuild_tensor_v2 takes 6 or 7 arguments, the pickle gives {}",
                args.len()
            );
        };
        let storage = match self.get(*storage) {
            Some(Object::Storage(s)) => s.clone(),
            _ => bail!("a tensor's storage is not a storage reference"),
        };
        let size = self.ints(*size, "size")?;
        let stride = self.ints(*stride, "stride")?;
        if size.len() != stride.len() {
            bail!(
                "a tensor has {} sizes but {} strides",
                size.len(),
                stride.len()
            );
        }
        if !matches!(grad, Value::Bool(_)) || !self.is_dict(*hooks) {
            bail!("_rebuild_tensor_v2's requires_grad or backward_hooks argument is malformed");
        }
        match rest {
            [] => {}
            [metadata] if self.is_dict(*metadata) || *metadata == Value::None => {}
            _ => bail!("_rebuild_tensor_v2's metadata argument is malformed"),
        }
        Ok(TensorRef {
            storage,
            offset: self.int(*offset, "storage offset")?,
            size,
            stride,
        })
    }

    fn reduce(&mut self) -> Result<()> {
        let args = self.pop()?;
        let callable = self.pop()?;
        let Value::Global(global) = callable else {
            bail!("the pickle calls something that is not a global");
        };
        let args = self
            .tuple(args)
            .context("the pickle calls a global without an argument tuple")?
            .to_vec();
        let result = match global {
            Global::OrderedDict if args.is_empty() => self.object(Object::Dict(Vec::new()))?,
            Global::OrderedDict => bail!("the pickle builds an OrderedDict from arguments"),
            Global::RebuildTensor => {
                let tensor = self.rebuild_tensor(&args)?;
                self.object(Object::Tensor(tensor))?
            }
            Global::RebuildParameter => match args.as_slice() {
                [tensor, Value::Bool(_), hooks]
                    if matches!(self.get(*tensor), Some(Object::Tensor(_)))
                        && self.is_dict(*hooks) =>
                {
                    *tensor
                }
                _ => bail!("_rebuild_parameter's arguments are malformed"),
            },
            Global::Storage(_) => bail!("the pickle calls a storage type"),
        };
        self.push(result)
    }

    /// A persistent id: `('storage', torch.<Type>Storage, key, location, numel)`.
    fn persistent_load(&mut self) -> Result<()> {
        let pid = self.pop()?;
        let storage = match self.tuple(pid) {
            Some(
                &[tag, Value::Global(Global::Storage(dtype)), key, location, Value::Int(numel)],
            ) if self.str(tag) == Some("storage") && self.str(location).is_some() => {
                let key = self
                    .str(key)
                    .context("a storage key is not a string")?
                    .to_string();
                let numel = u64::try_from(numel)
                    .with_context(|| format!("storage {key} has {numel} elements"))?;
                StorageRef { key, dtype, numel }
            }
            _ => bail!("a persistent id is not a tensor storage reference"),
        };
        let value = self.object(Object::Storage(storage))?;
        self.push(value)
    }

    /// Runs the pickle to its STOP; the value it returns.
    fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let op = self.byte().context("the pickle has no STOP (truncated?)")?;
            match op {
                // PROTO: protocols 2 (torch.save's default) to 5.
                0x80 => match self.byte()? {
                    2..=5 => {}
                    v => bail!("pickle protocol {v} is not one torch.save writes"),
                },
                // FRAME: a length hint for buffered readers; the whole pickle is in memory.
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => {
                    self.count()?;
                    self.marks.push(self.stack.len());
                }
                b')' => {
                    let value = self.object(Object::Tuple(Vec::new()))?;
                    self.push(value)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let value = self.object(Object::Tuple(items))?;
                    self.push(value)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let value = self.object(Object::Tuple(items))?;
                    self.push(value)?;
                }
                b']' => {
                    let value = self.object(Object::List(Vec::new()))?;
                    self.push(value)?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.append(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'}' => {
                    let value = self.object(Object::Dict(Vec::new()))?;
                    self.push(value)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if !items.len().is_multiple_of(2) {
                        bail!("the pickle builds a dict with a key without a value");
                    }
                    let pairs = items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect();
                    let value = self.object(Object::Dict(pairs))?;
                    self.push(value)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let n = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(n.into()))?;
                }
                b'K' => {
                    let n = self.byte()?;
                    self.push(Value::Int(n.into()))?;
                }
                b'M' => {
                    let n = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(n.into()))?;
                }
                // LONG1: a little-endian two's complement integer of n bytes.
                0x8a => {
                    let n = usize::from(self.byte()?);
                    if n > 8 {
                        bail!("the pickle holds a {n}-byte integer, wider than any size or offset");
                    }
                    let bytes = self.take(n)?;
                    let mut buf = match bytes.last() {
                        Some(&b) if b & 0x80 != 0 => [0xff; 8],
                        _ => [0; 8],
                    };
                    buf[..n].copy_from_slice(bytes);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                // BINFLOAT: big-endian f64 (training checkpoints: learning rates, betas).
                b'G' => {
                    let x = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(x))?;
                }
                b'X' => {
                    let len = self.u32()?;
                    let value = self.text(usize::try_from(len)?)?;
                    self.push(value)?;
                }
                0x8c => {
                    let len = self.byte()?;
                    let value = self.text(usize::from(len))?;
                    self.push(value)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let global = resolve(module, name)?;
                    self.push(Value::Global(global))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (self.str(module), self.str(name)) else {
                        bail!("STACK_GLOBAL's module or name is not a string");
                    };
                    let global = resolve(module, name)?;
                    self.push(Value::Global(global))?;
                }
                // INST: GLOBAL and a call in one (protocol 0); no state dict uses it, but the
                // refusal can still name what it would have called.
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    return Err(Refused {
                        global: display_name(module, name),
                    }
                    .into());
                }
                b'R' => self.reduce()?,
                // BUILD: the state dict's `_metadata` attribute, set on the OrderedDict. Plain
                // data vlm does not need: checked to be a dict's, and dropped.
                b'b' => {
                    self.pop()?;
                    if !self.is_dict(self.top()?) {
                        bail!("the pickle sets the state of something that is not a dict");
                    }
                }
                b'Q' => self.persistent_load()?,
                b'q' => {
                    let id = self.byte()?;
                    self.memo_put(id.into())?;
                }
                b'r' => {
                    let id = self.u32()?;
                    self.memo_put(id)?;
                }
                0x94 => {
                    let id = u32::try_from(self.memo.len())?;
                    self.memo_put(id)?;
                }
                b'h' => {
                    let id = self.byte()?;
                    self.memo_get(id.into())?;
                }
                b'j' => {
                    let id = self.u32()?;
                    self.memo_get(id)?;
                }
                other => bail!(
                    "pickle instruction {:?} (0x{other:02x}) at byte {at} is not one a state dict uses",
                    char::from(other).escape_default().to_string()
                ),
            }
        }
    }
}

/// The tensors of a `torch.save`d state dict, by name, in the pickle's order: the top-level dict,
/// or the dict under its `"state_dict"` key (OpenCLIP and Lightning training checkpoints). Entries
/// that are not tensors (an epoch number, say) are left out. Nothing is called or imported; a
/// global that is not part of a state dict is refused as [`Refused`].
pub fn state_dict(pickle: &[u8]) -> Result<Vec<(String, TensorRef)>> {
    let mut machine = Machine::new(pickle);
    let root = machine.run()?;
    let m = &machine;
    let entries = |value: Value| match m.get(value) {
        Some(Object::Dict(entries)) => Some(entries),
        _ => None,
    };
    let top = entries(root).context("the pickle holds no dict of tensors")?;
    let dict = top
        .iter()
        .rev()
        .find(|(k, _)| m.str(*k) == Some("state_dict"))
        .and_then(|(_, v)| entries(*v))
        .unwrap_or(top);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (key, value) in dict {
        let Some(Object::Tensor(tensor)) = m.get(*value) else {
            continue;
        };
        let name = m
            .str(*key)
            .context("a tensor's name is not a string")?
            .to_string();
        if !seen.insert(name.clone()) {
            bail!(
                "tensor {} appears twice in the state dict",
                escape_controls(&name)
            );
        }
        out.push((name, tensor.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny pickle assembler: opcodes and their arguments, as `pickle` writes them.
    #[derive(Default)]
    struct P(Vec<u8>);

    impl P {
        fn op(mut self, op: u8) -> Self {
            self.0.push(op);
            self
        }
        fn raw(mut self, bytes: &[u8]) -> Self {
            self.0.extend_from_slice(bytes);
            self
        }
        fn proto(self) -> Self {
            self.op(0x80).raw(&[2])
        }
        fn global(self, module: &str, name: &str) -> Self {
            self.op(b'c').raw(format!("{module}\n{name}\n").as_bytes())
        }
        fn str(self, s: &str) -> Self {
            self.op(b'X')
                .raw(&(s.len() as u32).to_le_bytes())
                .raw(s.as_bytes())
        }
        fn int(self, n: u8) -> Self {
            self.op(b'K').raw(&[n])
        }
        /// `OrderedDict()`.
        fn ordered_dict(self) -> Self {
            self.global("collections", "OrderedDict").op(b')').op(b'R')
        }
        /// `_rebuild_tensor_v2(storage(key, FloatStorage, numel), offset, (size,), (1,), False, OrderedDict())`
        /// for a 1-d f32 tensor.
        fn tensor(self, key: &str, numel: u8, offset: u8, size: u8) -> Self {
            self.global("torch._utils", "_rebuild_tensor_v2")
                .op(b'(')
                .op(b'(')
                .str("storage")
                .global("torch", "FloatStorage")
                .str(key)
                .str("cpu")
                .int(numel)
                .op(b't')
                .op(b'Q')
                .int(offset)
                .int(size)
                .op(0x85)
                .int(1)
                .op(0x85)
                .op(0x89)
                .ordered_dict()
                .op(b't')
                .op(b'R')
        }
        /// `{name: tensor}` as an OrderedDict, then STOP.
        fn state_dict(self, name: &str) -> Self {
            self.proto()
                .ordered_dict()
                .str(name)
                .tensor("0", 4, 1, 3)
                .op(b's')
                .op(b'.')
        }
        fn run(&self) -> Result<Vec<(String, TensorRef)>> {
            state_dict(&self.0)
        }
        fn err(&self) -> String {
            format!("{:#}", self.run().unwrap_err())
        }
    }

    fn float_storage(key: &str, numel: u64) -> StorageRef {
        StorageRef {
            key: key.to_string(),
            dtype: DType::F32,
            numel,
        }
    }

    #[test]
    fn reads_a_state_dict_as_torch_save_writes_it() {
        let got = P::default().state_dict("w").run().unwrap();
        assert_eq!(
            got,
            [(
                "w".to_string(),
                TensorRef {
                    storage: float_storage("0", 4),
                    offset: 1,
                    size: vec![3],
                    stride: vec![1],
                }
            )]
        );
    }

    #[test]
    fn parameters_memo_setitems_and_build_as_torch_writes_them() {
        // {"a": Parameter(t0), "b": t1 (through the memo)} with SETITEMS, then the
        // OrderedDict's _metadata set by BUILD, as `torch.save(model.state_dict())` ends.
        let p = P::default()
            .proto()
            .ordered_dict()
            .op(b'q')
            .raw(&[0])
            .op(b'(')
            .str("a")
            .global("torch._utils", "_rebuild_parameter")
            .tensor("0", 2, 0, 2)
            .op(0x88)
            .ordered_dict()
            .op(0x87)
            .op(b'R')
            .str("b")
            .tensor("1", 3, 0, 3)
            .op(b'r')
            .raw(&7u32.to_le_bytes())
            .op(b'u')
            .op(b'}')
            .str("_metadata")
            .op(b'}')
            .op(b's')
            .op(b'b')
            .op(b'.');
        let got = p.run().unwrap();
        let names: Vec<_> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(got[0].1.storage, float_storage("0", 2));
        assert_eq!(got[1].1.size, [3]);
        // The memo holds the object itself, as Python's does: a dict stored, fetched back and
        // then filled is filled wherever it is referred to.
        let code = P::default()
            .op(b'}')
            .op(b'q')
            .raw(&[5])
            .op(b'j')
            .raw(&5u32.to_le_bytes())
            .str("w")
            .tensor("0", 4, 0, 4)
            .op(b's')
            .op(0x86)
            .op(b'.')
            .0;
        let mut m = Machine::new(&code);
        let pair = m.run().unwrap();
        let &[a, b] = m.tuple(pair).unwrap() else {
            panic!("a pair")
        };
        assert_eq!(a, b);
        assert!(matches!(m.get(a), Some(Object::Dict(d)) if d.len() == 1));
    }

    #[test]
    fn protocol_4_spellings_are_read() {
        // SHORT_BINUNICODE, STACK_GLOBAL, MEMOIZE, FRAME.
        let short = |s: &str| {
            let mut v = vec![0x8c, s.len() as u8];
            v.extend_from_slice(s.as_bytes());
            v
        };
        let mut code = vec![0x80, 4, 0x95];
        code.extend_from_slice(&100u64.to_le_bytes());
        code.extend(short("collections"));
        code.extend(short("OrderedDict"));
        code.extend([0x93, 0x94, b')', b'R', 0x94]);
        code.extend(short("w"));
        code.extend(P::default().tensor("k", 4, 0, 4).0);
        code.extend([b's', b'.']);
        let got = state_dict(&code).unwrap();
        assert_eq!(got[0].0, "w");
        assert_eq!(got[0].1.storage.key, "k");
    }

    #[test]
    fn every_value_opcode_builds_what_python_builds() {
        fn run(code: &[u8]) -> (Machine<'_>, Value) {
            let mut m = Machine::new(code);
            let v = m.run().unwrap();
            (m, v)
        }
        let (_, v) = run(b"N.");
        assert_eq!(v, Value::None);
        let (_, v) = run(&[0x88, b'.']);
        assert_eq!(v, Value::Bool(true));
        let (_, v) = run(&[0x89, b'.']);
        assert_eq!(v, Value::Bool(false));
        let (_, v) = run(&[b'J', 0xfe, 0xff, 0xff, 0xff, b'.']);
        assert_eq!(v, Value::Int(-2));
        let (_, v) = run(&[b'K', 200, b'.']);
        assert_eq!(v, Value::Int(200));
        let (_, v) = run(&[b'M', 0x34, 0x12, b'.']);
        assert_eq!(v, Value::Int(0x1234));
        let (_, v) = run(&[0x8a, 0, b'.']);
        assert_eq!(v, Value::Int(0));
        let (_, v) = run(&[0x8a, 2, 0xff, 0x7f, b'.']);
        assert_eq!(v, Value::Int(0x7fff));
        let (_, v) = run(&[0x8a, 1, 0xff, b'.']);
        assert_eq!(v, Value::Int(-1));
        let (_, v) = run(&[0x8a, 8, 0, 0, 0, 0, 0, 0, 0, 0x80, b'.']);
        assert_eq!(v, Value::Int(i64::MIN));
        let mut g = vec![b'G'];
        g.extend(0.5f64.to_be_bytes());
        g.push(b'.');
        let (_, v) = run(&g);
        assert_eq!(v, Value::Float(0.5));
        let (m2, v) = run(&[b'(', b'K', 1, b'K', 2, b't', b'.']);
        assert_eq!(m2.tuple(v).unwrap(), [Value::Int(1), Value::Int(2)]);
        let (m2, v) = run(b").");
        assert!(m2.tuple(v).unwrap().is_empty());
        let (m2, v) = run(&[b'K', 1, b'K', 2, b'K', 3, 0x87, b'.']);
        assert_eq!(m2.tuple(v).unwrap().len(), 3);
        let (m2, v) = run(&[b'K', 1, b'K', 2, 0x86, b'.']);
        assert_eq!(m2.tuple(v).unwrap(), [Value::Int(1), Value::Int(2)]);
        let (m2, v) = run(&[b']', b'K', 1, b'a', b'(', b'K', 2, b'K', 3, b'e', b'.']);
        assert!(
            matches!(m2.get(v), Some(Object::List(l)) if l == &[Value::Int(1), Value::Int(2), Value::Int(3)])
        );
        let (m2, v) = run(&[b'(', b'K', 1, b'K', 2, b'd', b'.']);
        assert!(
            matches!(m2.get(v), Some(Object::Dict(d)) if d == &[(Value::Int(1), Value::Int(2))])
        );
        let (m2, v) = run(&[b'}', b'(', b'K', 1, b'K', 2, b'K', 3, b'K', 4, b'u', b'.']);
        assert!(matches!(m2.get(v), Some(Object::Dict(d)) if d.len() == 2));
        let mut s = vec![0x8c, 3];
        s.extend(b"abc.");
        let (m2, v) = run(&s);
        assert_eq!(m2.str(v), Some("abc"));
        assert!(Machine::new(&[]).run().is_err());
    }

    #[test]
    fn refuses_code_by_naming_the_global() {
        // `os.system("touch x")` as pickle writes it on Linux (protocol 2), and other spellings.
        for (module, name, shown) in [
            ("posix", "system", "posix.system"),
            ("os", "system", "os.system"),
            ("builtins", "eval", "builtins.eval"),
            ("subprocess", "Popen", "subprocess.Popen"),
            ("torch", "load", "torch.load"),
            (
                "torch._utils",
                "_rebuild_qtensor",
                "torch._utils._rebuild_qtensor",
            ),
            ("collections", "defaultdict", "collections.defaultdict"),
        ] {
            let p = P::default()
                .proto()
                .global(module, name)
                .str("touch /tmp/pwned")
                .op(0x85)
                .op(b'R')
                .op(b'.');
            let err = p.run().unwrap_err();
            let refused = err.downcast_ref::<Refused>().expect("a Refused error");
            assert_eq!(refused.global, shown);
            assert!(err.to_string().contains(&format!("asks for {shown},")));
            // Protocol 4's STACK_GLOBAL and protocol 0's INST are refused the same way.
            let p = P::default().str(module).str(name).op(0x93).op(b'.');
            assert!(p.run().unwrap_err().downcast_ref::<Refused>().is_some());
            let p = P::default()
                .op(b'(')
                .op(b'i')
                .raw(format!("{module}\n{name}\n").as_bytes())
                .op(b'.');
            let err = p.run().unwrap_err();
            assert_eq!(err.downcast_ref::<Refused>().unwrap().global, shown);
        }
        // Names are shown on one line and cut short.
        let long = "x".repeat(500);
        let err = P::default().str("a\nb").str(&long).op(0x93).err();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("a\\nb.xxx"), "{err}");
        assert!(err.len() < 300, "{err}");
        // Storage types of dtypes vlm does not read: named, not called a refusal of code.
        let err = P::default().global("torch", "BoolStorage").err();
        assert!(
            err.contains("torch.BoolStorage, a dtype vlm does not read"),
            "{err}"
        );
    }

    #[test]
    fn refuses_instructions_a_state_dict_never_uses() {
        for op in [
            b'0', b'1', b'2', b'P', b'I', b'L', b'S', b'V', b'o', 0x81, 0x92, 0x82, b'B', 0x8e,
            b'F', 0xff,
        ] {
            let err = P::default().proto().op(op).raw(&[0; 16]).err();
            assert!(err.contains("is not one a state dict uses"), "{op}: {err}");
        }
        let err = P::default().proto().raw(&[0x80, 1]).err();
        assert!(err.contains("protocol 1"), "{err}");
    }

    #[test]
    fn malformed_pickles_are_errors_not_panics() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "no STOP"),
            (vec![b'.'], "pops an empty stack"),
            (vec![b'(', b'.'], "pops an empty stack"),
            (vec![b'K', 1, b'(', 0x85], "pops an empty stack"),
            (vec![b't'], "never opened"),
            (
                vec![b'X', 0xff, 0xff, 0xff, 0xff, b'a'],
                "ends inside an instruction",
            ),
            (vec![b'X', 2, 0, 0, 0, 0xff, 0xfe, b'.'], "not UTF-8"),
            (vec![b'c', b'o', b's'], "ends inside a GLOBAL"),
            (vec![b'h', 3], "never stored"),
            (vec![b'q', 3], "reads an empty stack"),
            (vec![0x8a, 9], "9-byte integer"),
            (vec![b'K', 1, b'K', 1, b's'], "reads an empty stack"),
            (vec![b'K', 1, b'K', 1, b'K', 1, b's'], "not a dict or list"),
            (vec![b']', b'K', 1, b'K', 1, b's'], "not a dict"),
            (vec![b'}', b'K', 1, b'a'], "not a list"),
            (vec![b'}', b'(', b'K', 1, b'u'], "without a value"),
            (vec![b'(', b'K', 1, b'd'], "without a value"),
            (vec![b'K', 1, b')', b'R'], "not a global"),
            (vec![b'K', 1, b'K', 1, b'b'], "not a dict"),
            (vec![b'K', 1, b'Q'], "not a tensor storage"),
            (vec![b'K', 1, b'.'], "no dict of tensors"),
        ];
        for (code, want) in cases {
            let err = format!("{:#}", state_dict(&code).unwrap_err());
            assert!(err.contains(want), "{code:?}: {err} should say {want}");
        }
        // Calls with the wrong arguments.
        let od_args = P::default()
            .global("collections", "OrderedDict")
            .op(b']')
            .op(0x85)
            .op(b'R')
            .op(b'.');
        assert!(od_args.err().contains("from arguments"));
        let storage_call = P::default()
            .global("torch", "FloatStorage")
            .op(b')')
            .op(b'R')
            .op(b'.');
        assert!(storage_call.err().contains("calls a storage type"));
        let short = P::default()
            .global("torch._utils", "_rebuild_tensor_v2")
            .int(1)
            .op(0x85)
            .op(b'R')
            .op(b'.');
        assert!(short.err().contains("6 or 7 arguments, the pickle gives 1"));
        let param = P::default()
            .global("torch._utils", "_rebuild_parameter")
            .int(1)
            .op(0x85)
            .op(b'R')
            .op(b'.');
        assert!(param.err().contains("_rebuild_parameter's arguments"));
        let no_tuple = P::default()
            .global("collections", "OrderedDict")
            .int(1)
            .op(b'R')
            .op(b'.');
        assert!(no_tuple.err().contains("without an argument tuple"));
        // A duplicate name.
        let twice = P::default()
            .proto()
            .ordered_dict()
            .str("w")
            .tensor("0", 4, 0, 4)
            .op(b's')
            .str("w")
            .tensor("0", 4, 0, 4)
            .op(b's')
            .op(b'.');
        assert!(twice.err().contains("tensor w appears twice"));
    }

    /// Each malformed field of `_rebuild_tensor_v2` and of the persistent id.
    #[test]
    fn tensor_arguments_are_checked() {
        let with = |offset: P, size: P, stride: P| {
            let code = P::default()
                .proto()
                .op(b'}')
                .str("w")
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(b'(')
                .op(b'(')
                .str("storage")
                .global("torch", "FloatStorage")
                .str("0")
                .str("cpu")
                .int(4)
                .op(b't')
                .op(b'Q')
                .raw(&offset.0)
                .raw(&size.0)
                .raw(&stride.0)
                .op(0x89)
                .op(b'}')
                .op(b't')
                .op(b'R')
                .op(b's')
                .op(b'.');
            code.err()
        };
        let one = || P::default().int(1).op(0x85);
        let neg = P::default().op(b'J').raw(&(-1i32).to_le_bytes());
        assert!(with(neg, one(), one()).contains("storage offset -1 is negative"));
        assert!(with(P::default().op(b'N'), one(), one()).contains("offset is not an integer"));
        assert!(
            with(P::default().int(0), P::default().int(1), one()).contains("size is not a tuple")
        );
        assert!(with(P::default().int(0), one(), P::default().op(b')'))
            .contains("1 sizes but 0 strides"));
        let neg_size = P::default().op(b'J').raw(&(-4i32).to_le_bytes()).op(0x85);
        assert!(with(P::default().int(0), neg_size, one()).contains("size -4 is negative"));
        // The persistent id: wrong tag, negative count, non-string key.
        for (tag, numel, key, want) in [
            ("blob", 4i32, true, "not a tensor storage reference"),
            ("storage", -4, true, "has -4 elements"),
            ("storage", 4, false, "key is not a string"),
        ] {
            let mut p = P::default()
                .op(b'(')
                .str(tag)
                .global("torch", "FloatStorage");
            p = if key { p.str("0") } else { p.int(0) };
            let p = p
                .str("cpu")
                .op(b'J')
                .raw(&numel.to_le_bytes())
                .op(b't')
                .op(b'Q')
                .op(b'.');
            let err = p.err();
            assert!(err.contains(want), "{err} should say {want}");
        }
    }

    #[test]
    fn nested_state_dict_and_non_tensor_entries() {
        // {"epoch": 3, "state_dict": {"w": tensor}}: OpenCLIP's training checkpoints.
        let p = P::default()
            .proto()
            .op(b'}')
            .op(b'(')
            .str("epoch")
            .int(3)
            .str("state_dict")
            .op(b'}')
            .str("w")
            .tensor("0", 4, 0, 4)
            .op(b's')
            .op(b'u')
            .op(b'.');
        let got = p.run().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "w");
    }

    #[test]
    fn value_count_is_capped() {
        // A few bytes per value: MEMOIZE'd empty tuples pushed again and again by BINGET.
        let mut code = vec![b')', b'q', 0];
        code.extend(std::iter::repeat_n([b'h', 0], MAX_VALUES).flatten());
        code.push(b'.');
        let err = format!("{:#}", state_dict(&code).unwrap_err());
        assert!(err.contains("more than"), "{err}");
    }
}
