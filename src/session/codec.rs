//! How a session's Python value becomes the stored payload and back (`Codec`: JSON or
//! pickle), and the exactness check that keeps a JSON round trip from changing a value.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString};

use crate::errors::{Error, Result};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Json,
    Pickle,
    Custom,
}

/// The codec's callables. For `json` they are a compact `JSONEncoder().encode` and
/// `JSONDecoder().decode` (built once: `json.dumps(obj, **kw)` would build an encoder
/// per call); for `pickle`, `pickle.dumps` / `pickle.loads`; for a custom codec, the
/// object's bound `dumps` / `loads`.
pub(super) struct Codec {
    pub(super) kind: Kind,
    dumps: Py<PyAny>,
    loads: Py<PyAny>,
    /// The object the user passed (a custom codec), for `codec` and the GC.
    pub(super) obj: Option<Py<PyAny>>,
}

impl Codec {
    pub(super) fn new(spec: &Bound<'_, PyAny>) -> Result<Self> {
        let py = spec.py();
        if let Ok(s) = spec.cast::<PyString>() {
            return match s.to_str()? {
                "json" => {
                    let json = py.import("json")?;
                    let kw = PyDict::new(py);
                    kw.set_item("ensure_ascii", false)?;
                    kw.set_item("separators", (",", ":"))?;
                    let enc = json.getattr("JSONEncoder")?.call((), Some(&kw))?;
                    let dec = json.getattr("JSONDecoder")?.call0()?;
                    Ok(Codec {
                        kind: Kind::Json,
                        dumps: enc.getattr("encode")?.unbind(),
                        loads: dec.getattr("decode")?.unbind(),
                        obj: None,
                    })
                }
                "pickle" => {
                    let pickle = py.import("pickle")?;
                    Ok(Codec {
                        kind: Kind::Pickle,
                        dumps: pickle.getattr("dumps")?.unbind(),
                        loads: pickle.getattr("loads")?.unbind(),
                        obj: None,
                    })
                }
                other => Err(Error::Value(format!(
                    "codec must be \"json\", \"pickle\" or an object with dumps/loads, got {other:?}"
                ))),
            };
        }
        let dumps = spec.getattr("dumps").ok().filter(Bound::is_callable);
        let loads = spec.getattr("loads").ok().filter(Bound::is_callable);
        match (dumps, loads) {
            (Some(d), Some(l)) => Ok(Codec {
                kind: Kind::Custom,
                dumps: d.unbind(),
                loads: l.unbind(),
                obj: Some(spec.clone().unbind()),
            }),
            _ => Err(Error::Type(format!(
                "codec must be \"json\", \"pickle\" or an object with callable dumps(obj) -> bytes \
                 and loads(bytes), not {}",
                spec.get_type().name()?
            ))),
        }
    }

    pub(super) fn name(&self) -> &'static str {
        match self.kind {
            Kind::Json => "json",
            Kind::Pickle => "pickle",
            Kind::Custom => "custom",
        }
    }

    /// Python code: call with no Rust lock held.
    pub(super) fn encode(&self, obj: &Bound<'_, PyAny>) -> Result<Vec<u8>> {
        let py = obj.py();
        match self.kind {
            Kind::Json => match check_json_exact(obj, 0).and_then(|()| {
                self.dumps
                    .bind(py)
                    .call1((obj,))
                    .map_err(JsonRefusal::Codec)
            }) {
                Ok(s) => Ok(s
                    .cast::<PyString>()
                    .map_err(PyErr::from)?
                    .to_str()?
                    .as_bytes()
                    .to_vec()),
                Err(JsonRefusal::Inexact(what)) => Err(inexact_error(&what)),
                Err(JsonRefusal::Codec(e)) if e.is_instance_of::<PyTypeError>(py) => {
                    let err = PyTypeError::new_err(format!(
                        "{} (the \"json\" codec stores dicts, lists, str, numbers, bools and None; \
                         use codec=\"pickle\" with a secret, sessionlock.DataclassCodec, or your own \
                         Codec for other types)",
                        e.value(py)
                    ));
                    err.set_cause(py, Some(e));
                    Err(err.into())
                }
                Err(JsonRefusal::Codec(e)) => Err(e.into()),
            },
            Kind::Pickle => {
                let b = self.dumps.bind(py).call1((obj, 5))?;
                Ok(b.cast::<PyBytes>()
                    .map_err(PyErr::from)?
                    .as_bytes()
                    .to_vec())
            }
            Kind::Custom => {
                let b = self.dumps.bind(py).call1((obj,))?;
                if let Ok(b) = b.cast::<PyBytes>() {
                    Ok(b.as_bytes().to_vec())
                } else if let Ok(b) = b.cast::<PyByteArray>() {
                    Ok(b.to_vec())
                } else {
                    Err(Error::Type(format!(
                        "codec.dumps() must return bytes, not {}",
                        b.get_type().name()?
                    )))
                }
            }
        }
    }

    /// Python code: call with no Rust lock held. Errors are the codec's own; the caller
    /// turns them into `SessionCorrupted`.
    pub(super) fn decode(&self, py: Python<'_>, payload: &[u8]) -> PyResult<Py<PyAny>> {
        let loads = self.loads.bind(py);
        let v = match self.kind {
            Kind::Json => {
                let s = std::str::from_utf8(payload).map_err(|e| {
                    pyo3::exceptions::PyValueError::new_err(format!("not UTF-8: {e}"))
                })?;
                loads.call1((PyString::new(py, s),))?
            }
            Kind::Pickle | Kind::Custom => loads.call1((PyBytes::new(py, payload),))?,
        };
        Ok(v.unbind())
    }
}

/// Why the `json` codec refused a value before anything was written.
enum JsonRefusal {
    /// A value JSON would not give back as it was (a tuple, a non-`str` key, a subclass...).
    Inexact(String),
    /// The encoder itself failed (e.g. a circular reference).
    Codec(PyErr),
}

/// Nesting beyond which the check stops and lets the encoder decide (it raises for cycles
/// and for depths past the recursion limit).
const JSON_CHECK_DEPTH: u32 = 200;

/// Checks that `obj` round-trips through JSON as the very same types and values: exact
/// `dict` (with exact `str` keys), `list`, `str`, `int`, `float`, `bool` and `None` only, so
/// the codec never hands back `{"1": ...}` for `{1: ...}` or a list for a tuple. Subclasses
/// (an `IntEnum`, an `OrderedDict`) are refused too: they would come back as their base.
/// Python code runs here (no Rust lock is held by the caller).
fn check_json_exact(obj: &Bound<'_, PyAny>, depth: u32) -> std::result::Result<(), JsonRefusal> {
    use pyo3::types::{PyBool, PyFloat, PyInt, PyList};
    if obj.is_none()
        || obj.is_exact_instance_of::<PyString>()
        || obj.is_exact_instance_of::<PyBool>()
        || obj.is_exact_instance_of::<PyInt>()
        || obj.is_exact_instance_of::<PyFloat>()
        || depth > JSON_CHECK_DEPTH
    {
        return Ok(());
    }
    let name = || {
        obj.get_type()
            .name()
            .map_or_else(|_| "?".to_owned(), |n| n.to_string())
    };
    if let Ok(list) = obj.cast_exact::<PyList>() {
        for (i, item) in list.iter().enumerate() {
            check_json_exact(&item, depth + 1).map_err(|e| within(e, &format!("[{i}]")))?;
        }
        return Ok(());
    }
    if let Ok(dict) = obj.cast_exact::<PyDict>() {
        for (k, v) in dict.iter() {
            if !k.is_exact_instance_of::<PyString>() {
                let kt = k
                    .get_type()
                    .name()
                    .map_or_else(|_| "?".to_owned(), |n| n.to_string());
                let shown = k.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string());
                return Err(JsonRefusal::Inexact(format!(
                    "a dict key of type {kt} ({shown}: JSON keys are strings)"
                )));
            }
            check_json_exact(&v, depth + 1).map_err(|e| {
                within(
                    e,
                    &format!(
                        "[{}]",
                        k.repr().map_or_else(|_| "?".to_owned(), |r| r.to_string())
                    ),
                )
            })?;
        }
        return Ok(());
    }
    Err(JsonRefusal::Inexact(format!("a {}", name())))
}

fn inexact_error(what: &str) -> Error {
    Error::Type(format!(
        "the \"json\" codec cannot store {what} exactly (it would come back as another \
         type); store dicts with str keys, lists, str, int, float, bool and None, or use \
         codec=\"pickle\" with a secret, sessionlock.DataclassCodec or your own Codec"
    ))
}

/// `_json_exact(obj)`: raises `TypeError` unless `obj` round-trips exactly through JSON (the
/// rule of the `json` codec, shared with `DataclassCodec`'s fields).
#[pyfunction]
pub fn _json_exact(obj: &Bound<'_, PyAny>) -> Result<()> {
    match check_json_exact(obj, 0) {
        Ok(()) => Ok(()),
        Err(JsonRefusal::Inexact(what)) => Err(inexact_error(&what)),
        Err(JsonRefusal::Codec(e)) => Err(e.into()),
    }
}

/// Adds the path step `step` to an `Inexact` refusal (`a tuple at ["a"][0]`).
fn within(e: JsonRefusal, step: &str) -> JsonRefusal {
    match e {
        JsonRefusal::Inexact(mut what) => {
            if let Some(at) = what.find(" at ") {
                what.insert_str(at + 4, step);
            } else {
                what.push_str(" at ");
                what.push_str(step);
            }
            JsonRefusal::Inexact(what)
        }
        other @ JsonRefusal::Codec(_) => other,
    }
}
