//! Typed values on both sides of a call, with or without serialization.
//!
//! On the wire a call carries positional `args` and keyword `kwargs`, and a reply is a JSON
//! array with one element per returned value (microservices_connector's format: a tuple of three gives three
//! elements, nothing gives `[null]`, a list gives `[[...]]`). In process, the same values travel
//! as Rust values and are downcast on the other side, so a local call never serializes; only
//! when the types on both sides differ does it fall back to JSON. A caller in the handler's
//! task lends its arguments ([`CallArgs::Lent`]) and gets the value back from where the
//! handler's future keeps it ([`Reply::Held`]): neither needs a box of its own; a call that
//! leaves the caller's task (layers, another task) boxes them ([`LocalValue`]).

use std::any::{type_name, Any};
use std::fmt;

use serde::de::{DeserializeOwned, Visitor};
use serde::ser::{Impossible, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::codec::{Codec, CodecError};
use crate::error::HandlerError;

/// What a value looks like at its top level: a tuple spreads into several wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A Rust tuple: several values at once.
    Tuple,
    /// `()`: no value.
    Unit,
    /// Anything else: one value.
    Single,
}

/// Finds the [`Shape`] of a value without serializing it: the probe stops at the first call.
///
/// ```
/// use switchyard_core::values::{shape_of, Shape};
/// assert_eq!(shape_of(&(1, "a")), Shape::Tuple);
/// assert_eq!(shape_of(&vec![1, 2]), Shape::Single);
/// assert_eq!(shape_of(&()), Shape::Unit);
/// ```
pub fn shape_of<T: Serialize + ?Sized>(value: &T) -> Shape {
    match value.serialize(ShapeProbe) {
        Err(Found(shape)) => shape,
        Ok(()) => Shape::Single,
    }
}

/// The wire values of `value`: a tuple gives one element per field, `()` gives `[null]`.
///
/// ```
/// use switchyard_core::values::to_values;
/// use serde_json::json;
/// assert_eq!(to_values(&("a", 2)).unwrap(), vec![json!("a"), json!(2)]);
/// assert_eq!(to_values(&vec![1, 2]).unwrap(), vec![json!([1, 2])]);
/// assert_eq!(to_values(&()).unwrap(), vec![json!(null)]);
/// ```
pub fn to_values<T: Serialize + ?Sized>(value: &T) -> Result<Vec<Value>, serde_json::Error> {
    Ok(match shape_of(value) {
        Shape::Unit => vec![Value::Null],
        Shape::Single => vec![serde_json::to_value(value)?],
        Shape::Tuple => match serde_json::to_value(value)? {
            Value::Array(items) => items,
            other => vec![other],
        },
    })
}

/// The values of call arguments: like [`to_values`] but `()` means no arguments at all.
pub fn to_arg_values<T: Serialize + ?Sized>(value: &T) -> Result<Vec<Value>, serde_json::Error> {
    match shape_of(value) {
        Shape::Unit => Ok(Vec::new()),
        _ => to_values(value),
    }
}

/// Decodes wire reply values into `R`. A tuple type takes all values; any other type takes the
/// single value (or, if there are several, all of them as a list).
///
/// ```
/// use switchyard_core::values::from_values;
/// use serde_json::json;
/// let (a, b): (String, i64) = from_values(vec![json!("x"), json!(3)]).unwrap();
/// assert_eq!((a.as_str(), b), ("x", 3));
/// let list: Vec<i64> = from_values(vec![json!([1, 2])]).unwrap();
/// assert_eq!(list, vec![1, 2]);
/// let none: Option<i64> = from_values(vec![json!(null)]).unwrap();
/// assert_eq!(none, None);
/// ```
pub fn from_values<R: DeserializeOwned>(values: Vec<Value>) -> Result<R, serde_json::Error> {
    R::deserialize(ReplyDeserializer(values))
}

#[derive(Debug)]
struct Found(Shape);

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl std::error::Error for Found {}
impl serde::ser::Error for Found {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Found(Shape::Single)
    }
}

/// A serializer that only records which top-level method was called. Written by hand because
/// serde has no way to ask "is this a tuple?" and `serde_json::Value` loses the difference
/// between a tuple and a list.
struct ShapeProbe;

macro_rules! probe_single {
    ($($method:ident($($arg:ty),*);)*) => {
        $(fn $method(self, $(_: $arg),*) -> Result<(), Found> { Err(Found(Shape::Single)) })*
    };
}

impl Serializer for ShapeProbe {
    type Ok = ();
    type Error = Found;
    type SerializeSeq = Impossible<(), Found>;
    type SerializeTuple = Impossible<(), Found>;
    type SerializeTupleStruct = Impossible<(), Found>;
    type SerializeTupleVariant = Impossible<(), Found>;
    type SerializeMap = Impossible<(), Found>;
    type SerializeStruct = Impossible<(), Found>;
    type SerializeStructVariant = Impossible<(), Found>;

    probe_single! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
        serialize_i64(i64); serialize_i128(i128); serialize_u8(u8); serialize_u16(u16);
        serialize_u32(u32); serialize_u64(u64); serialize_u128(u128); serialize_f32(f32);
        serialize_f64(f64); serialize_char(char); serialize_str(&str); serialize_bytes(&[u8]);
        serialize_none(); serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_unit(self) -> Result<(), Found> {
        Err(Found(Shape::Unit))
    }
    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), Found> {
        Err(Found(Shape::Single))
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), Found> {
        Err(Found(Shape::Single))
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Found> {
        Err(Found(Shape::Single))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Found> {
        Err(Found(Shape::Single))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Found> {
        Err(Found(Shape::Tuple))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Found> {
        Err(Found(Shape::Single))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Found> {
        Err(Found(Shape::Single))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Found> {
        Err(Found(Shape::Single))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Found> {
        Err(Found(Shape::Single))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Found> {
        Err(Found(Shape::Single))
    }
}

/// Reads reply values as one Rust value; see [`from_values`].
struct ReplyDeserializer(Vec<Value>);

impl ReplyDeserializer {
    fn single(mut self) -> Value {
        match self.0.len() {
            0 => Value::Null,
            1 => self.0.pop().unwrap_or(Value::Null),
            _ => Value::Array(self.0),
        }
    }
}

macro_rules! forward_to_single {
    ($($method:ident $(($($arg:ident: $ty:ty),*))?;)*) => {
        $(fn $method<V: Visitor<'de>>(self, $($($arg: $ty,)*)? visitor: V) -> Result<V::Value, serde_json::Error> {
            self.single().$method($($($arg,)*)? visitor)
        })*
    };
}

impl<'de> serde::Deserializer<'de> for ReplyDeserializer {
    type Error = serde_json::Error;

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, serde_json::Error> {
        if self.0.len() == len {
            Value::Array(self.0).deserialize_tuple(len, visitor)
        } else {
            self.single().deserialize_tuple(len, visitor)
        }
    }

    forward_to_single! {
        deserialize_any; deserialize_bool; deserialize_i8; deserialize_i16; deserialize_i32;
        deserialize_i64; deserialize_u8; deserialize_u16; deserialize_u32; deserialize_u64;
        deserialize_f32; deserialize_f64; deserialize_char; deserialize_str; deserialize_string;
        deserialize_bytes; deserialize_byte_buf; deserialize_option; deserialize_unit;
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq;
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map;
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier; deserialize_ignored_any;
    }
}

/// A value that crosses an in-process call without being serialized. It can still be turned
/// into wire values when the other side asks for a different type.
pub trait LocalValue: Send + 'static {
    /// The wire values (see [`to_values`]).
    fn to_values(&self) -> Result<Vec<Value>, serde_json::Error>;
    /// The wire values as call arguments (see [`to_arg_values`]).
    fn to_arg_values(&self) -> Result<Vec<Value>, serde_json::Error>;
    /// The value itself, for a downcast.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
    /// The value itself, to test its type before a downcast.
    fn as_any(&self) -> &dyn Any;
    /// The wire array of this value as a reply (see [`to_values`]), encoded straight from
    /// the Rust value without building a `serde_json::Value` tree.
    fn encode_values(&self, codec: Codec) -> Result<bytes::Bytes, CodecError>;
    /// A call body `{"args": [...], "kwargs": {}, "token": ...}` with this value as the
    /// arguments (see [`to_arg_values`]), encoded straight from the Rust value.
    fn encode_call(&self, token: Option<&str>, codec: Codec) -> Result<bytes::Bytes, CodecError>;
}

/// A value written as a wire array: a tuple as itself, `()` as `[null]` (reply) or `[]`
/// (arguments), anything else as a one-element array.
struct AsArray<'a, T: ?Sized> {
    value: &'a T,
    unit_is_null: bool,
}

impl<T: Serialize + ?Sized> Serialize for AsArray<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match shape_of(self.value) {
            Shape::Tuple => self.value.serialize(s),
            Shape::Unit if !self.unit_is_null => s.serialize_seq(Some(0))?.end(),
            Shape::Unit => [()].serialize(s),
            Shape::Single => (self.value,).serialize(s),
        }
    }
}

/// `{}`.
struct EmptyObject;

impl Serialize for EmptyObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

#[derive(serde::Serialize)]
struct CallBody<'a, A: Serialize> {
    args: A,
    kwargs: EmptyObject,
    token: Option<&'a str>,
}

impl<T: Serialize + Send + 'static> LocalValue for T {
    fn to_values(&self) -> Result<Vec<Value>, serde_json::Error> {
        to_values(self)
    }
    fn to_arg_values(&self) -> Result<Vec<Value>, serde_json::Error> {
        to_arg_values(self)
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn encode_values(&self, codec: Codec) -> Result<bytes::Bytes, CodecError> {
        codec.encode(&AsArray {
            value: self,
            unit_is_null: true,
        })
    }
    fn encode_call(&self, token: Option<&str>, codec: Codec) -> Result<bytes::Bytes, CodecError> {
        codec.encode(&CallBody {
            args: AsArray {
                value: self,
                unit_is_null: false,
            },
            kwargs: EmptyObject,
            token,
        })
    }
}

impl fmt::Debug for dyn LocalValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalValue")
    }
}

/// A Rust value in a slot, taken out by whoever wants exactly its type (no allocation, no
/// serialization) and read as wire values by whoever wants another: a caller's arguments lent
/// to a handler in its task ([`CallArgs::Lent`]), a handler's reply held for its caller
/// ([`Reply::Held`]). Implemented for `Option<T>` (the value, until taken).
pub trait ValueSlot: Send {
    /// The `Option<T>` itself, for the handler to take the value out of after a downcast.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// The wire values as call arguments (see [`to_arg_values`]); an error once taken.
    fn to_arg_values(&self) -> Result<Vec<Value>, serde_json::Error>;
    /// The value, boxed, for a call that leaves the caller's task; `None` once taken.
    fn take_local(&mut self) -> Option<Box<dyn LocalValue>>;
    /// The value as a reply's wire values (see [`to_values`]); an error once taken.
    fn to_reply_values(&self) -> Result<Vec<Value>, serde_json::Error>;
    /// The value as a reply's wire array, encoded straight from it (see
    /// [`LocalValue::encode_values`]); an error once taken.
    fn encode_reply(&self, codec: Codec) -> Result<bytes::Bytes, CodecError>;
}

impl<T: Serialize + Send + 'static> ValueSlot for Option<T> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn to_arg_values(&self) -> Result<Vec<Value>, serde_json::Error> {
        match self {
            Some(v) => to_arg_values(v),
            None => Err(taken()),
        }
    }
    fn take_local(&mut self) -> Option<Box<dyn LocalValue>> {
        self.take().map(|v| Box::new(v) as Box<dyn LocalValue>)
    }
    fn to_reply_values(&self) -> Result<Vec<Value>, serde_json::Error> {
        to_values(self.as_ref().ok_or_else(taken)?)
    }
    fn encode_reply(&self, codec: Codec) -> Result<bytes::Bytes, CodecError> {
        self.as_ref().ok_or_else(taken)?.encode_values(codec)
    }
}

fn taken() -> serde_json::Error {
    serde::ser::Error::custom("the value was taken already")
}

/// The arguments as a handler receives them: owned, or lent by a caller in the same task
/// (an in-process call without layers, which needs no box for them).
#[non_exhaustive]
pub enum CallArgs<'a> {
    /// Owned arguments, from the wire or boxed by a caller.
    Owned(Args),
    /// A caller's value, lent (see [`ValueSlot`]).
    Lent(&'a mut (dyn ValueSlot + 'static)),
}

impl CallArgs<'_> {
    /// Owned arguments: a lent value boxed. `None` when a lent value was taken already.
    pub fn into_owned(self) -> Option<Args> {
        match self {
            CallArgs::Owned(args) => Some(args),
            CallArgs::Lent(slot) => slot.take_local().map(Args::Local),
        }
    }

    /// The wire form of these arguments.
    pub fn into_wire(self) -> Result<(Vec<Value>, Map<String, Value>), serde_json::Error> {
        match self {
            CallArgs::Owned(args) => args.into_wire(),
            CallArgs::Lent(slot) => Ok((slot.to_arg_values()?, Map::new())),
        }
    }

    /// The arguments as `T` when the caller passed exactly a `T`, taken without a copy.
    #[inline]
    pub fn take<T: 'static>(&mut self) -> Option<T> {
        match self {
            CallArgs::Lent(slot) => slot.as_any_mut().downcast_mut::<Option<T>>()?.take(),
            CallArgs::Owned(Args::Local(v)) if v.as_any().is::<T>() => {
                let taken = std::mem::replace(v, Box::new(()));
                taken.into_any().downcast::<T>().ok().map(|b| *b)
            }
            CallArgs::Owned(_) => None,
        }
    }
}

impl From<Args> for CallArgs<'_> {
    fn from(args: Args) -> Self {
        CallArgs::Owned(args)
    }
}

impl fmt::Debug for CallArgs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallArgs::Owned(args) => args.fmt(f),
            CallArgs::Lent(_) => f.write_str("Lent"),
        }
    }
}

/// The arguments of a call.
#[derive(Debug)]
pub enum Args {
    /// Decoded from the wire: positional values and keyword values.
    Wire {
        /// Positional arguments.
        args: Vec<Value>,
        /// Keyword arguments.
        kwargs: Map<String, Value>,
    },
    /// Rust values from a caller in the same process (a tuple, one value, or `()`).
    Local(Box<dyn LocalValue>),
}

impl Args {
    /// Arguments from a Rust value: a tuple gives one argument per field, `()` none.
    pub fn local<T: Serialize + Send + 'static>(value: T) -> Args {
        Args::Local(Box::new(value))
    }

    /// A copy of these arguments in wire form (for a call that may be sent again).
    pub fn wire_copy(&self) -> Result<(Vec<Value>, Map<String, Value>), serde_json::Error> {
        match self {
            Args::Wire { args, kwargs } => Ok((args.clone(), kwargs.clone())),
            Args::Local(v) => Ok((v.to_arg_values()?, Map::new())),
        }
    }

    /// The wire form of these arguments.
    pub fn into_wire(self) -> Result<(Vec<Value>, Map<String, Value>), serde_json::Error> {
        match self {
            Args::Wire { args, kwargs } => Ok((args, kwargs)),
            Args::Local(v) => Ok((v.to_arg_values()?, Map::new())),
        }
    }
}

/// What a handler returned.
#[derive(Debug)]
#[non_exhaustive]
pub enum Reply {
    /// Decoded from the wire.
    Wire(Vec<Value>),
    /// A Rust value from a handler in the same process.
    Local(Box<dyn LocalValue>),
    /// A Rust value from a handler in the same process, held where the handler ran (in its
    /// future's own allocation, so that returning it allocates nothing more).
    Held(Held),
}

/// A handler's value, held in the allocation of the future that produced it (see
/// [`Reply::Held`]).
pub struct Held(std::pin::Pin<Box<dyn HoldsValue>>);

impl Held {
    /// Holds what `holder` holds.
    pub(crate) fn new(holder: std::pin::Pin<Box<dyn HoldsValue>>) -> Self {
        Self(holder)
    }

    fn value(&mut self) -> &mut dyn ValueSlot {
        self.0.as_mut().value()
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Held")
    }
}

/// What holds a handler's value once it has one: its finished future.
pub(crate) trait HoldsValue: Send {
    /// The value, as an `Option<T>` (taken once).
    fn value(self: std::pin::Pin<&mut Self>) -> &mut dyn ValueSlot;
}

impl Reply {
    /// The wire values of this reply.
    pub fn into_values(self) -> Result<Vec<Value>, serde_json::Error> {
        match self {
            Reply::Wire(v) => Ok(v),
            Reply::Local(v) => v.to_values(),
            Reply::Held(mut h) => h.value().to_reply_values(),
        }
    }

    /// The encoded wire array of this reply.
    pub fn encode(self, codec: Codec) -> Result<bytes::Bytes, CodecError> {
        match self {
            Reply::Wire(v) => codec.encode(&v),
            Reply::Local(v) => v.encode_values(codec),
            Reply::Held(mut h) => h.value().encode_reply(codec),
        }
    }

    /// The reply as `R`: a downcast when a local handler returned exactly `R`, otherwise a
    /// decode of the wire values.
    pub fn decode<R: DeserializeOwned + 'static>(self) -> Result<R, String> {
        match self {
            Reply::Wire(values) => from_values(values).map_err(|e| e.to_string()),
            Reply::Local(v) if v.as_any().is::<R>() => match v.into_any().downcast::<R>() {
                Ok(r) => Ok(*r),
                Err(_) => Err("local reply changed type".to_string()),
            },
            Reply::Local(v) => {
                let values = v.to_values().map_err(|e| e.to_string())?;
                from_values(values).map_err(|e| e.to_string())
            }
            Reply::Held(mut h) => {
                let value = h.value();
                if let Some(r) = value.as_any_mut().downcast_mut::<Option<R>>() {
                    return r
                        .take()
                        .ok_or_else(|| "the reply was taken already".to_string());
                }
                let values = value.to_reply_values();
                from_values(values.map_err(|e| e.to_string())?).map_err(|e| e.to_string())
            }
        }
    }
}

/// A handler's return value. Implemented for `Result<T, E>` and for the common
/// serializable types (strings, numbers, `()`, `Option`, `Vec`, maps, tuples, [`Json`]);
/// wrap your own structs in [`Json`] or return them in a `Result`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned from a switchyard handler",
    note = "return `Json(value)` or `Result<{Self}, HandlerError>` for your own serializable types"
)]
pub trait IntoReply: Send + 'static {
    /// The value a caller receives.
    type Value: Serialize + Send + 'static;
    /// The value, or the handler's error.
    fn into_value(self) -> Result<Self::Value, HandlerError>;
}

/// Wraps any serializable value as a handler result, like axum's `Json`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Json<T>(pub T);

impl<T: Serialize + Send + 'static> IntoReply for Json<T> {
    type Value = T;
    fn into_value(self) -> Result<T, HandlerError> {
        Ok(self.0)
    }
}

impl<T: Serialize + Send + 'static, E: Into<HandlerError> + Send + 'static> IntoReply
    for Result<T, E>
{
    type Value = T;
    fn into_value(self) -> Result<T, HandlerError> {
        self.map_err(Into::into)
    }
}

macro_rules! into_reply_plain {
    ($($t:ty),*) => {$(
        impl IntoReply for $t {
            type Value = Self;
            fn into_value(self) -> Result<Self, HandlerError> { Ok(self) }
        }
    )*};
}
into_reply_plain!(
    (),
    bool,
    char,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    f32,
    f64,
    String,
    &'static str,
    Value,
    Map<String, Value>
);

macro_rules! into_reply_generic {
    ($($t:ident<$($p:ident),*> $(where $($b:ident: $bound:path),*)?;)*) => {$(
        impl<$($p: Serialize + Send + 'static),*> IntoReply for $t<$($p),*> $(where $($b: $bound),*)? {
            type Value = Self;
            fn into_value(self) -> Result<Self, HandlerError> { Ok(self) }
        }
    )*};
}
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
into_reply_generic! {
    Vec<T>; Option<T>; VecDeque<T>; BTreeSet<T>; HashSet<T>; BTreeMap<K, V>; HashMap<K, V>;
}

macro_rules! into_reply_tuple {
    ($(($($t:ident),+);)*) => {$(
        impl<$($t: Serialize + Send + 'static),+> IntoReply for ($($t,)+) {
            type Value = Self;
            fn into_value(self) -> Result<Self, HandlerError> { Ok(self) }
        }
    )*};
}
into_reply_tuple! {
    (A); (A, B); (A, B, C); (A, B, C, D); (A, B, C, D, E); (A, B, C, D, E, F);
    (A, B, C, D, E, F, G); (A, B, C, D, E, F, G, H);
}

/// A short, readable name of a Rust type for error messages (`String`, not
/// `alloc::string::String`).
pub fn short_type_name<T: ?Sized>() -> String {
    let full = type_name::<T>();
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or(""));
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or(""));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Item {
        name: String,
        n: u32,
    }

    #[test]
    fn replies_have_one_wire_value_per_returned_value() {
        assert_eq!(
            to_values(&("a", 1, 2.5)).unwrap(),
            vec![json!("a"), json!(1), json!(2.5)]
        );
        assert_eq!(to_values(&Option::<u8>::None).unwrap(), vec![json!(null)]);
        assert_eq!(
            to_values(&Item {
                name: "x".into(),
                n: 1
            })
            .unwrap(),
            vec![json!({"name": "x", "n": 1})]
        );
        assert_eq!(to_values(&vec![vec![1]]).unwrap(), vec![json!([[1]])]);
    }

    #[test]
    fn typed_replies_decode_from_wire_values() {
        let item: Item = from_values(vec![json!({"name": "x", "n": 1})]).unwrap();
        assert_eq!(
            item,
            Item {
                name: "x".into(),
                n: 1
            }
        );
        let (x, y, z): (Value, Vec<String>, Option<u8>) =
            from_values(vec![json!({"k": 1}), json!(["a"]), json!(null)]).unwrap();
        assert_eq!((x, y, z), (json!({"k": 1}), vec!["a".to_string()], None));
        from_values::<()>(vec![json!(null)]).unwrap();
        let err = from_values::<u32>(vec![json!("nope")]).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn local_reply_downcasts_when_types_match_and_converts_when_not() {
        let r = Reply::Local(Box::new(("a".to_string(), 5u64)));
        let (a, b): (String, u64) = r.decode().unwrap();
        assert_eq!((a.as_str(), b), ("a", 5));
        // Different but compatible types on the caller's side: falls back to JSON.
        let r = Reply::Local(Box::new(("a".to_string(), 5u64)));
        let (a, b): (Value, f64) = r.decode().unwrap();
        assert_eq!((a, b), (json!("a"), 5.0));
        let r = Reply::Local(Box::new("text"));
        assert!(r.decode::<u32>().is_err());
    }

    #[test]
    fn direct_encodings_match_the_value_route() {
        let cases: Vec<Box<dyn LocalValue>> = vec![
            Box::new(("a".to_string(), 1, 2.5)),
            Box::new(()),
            Box::new(vec![1, 2]),
            Box::new(Item {
                name: "x".into(),
                n: 1,
            }),
            Box::new(Option::<u8>::None),
            Box::new(("one",)),
        ];
        for v in cases {
            for codec in [Codec::Json, Codec::MsgPack] {
                let direct: Vec<Value> = codec.decode(&v.encode_values(codec).unwrap()).unwrap();
                assert_eq!(direct, v.to_values().unwrap());
                let call: Value = codec
                    .decode(&v.encode_call(Some("t"), codec).unwrap())
                    .unwrap();
                assert_eq!(
                    call,
                    json!({"args": v.to_arg_values().unwrap(), "kwargs": {}, "token": "t"})
                );
            }
        }
    }

    #[test]
    fn type_names_are_short() {
        assert_eq!(short_type_name::<String>(), "String");
        assert_eq!(
            short_type_name::<Vec<Option<String>>>(),
            "Vec<Option<String>>"
        );
        assert_eq!(short_type_name::<(i64, f64)>(), "(i64, f64)");
    }
}
