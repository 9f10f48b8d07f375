//! PyO3 glue of [`super::explain`]: the per-record arrays as numpy arrays.

use numpy::ndarray::Array;
use numpy::{IntoPyArray, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::model::MAX_PMCS;
use crate::python::{borrow_valid, policy_pair, Columns};

/// A `[record][model][pmc]` table as an array of shape (records, 2, n_pmcs).
fn table<'py, T: numpy::Element + Copy>(
    py: Python<'py>,
    rows: &[[[T; MAX_PMCS]; 2]],
    n_pmcs: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let flat: Vec<T> = rows
        .iter()
        .flat_map(|r| r.iter().flat_map(|m| m[..n_pmcs].iter().copied()))
        .collect();
    let a = Array::from_shape_vec((rows.len(), 2, n_pmcs), flat)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py).into_any())
}

/// explain(columns, policy, reference, n_pmcs) -> dict of arrays (see `svmpmu.explain`).
#[pyfunction]
pub fn explain<'py>(
    py: Python<'py>,
    columns: Columns<'py>,
    policy: &Bound<'py, PyAny>,
    reference: &Bound<'py, PyAny>,
    n_pmcs: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let (p, q) = policy_pair(policy, reference)?;
    let t = borrow_valid(py, &columns, n_pmcs)?;
    let e = py.detach(|| super::explain(&t, &p, &q, n_pmcs));
    let d = PyDict::new(py);
    d.set_item("mode_before", e.mode_before.into_pyarray(py))?;
    d.set_item("mode_after", e.mode_after.into_pyarray(py))?;
    let counted: Vec<u8> = e.counted.iter().flatten().copied().collect();
    let counted = counted.into_pyarray(py).reshape([e.counted.len(), 2])?;
    d.set_item("counted", counted)?;
    d.set_item("reasons", table(py, &e.reasons, n_pmcs)?)?;
    d.set_item("since", table(py, &e.since, n_pmcs)?)?;
    d.set_item("eventsel_hw", table(py, &e.eventsel_hw, n_pmcs)?)?;
    let [rp, rq] = e.reads;
    d.set_item("reads", (rp.into_pyarray(py), rq.into_pyarray(py)))?;
    Ok(d)
}
