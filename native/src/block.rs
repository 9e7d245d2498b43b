//! A batch of span rows as one ClickHouse `Native` block, converted from the `RowBinary`
//! rows `rows.rs` builds.
//!
//! Why: ClickHouse reads `Native` column by column and `RowBinary` value by value. Inserting
//! the same 10,000-row LLM batches into chDB cost 6.4–9.2 µs of CPU per row as `Native`
//! against 11.6–14.0 as `RowBinary`, merges stopped (benchmarks/README.md, step 14). A row
//! stays `RowBinary` until the insert: the writer cuts a refused batch down to one row,
//! dead-letters that row and hashes ids per row, and all of that works on single rows.
//!
//! The block's column types are the table's own (`system.columns`), each `LowCardinality(T)`
//! written as plain `T`: ClickHouse converts on insert, and that cost did not show (9.4
//! against 9.2 µs a row). A type this module does not know (`Nullable`, `Tuple`, ...) is
//! refused when the encoder is made, and the caller inserts `RowBinary` as before.
//! A malformed row, or one with bytes left after its values, is a `ValueError`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::rows::put_str;
use crate::wire::{get_varint, put_varint};

/// How a column's values are laid out, in `RowBinary` and in `Native` alike, except that
/// `Native` puts every row's value of one column together and an array's sizes first.
#[derive(Clone, Debug)]
enum Kind {
    Fixed(usize),
    Str,
    Array(Box<Kind>),
    Map(Box<Kind>, Box<Kind>),
}

/// `(kind, the type name to declare)` for a ClickHouse type name.
fn parse(t: &str) -> Result<(Kind, String), String> {
    let t = t.trim();
    let inner = |prefix: &str| t.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(')'));
    if let Some(of) = inner("LowCardinality(") {
        return parse(of);
    }
    if let Some(of) = inner("Array(") {
        let (kind, name) = parse(of)?;
        return Ok((Kind::Array(Box::new(kind)), format!("Array({name})")));
    }
    if let Some(pair) = inner("Map(") {
        let (k, v) = split_top(pair).ok_or_else(|| format!("cannot read the map type {t:?}"))?;
        let ((key, key_name), (value, value_name)) = (parse(k)?, parse(v)?);
        return Ok((Kind::Map(Box::new(key), Box::new(value)), format!("Map({key_name}, {value_name})")));
    }
    let width = match t {
        "String" => return Ok((Kind::Str, t.to_owned())),
        "UInt8" | "Int8" | "Bool" => 1,
        "UInt16" | "Int16" | "Date" => 2,
        "UInt32" | "Int32" | "Float32" | "DateTime" => 4,
        "UInt64" | "Int64" | "Float64" => 8,
        _ if t.starts_with("DateTime64(") => 8,
        _ => return Err(format!("no Native encoding here for the type {t:?}")),
    };
    Ok((Kind::Fixed(width), t.to_owned()))
}

/// `"K, V"` at its top-level comma.
fn split_top(s: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => return Some((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

/// One column being filled: `Native`'s streams for it, in the order they are written.
enum Column {
    Bytes(Kind, Vec<u8>),
    Array { offsets: Vec<u8>, total: u64, items: Box<Column> },
    Map { offsets: Vec<u8>, total: u64, keys: Box<Column>, values: Box<Column> },
}

impl Column {
    fn new(kind: &Kind) -> Column {
        match kind {
            Kind::Fixed(_) | Kind::Str => Column::Bytes(kind.clone(), Vec::new()),
            Kind::Array(of) => Column::Array { offsets: Vec::new(), total: 0, items: Box::new(Column::new(of)) },
            Kind::Map(k, v) => Column::Map {
                offsets: Vec::new(), total: 0, keys: Box::new(Column::new(k)), values: Box::new(Column::new(v)),
            },
        }
    }

    /// Read one value from `rows` at `at` (advancing it) into this column.
    fn read(&mut self, rows: &[u8], at: &mut usize) -> Result<(), String> {
        match self {
            Column::Bytes(Kind::Fixed(width), out) => out.extend_from_slice(take(rows, at, *width)?),
            Column::Bytes(_, out) => {
                let start = *at;
                let len = varint(rows, at)?;
                take(rows, at, len)?;
                out.extend_from_slice(&rows[start..*at]); // a string is length-prefixed in both formats
            }
            Column::Array { offsets, total, items } => {
                let n = varint(rows, at)?;
                for _ in 0..n {
                    items.read(rows, at)?;
                }
                *total += n as u64;
                offsets.extend_from_slice(&total.to_le_bytes());
            }
            Column::Map { offsets, total, keys, values } => {
                let n = varint(rows, at)?;
                for _ in 0..n {
                    keys.read(rows, at)?;
                    values.read(rows, at)?;
                }
                *total += n as u64;
                offsets.extend_from_slice(&total.to_le_bytes());
            }
        }
        Ok(())
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Column::Bytes(_, data) => out.extend_from_slice(data),
            Column::Array { offsets, items, .. } => {
                out.extend_from_slice(offsets);
                items.write(out);
            }
            Column::Map { offsets, keys, values, .. } => {
                out.extend_from_slice(offsets);
                keys.write(out);
                values.write(out);
            }
        }
    }
}

fn take<'a>(rows: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], String> {
    let end = at.checked_add(n).filter(|&end| end <= rows.len()).ok_or("the rows end inside a value")?;
    let out = &rows[*at..end];
    *at = end;
    Ok(out)
}

/// A length at `at` (moved past it).
fn varint(rows: &[u8], at: &mut usize) -> Result<usize, String> {
    let value = get_varint(rows, at).ok_or_else(|| {
        if *at >= rows.len() { "the rows end inside a length" } else { "a length of more than 64 bits" }.to_owned()
    })?;
    usize::try_from(value).map_err(|_| "a length does not fit in memory".to_owned())
}

/// Converts `RowBinary` rows of one table's columns into a `Native` block. Immutable once
/// made, so the storage thread may use it while nothing else does.
#[pyclass(module = "processors._wire", frozen)]
pub struct NativeEncoder {
    columns: Vec<(String, String, Kind)>,
}

impl NativeEncoder {
    fn encode_block(&self, rows: &[&[u8]]) -> Result<Vec<u8>, String> {
        let mut columns: Vec<Column> = self.columns.iter().map(|(_, _, kind)| Column::new(kind)).collect();
        for (i, row) in rows.iter().enumerate() {
            let mut at = 0;
            for column in &mut columns {
                column.read(row, &mut at)?;
            }
            if at != row.len() {
                return Err(format!("{} bytes left after the values of row {i}", row.len() - at));
            }
        }
        let size: usize = rows.iter().map(|r| r.len()).sum();
        let mut out = Vec::with_capacity(size + size / 8 + 64);
        put_varint(&mut out, self.columns.len() as u64);
        put_varint(&mut out, rows.len() as u64);
        // Each column is freed once written, so the block and the columns together stay
        // about the size of the rows (the caller encodes an insert in 2 MiB pieces).
        for ((name, declared, _), column) in self.columns.iter().zip(columns) {
            put_str(&mut out, name.as_bytes());
            put_str(&mut out, declared.as_bytes());
            column.write(&mut out);
        }
        Ok(out)
    }
}

#[pymethods]
impl NativeEncoder {
    /// `columns`: (name, ClickHouse type) in the order of the rows' values. ValueError for
    /// a type it cannot encode.
    #[new]
    fn new(columns: Vec<(String, String)>) -> PyResult<Self> {
        let columns = columns
            .into_iter()
            .map(|(name, t)| parse(&t).map(|(kind, declared)| (name, declared, kind)))
            .collect::<Result<_, _>>()
            .map_err(PyValueError::new_err)?;
        Ok(NativeEncoder { columns })
    }

    /// `rows`: one `RowBinary` row each, read where they are (no joined copy: a batch of
    /// huge spans is not held twice). Runs without the GIL.
    fn encode<'py>(&self, py: Python<'py>, rows: Vec<Bound<'py, PyBytes>>) -> PyResult<Bound<'py, PyBytes>> {
        let views: Vec<&[u8]> = rows.iter().map(|r| r.as_bytes()).collect();
        let block = py.detach(|| self.encode_block(&views)).map_err(PyValueError::new_err)?;
        Ok(PyBytes::new(py, &block))
    }

    /// The type each column is declared with in the block.
    fn declared(&self) -> Vec<(String, String)> {
        self.columns.iter().map(|(name, declared, _)| (name.clone(), declared.clone())).collect()
    }
}
