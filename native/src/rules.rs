//! The sampling rules the compiled buffer decides itself: conditions on a trace's error
//! flag and duration, and the keep probability with its deterministic coin (`ot.rs`). Python compiles
//! them from the YAML rules (`processors.sampling.rules.native_conditions`); every other
//! rule stays in Python. `RuleSet` holds the current ones and every name ever configured,
//! so a reload never renames a decision already made.

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

/// The current rules, and every rule name ever configured (a reload adds to them): a
/// decision's rule is an index into `names`, so decisions made before a reload keep theirs.
#[derive(Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    names: Vec<String>,
    ids: Vec<i64>, // the current rules' indexes into `names`
}

impl RuleSet {
    /// Replace the rules with `[(conditions or None, keep probability or None, name)]`.
    pub fn set(&mut self, rules: Vec<(Option<Vec<Bound<'_, PyTuple>>>, Option<f64>, String)>) -> PyResult<()> {
        let mut compiled = Vec::new();
        let mut ids = Vec::new();
        for (conds, keep, name) in rules {
            compiled.push(Rule::from_py(conds, keep)?);
            ids.push(self.intern(name));
        }
        self.rules = compiled;
        self.ids = ids;
        Ok(())
    }

    pub fn intern(&mut self, name: String) -> i64 {
        let index = self.names.iter().position(|n| *n == name).unwrap_or_else(|| {
            self.names.push(name);
            self.names.len() - 1
        });
        index as i64
    }

    /// The name index of the current rule at `position` (-1: none matched).
    pub fn id(&self, position: i64) -> i64 {
        usize::try_from(position).ok().and_then(|i| self.ids.get(i)).copied().unwrap_or(-1)
    }

    pub fn name(&self, rule: i64) -> String {
        usize::try_from(rule).ok().and_then(|i| self.names.get(i)).cloned().unwrap_or_default()
    }

    /// (keep, rule name index, sample rate) by the first matching rule, or None when a rule
    /// before the match needs Python. `(p_up, r)`: what upstream kept and the trace's
    /// randomness (`ot::upstream`); a rule keeping p keeps p_up x p overall, 100% always.
    pub fn decide(&self, (p_up, r): (f64, u64), error: bool, duration_ns: u64) -> Option<(bool, i64, f64)> {
        for (i, rule) in self.rules.iter().enumerate() {
            let conds = rule.conds.as_ref()?;
            if conds.iter().all(|c| c.holds(error, duration_ns)) {
                let rate = if rule.keep > 0.0 { (1.0 / p_up) * (1.0 / rule.keep) } else { 0.0 };
                let keep = rule.keep >= 1.0 || crate::ot::keeps(r, p_up * rule.keep);
                return Some((keep, self.ids[i], rate));
            }
        }
        Some((false, -1, 1.0))
    }
}
