//! A job's data beyond its JSON: parameters given by reference to the `KILN_DATA` object
//! store ([`Input`]), the objects a worker loaded for them ([`Inputs`]), and the full output a
//! kernel hands back to be stored ([`OutputSink`]).

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Mutex;

use kiln_data::store::{Loaded, Want};
use kiln_data::{Dataset, HostTensor, Model};
use kiln_proto::{JobError, ObjectRef, OutputMode};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A tensor parameter: the values inline (`[1, 2, 3]`, `[[1, 2], [3, 4]]`), or a reference to
/// an object (`{"object": "NAME"}`, optionally `"tensor"` and `"sha256"`).
///
/// In JSON the two are told apart by shape (an array or an object); in bincode, which cannot
/// look ahead, it is an enum with a tag.
#[derive(Debug, Clone, PartialEq)]
pub enum Input<T> {
    /// The values, in the job body.
    Inline(T),
    /// An object in `KILN_DATA` that holds them.
    Object(ObjectRef),
}

impl<T> Input<T> {
    /// The inline value, if the parameter was given inline.
    pub fn inline(&self) -> Option<&T> {
        match self {
            Input::Inline(v) => Some(v),
            Input::Object(_) => None,
        }
    }

    /// The reference, if the parameter names an object.
    pub fn object(&self) -> Option<&ObjectRef> {
        match self {
            Input::Inline(_) => None,
            Input::Object(r) => Some(r),
        }
    }
}

/// The tagged form bincode carries.
#[derive(Deserialize)]
enum Tagged<T> {
    Inline(T),
    Object(ObjectRef),
}

/// [`Tagged`] borrowed, for encoding without a copy of the values (same variants, same tags).
#[derive(Serialize)]
#[serde(rename = "Tagged")]
enum TaggedRef<'a, T> {
    Inline(&'a T),
    Object(&'a ObjectRef),
}

impl<T: Serialize> Serialize for Input<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            match self {
                Input::Inline(v) => v.serialize(serializer),
                Input::Object(r) => r.serialize(serializer),
            }
        } else {
            match self {
                Input::Inline(v) => TaggedRef::Inline(v).serialize(serializer),
                Input::Object(r) => TaggedRef::<T>::Object(r).serialize(serializer),
            }
        }
    }
}

/// Inline values read from JSON, checked to fit in f32: JSON has no infinities, so an
/// infinite value here is a number too large for f32 (`1e39`), which must be refused rather
/// than computed as infinity (or sent on as `null` by a client that re-encodes it).
pub trait InlineValues {
    /// Where the first value that is not finite sits (`[2][0]`), if any.
    fn first_non_finite(&self) -> Option<String>;
}

impl InlineValues for f32 {
    fn first_non_finite(&self) -> Option<String> {
        (!self.is_finite()).then(String::new)
    }
}

impl<T: InlineValues> InlineValues for [T] {
    fn first_non_finite(&self) -> Option<String> {
        self.iter()
            .enumerate()
            .find_map(|(i, v)| v.first_non_finite().map(|at| format!("[{i}]{at}")))
    }
}

impl<T: InlineValues> InlineValues for Vec<T> {
    fn first_non_finite(&self) -> Option<String> {
        self.as_slice().first_non_finite()
    }
}

/// Inline f32 values as JSON text gives them: read as the f64 the text names ([`Self::Wide`]),
/// then rounded to f32 ([`Self::narrow`]), as numpy's `np.array(json.loads(text),
/// dtype=np.float32)` rounds them. Read straight as f32, a number at an f32 midpoint of its
/// f64 could round the other way, and one past f32's range would be refused by the parser
/// without kiln's message.
pub trait Narrowed: InlineValues + Sized {
    /// The same values as f64.
    type Wide: de::DeserializeOwned;
    /// The values rounded to f32 (a number past f32's range becomes an infinity, which
    /// [`InlineValues::first_non_finite`] finds).
    fn narrow(wide: Self::Wide) -> Self;
}

impl Narrowed for f32 {
    type Wide = JsonNumber;
    fn narrow(wide: JsonNumber) -> Self {
        wide.0
    }
}

/// One JSON number rounded to f32 once, from the value its text names: an integer
/// straight from its exact value (as numpy's `int64` to `float32` rounds it; by way of f64, one
/// past 2^53 rounded twice and could land on the other f32), any other number from its f64.
#[derive(Debug, Clone, Copy)]
pub struct JsonNumber(f32);

impl<'de> Deserialize<'de> for JsonNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberVisitor;
        impl Visitor<'_> for NumberVisitor {
            type Value = JsonNumber;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E>(self, v: i64) -> Result<JsonNumber, E> {
                Ok(JsonNumber(v as f32))
            }
            fn visit_u64<E>(self, v: u64) -> Result<JsonNumber, E> {
                Ok(JsonNumber(v as f32))
            }
            fn visit_f64<E>(self, v: f64) -> Result<JsonNumber, E> {
                Ok(JsonNumber(v as f32))
            }
        }
        deserializer.deserialize_any(NumberVisitor)
    }
}

impl<T: Narrowed> Narrowed for Vec<T> {
    type Wide = Vec<T::Wide>;
    fn narrow(wide: Self::Wide) -> Self {
        wide.into_iter().map(T::narrow).collect()
    }
}

/// Inline values from JSON text read as f64 and rounded to f32 ([`Narrowed`]), for a
/// parameter that is always inline (`#[serde(deserialize_with = "…")]`); other formats carry
/// f32 as it is.
pub(crate) fn read_narrowed<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Narrowed + Deserialize<'de>,
{
    if !deserializer.is_human_readable() {
        return Option::<T>::deserialize(deserializer);
    }
    Ok(Option::<T::Wide>::deserialize(deserializer)?.map(T::narrow))
}

/// The error for inline values outside f32's range, `at` the first one's place.
pub(crate) fn out_of_f32_range(at: &str) -> String {
    let max = f32::MAX;
    format!("element {at} is outside f32's range: values are 32-bit floats, at most ±{max:e}")
}

/// The error for inline values that are not finite in a binary body (which, unlike JSON, can
/// carry NaN and infinities), `at` the first one's place.
pub(crate) fn not_finite(at: &str) -> String {
    format!("element {at} is NaN or infinite: inline values must be finite numbers")
}

impl<'de, T: Deserialize<'de> + Narrowed> Deserialize<'de> for Input<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !deserializer.is_human_readable() {
            return match Tagged::<T>::deserialize(deserializer)? {
                Tagged::Inline(v) => match v.first_non_finite() {
                    Some(at) => Err(de::Error::custom(not_finite(&at))),
                    None => Ok(Input::Inline(v)),
                },
                Tagged::Object(r) => Ok(Input::Object(r)),
            };
        }
        struct InputVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Narrowed> Visitor<'de> for InputVisitor<T> {
            type Value = Input<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of numbers or an object reference {\"object\": \"NAME\"}")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                let wide = T::Wide::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                let values = T::narrow(wide);
                match values.first_non_finite() {
                    Some(at) => Err(de::Error::custom(out_of_f32_range(&at))),
                    None => Ok(Input::Inline(values)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                ObjectRef::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Input::Object)
            }
        }
        deserializer.deserialize_any(InputVisitor(PhantomData))
    }
}

/// One object a job's parameters name: which parameter, the reference, and how to read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    /// The parameter that names it (`a`, `image`, `dataset`).
    pub param: &'static str,
    /// The object, as the parameter names it.
    pub reference: ObjectRef,
    /// What to read it as.
    pub want: Want,
}

/// The objects named by tensor parameters `(name, value)`, each read as a tensor.
pub(crate) fn tensor_objects<T>(params: &[(&'static str, &Option<Input<T>>)]) -> Vec<Wanted> {
    params
        .iter()
        .filter_map(|(param, input)| {
            let reference = input.as_ref()?.object()?.clone();
            Some(Wanted {
                param,
                reference,
                want: Want::Tensor,
            })
        })
        .collect()
}

/// The objects a worker loaded for a job, by parameter name. Kernels take them out when
/// they run (so a tensor is never held twice).
#[derive(Default)]
pub struct Inputs {
    loaded: Mutex<HashMap<&'static str, Loaded>>,
    shapes: HashMap<&'static str, Vec<usize>>,
}

impl fmt::Debug for Inputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inputs")
            .field("shapes", &self.shapes)
            .finish()
    }
}

impl Inputs {
    /// No objects.
    pub fn none() -> Self {
        Self::default()
    }

    /// Record what was loaded for `param`.
    pub fn insert(&mut self, param: &'static str, loaded: Loaded) {
        let shape = match &loaded {
            Loaded::Tensor(t) => t.shape.clone(),
            Loaded::Dataset(d) => d.x.shape.clone(),
            Loaded::Model(_) => Vec::new(),
        };
        self.shapes.insert(param, shape);
        self.loaded
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .insert(param, loaded);
    }

    /// `f` of the model loaded for `param`, left in place (a plan reads its sizes); `None`
    /// when none is.
    pub fn with_model<R>(&self, param: &str, f: impl FnOnce(&Model) -> R) -> Option<R> {
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        match loaded.get(param) {
            Some(Loaded::Model(model)) => Some(f(model)),
            _ => None,
        }
    }

    /// `f` of the dataset loaded for `param`, left in place (a plan reads its labels); `None`
    /// when none is.
    pub fn with_dataset<R>(&self, param: &str, f: impl FnOnce(&Dataset) -> R) -> Option<R> {
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        match loaded.get(param) {
            Some(Loaded::Dataset(dataset)) => Some(f(dataset)),
            _ => None,
        }
    }

    /// Whether nothing was loaded.
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }

    /// The shape of the tensor (or of a dataset's `x`) loaded for `param`.
    pub fn shape(&self, param: &str) -> Option<&[usize]> {
        self.shapes.get(param).map(Vec::as_slice)
    }

    /// Bytes the loaded objects hold.
    pub fn bytes(&self) -> u64 {
        let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        loaded
            .values()
            .map(|l| match l {
                Loaded::Tensor(t) => t.data.len() as u64 * 4,
                Loaded::Dataset(d) => (d.x.data.len() + d.y.len()) as u64 * 4,
                Loaded::Model(m) => m.tensors.iter().map(|(_, t)| t.data.len() as u64 * 4).sum(),
            })
            .sum()
    }

    fn take(&self, param: &str) -> Option<Loaded> {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(param)
    }

    /// Take the tensor loaded for `param`.
    pub fn take_tensor(&self, param: &str) -> Result<HostTensor, JobError> {
        match self.take(param) {
            Some(Loaded::Tensor(t)) => Ok(t),
            _ => Err(missing(param)),
        }
    }

    /// Take the dataset loaded for `param`.
    pub fn take_dataset(&self, param: &str) -> Result<Dataset, JobError> {
        match self.take(param) {
            Some(Loaded::Dataset(d)) => Ok(d),
            _ => Err(missing(param)),
        }
    }

    /// Take the model loaded for `param`.
    pub fn take_model(&self, param: &str) -> Result<Model, JobError> {
        match self.take(param) {
            Some(Loaded::Model(m)) => Ok(m),
            _ => Err(missing(param)),
        }
    }
}

fn missing(param: &str) -> JobError {
    JobError::internal(format!(
        "the object for parameter {param:?} was not loaded before the job ran"
    ))
}

/// Where a kernel's output goes, decided from the job's `output` and where its inputs came
/// from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A summary only (generated inputs).
    Summary,
    /// The values inline in the result.
    Inline,
    /// Stored in `KILN_DATA`: hand the tensor to [`OutputSink::put`].
    Object,
}

impl Placement {
    /// Where an output of `elements` values goes for a job asking `mode`, whose inputs the
    /// user sent (`user_data`) or kiln generated, with `max_inline` values allowed inline.
    pub fn of(mode: OutputMode, user_data: bool, elements: usize, max_inline: usize) -> Self {
        match (mode.stores(), user_data) {
            (true, _) => Placement::Object,
            (false, false) => Placement::Summary,
            (false, true) if elements <= max_inline => Placement::Inline,
            (false, true) => Placement::Object,
        }
    }

    /// Where an output goes once its `values` are known: one placed inline that holds a NaN
    /// or an infinity is stored instead, as `.npy`, which keeps them (JSON has no infinities;
    /// its `null` would come back a NaN, whatever the value was).
    pub fn finite(self, values: &[f32]) -> Self {
        match self {
            Placement::Inline if !values.iter().all(|v| v.is_finite()) => Placement::Object,
            other => other,
        }
    }
}

/// What a kernel hands back to be stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// A tensor, under the name its inline form has (`c`, `image`, `probabilities`).
    Tensor {
        /// The output's name (`c`, `image`, `probabilities`).
        name: String,
        /// Its values and shape.
        tensor: HostTensor,
    },
    /// A trained model (safetensors).
    Model(Model),
}

/// The slot a kernel puts its full output in; the worker stores it after the job ran.
#[derive(Debug, Default)]
pub struct OutputSink {
    slot: Mutex<Option<Stored>>,
}

impl OutputSink {
    /// Keep `tensor` (named `name` in the result) to be stored.
    pub fn put(&self, name: &str, tensor: HostTensor) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Stored::Tensor {
            name: name.to_owned(),
            tensor,
        });
    }

    /// Keep a model to be stored.
    pub fn put_model(&self, model: Model) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Stored::Model(model));
    }

    /// What the kernel left to store.
    pub fn take(&self) -> Option<Stored> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
