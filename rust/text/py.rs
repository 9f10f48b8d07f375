//! PyO3 glue of the text format: bytes in, columns out, and back.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::python::{borrow, columns_tuple, Columns};

/// read_text(data) -> columns; a syntax error raises `svmpmu.errors.TraceSyntaxError`.
#[pyfunction]
pub fn read_text<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyTuple>> {
    match py.detach(|| super::parse(data)) {
        Ok(buf) => columns_tuple(py, buf),
        Err(e) => {
            let class = py.import("svmpmu.errors")?.getattr("TraceSyntaxError")?;
            Err(PyErr::from_value(
                class.call1((e.line, e.column, e.record, e.message))?,
            ))
        }
    }
}

/// write_text(columns) -> bytes; an unknown op raises `svmpmu.errors.TraceError`.
#[pyfunction]
pub fn write_text<'py>(py: Python<'py>, columns: Columns<'py>) -> PyResult<Bound<'py, PyBytes>> {
    let t = borrow(&columns)?;
    let mut out = Vec::new();
    match py.detach(|| super::write(&t, &mut out)) {
        Ok(()) => Ok(PyBytes::new(py, &out)),
        Err(index) => {
            let class = py.import("svmpmu.errors")?.getattr("TraceError")?;
            let reason = format!("unknown op {}: it has no text form", t.op[index]);
            Err(PyErr::from_value(class.call1((index, reason))?))
        }
    }
}

/// selector_text(value) -> str: a selector as the text format writes it.
#[pyfunction]
pub fn selector_text(value: u64) -> String {
    super::selector_text(value)
}
