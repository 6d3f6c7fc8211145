//! GGUF metadata values and the typed getters on [`GgufFile`].
//!
//! `get_*` return an error naming the file and key when the key is missing or holds another
//! type; `opt_*` return `Ok(None)` for a missing key and the same error for a wrong type, for keys
//! with defaults. Integer getters accept any integer type whose value fits losslessly (converters
//! disagree on u32 vs i32 vs u64 for counts); float and string getters are exact.

use std::fmt;

use super::GgufFile;
use crate::error::{Error, Result};

/// The type tag of a metadata value, as stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The smallest encoding of one value: a string is at least its u64 length, an array its u32
    /// type and u64 count.
    pub fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: all elements have one type, kept even when the array is empty.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<Array>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value, widened.
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }
}

impl Array {
    /// The type of the elements.
    pub fn element_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Short descriptions for error messages: `u32 30`, `string "llama"`, `array of 49152 string`.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ty = self.value_type().name();
        match self {
            Value::String(s) if s.chars().count() > 40 => write!(f, "{ty} {:?}...", s.chars().take(40).collect::<String>()),
            Value::String(s) => write!(f, "{ty} {s:?}"),
            Value::Array(a) => write!(f, "array of {} {}", a.len(), a.element_type().name()),
            Value::Bool(v) => write!(f, "{ty} {v}"),
            Value::F32(v) => write!(f, "{ty} {v}"),
            Value::F64(v) => write!(f, "{ty} {v}"),
            // Integers: as_integer covers every remaining variant.
            v => write!(f, "{ty} {}", v.as_integer().unwrap_or_default()),
        }
    }
}

/// Defines `opt_<name>` (None when missing) and `get_<name>` (error when missing) from a
/// conversion `&Value -> Option<T>` that returns None for a wrong type.
macro_rules! getters {
    ($($(#[$doc:meta])* $get:ident, $opt:ident -> $t:ty, $expected:literal, $conv:expr;)*) => {
        impl GgufFile {
            $(
                $(#[$doc])*
                pub fn $opt(&self, key: &str) -> Result<Option<$t>> {
                    let Some(v) = self.get(key) else { return Ok(None) };
                    let conv: fn(&Value) -> Option<$t> = $conv;
                    conv(v).map(Some).ok_or_else(|| self.wrong_type(key, v, $expected))
                }
                $(#[$doc])*
                pub fn $get(&self, key: &str) -> Result<$t> {
                    self.$opt(key)?.ok_or_else(|| self.missing(key))
                }
            )*
        }
    };
}

getters! {
    /// An integer of any type that fits u32.
    get_u32, opt_u32 -> u32, "an integer that fits u32", |v| v.as_integer().and_then(|i| i.try_into().ok());
    /// An integer of any type that fits u64.
    get_u64, opt_u64 -> u64, "an integer that fits u64", |v| v.as_integer().and_then(|i| i.try_into().ok());
    /// An integer of any type that fits i32.
    get_i32, opt_i32 -> i32, "an integer that fits i32", |v| v.as_integer().and_then(|i| i.try_into().ok());
    /// An integer of any type that fits i64.
    get_i64, opt_i64 -> i64, "an integer that fits i64", |v| v.as_integer().and_then(|i| i.try_into().ok());
    /// An integer of any type that fits usize (counts and sizes).
    get_usize, opt_usize -> usize, "an integer that fits usize", |v| v.as_integer().and_then(|i| i.try_into().ok());
    /// An f32 value.
    get_f32, opt_f32 -> f32, "f32", |v| match v { Value::F32(x) => Some(*x), _ => None };
    /// An f64, or an f32 widened exactly.
    get_f64, opt_f64 -> f64, "f64 or f32", |v| match v { Value::F64(x) => Some(*x), Value::F32(x) => Some(*x as f64), _ => None };
    get_bool, opt_bool -> bool, "bool", |v| match v { Value::Bool(x) => Some(*x), _ => None };
    get_str, opt_str -> &str, "string", |v| match v { Value::String(s) => Some(s.as_str()), _ => None };
    /// Any array.
    get_array, opt_array -> &Array, "array", |v| match v { Value::Array(a) => Some(a), _ => None };
    get_str_array, opt_str_array -> &[String], "array of string", |v| match v { Value::Array(Array::String(a)) => Some(a.as_slice()), _ => None };
    get_f32_array, opt_f32_array -> &[f32], "array of f32", |v| match v { Value::Array(Array::F32(a)) => Some(a.as_slice()), _ => None };
    get_i32_array, opt_i32_array -> &[i32], "array of i32", |v| match v { Value::Array(Array::I32(a)) => Some(a.as_slice()), _ => None };
    get_u32_array, opt_u32_array -> &[u32], "array of u32", |v| match v { Value::Array(Array::U32(a)) => Some(a.as_slice()), _ => None };
}

impl GgufFile {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// `general.architecture` (e.g. `llama`), which prefixes the model's hyperparameter keys.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    fn missing(&self, key: &str) -> Error {
        let detail = "is missing; the file may come from an older or different converter".to_string();
        Error::GgufKey { file: self.name().into(), key: key.into(), detail }
    }

    fn wrong_type(&self, key: &str, v: &Value, expected: &str) -> Error {
        Error::GgufKey { file: self.name().into(), key: key.into(), detail: format!("holds {v}, expected {expected}") }
    }
}
