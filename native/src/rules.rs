//! The sampling rules the compiled buffer decides itself: conditions on a trace's error
//! flag and duration, and the keep probability with its deterministic coin. Python compiles
//! them from the YAML rules (`processors.sampling.rules.native_conditions`); every other
//! rule stays in Python.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

#[derive(Clone, Copy)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Clone, Copy)]
pub enum Cond {
    Error,
    Duration(Op, f64),
}

pub struct Rule {
    /// None: some condition (or a rate limit) only Python evaluates.
    pub conds: Option<Vec<Cond>>,
    pub keep: f64,
}

fn op(text: &str) -> PyResult<Op> {
    Ok(match text {
        "=" => Op::Eq,
        "!=" => Op::Ne,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        "<" => Op::Lt,
        "<=" => Op::Le,
        _ => return Err(PyValueError::new_err(format!("unknown operator {text}"))),
    })
}

impl Cond {
    /// As Python's rules compare two numbers: the duration as a float against the bound.
    pub fn holds(self, error: bool, duration_ns: u64) -> bool {
        match self {
            Cond::Error => error,
            Cond::Duration(o, bound) => {
                let d = duration_ns as f64;
                match o {
                    Op::Eq => d == bound,
                    Op::Ne => d != bound,
                    Op::Gt => d > bound,
                    Op::Ge => d >= bound,
                    Op::Lt => d < bound,
                    Op::Le => d <= bound,
                }
            }
        }
    }
}

impl Rule {
    /// From `(conditions or None, keep probability or None)`, conditions being
    /// `("error",)` or `("duration", op, bound_ns)`.
    pub fn from_py(conds: Option<Vec<Bound<'_, PyTuple>>>, keep: Option<f64>) -> PyResult<Rule> {
        let conds = match (conds, keep) {
            (Some(list), Some(_)) => {
                let mut out = Vec::new();
                for c in list {
                    let kind: String = c.get_item(0)?.extract()?;
                    out.push(match kind.as_str() {
                        "error" => Cond::Error,
                        "duration" => Cond::Duration(op(&c.get_item(1)?.extract::<String>()?)?, c.get_item(2)?.extract()?),
                        _ => return Err(PyValueError::new_err(format!("unknown native condition {kind}"))),
                    });
                }
                Some(out)
            }
            _ => None,
        };
        Ok(Rule { conds, keep: keep.unwrap_or(0.0) })
    }
}

/// The sampling coin: BLAKE2b of the trace id (8-byte digest, big-endian) below p * 2^64,
/// compared exactly as Python compares an int with a float.
pub fn coin(id: &[u8], probability: f64) -> bool {
    if probability >= 1.0 {
        return true;
    }
    if probability <= 0.0 {
        return false;
    }
    let t = probability * 18446744073709551616.0; // exact: a power of two, and t < 2^64
    let floor = t.floor() as u128;
    let h = u128::from(crate::hash64(id));
    if t == t.floor() { h < floor } else { h <= floor }
}
