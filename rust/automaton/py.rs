//! PyO3 glue of the automaton engine (`svmpmu.fuzz(..., engine="automaton")`).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use super::{compiled, walk_range, walk_trace, BuildStats};
use crate::fuzz::try_signatures;
use crate::python::{class_list, columns_tuple, generator, on_pool, policy_pair, run, sig_tuple};

fn stats_dict<'py>(py: Python<'py>, s: &BuildStats, cached: bool) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("explored_states", s.explored_states)?;
    d.set_item("states", s.states)?;
    d.set_item("symbols", s.symbols)?;
    d.set_item("columns", s.columns)?;
    d.set_item("letters", s.letters)?;
    d.set_item("merged_letters", s.merged_letters)?;
    d.set_item("classes", s.classes)?;
    d.set_item("table_bytes", s.table_bytes)?;
    d.set_item("total_bytes", s.total_bytes)?;
    d.set_item("build_seconds", s.seconds)?;
    d.set_item("cached", cached)?;
    Ok(d)
}

/// automaton_range(policy, reference, seed, length, n_pmcs, mix, start, end, threads=None)
///   -> (traces, records, diverging, [(signature, count, first_walk)], table stats): walks
///   `start..end`, the table compiled (or taken from the process's cache) first.
#[pyfunction]
#[pyo3(signature = (policy, reference, seed, length, n_pmcs, mix, start, end, threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn automaton_range<'py>(
    py: Python<'py>,
    policy: &Bound<'py, PyAny>,
    reference: &Bound<'py, PyAny>,
    seed: u64,
    length: usize,
    n_pmcs: usize,
    mix: Option<&Bound<'py, PyAny>>,
    start: u64,
    end: u64,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyTuple>> {
    let (p, q) = policy_pair(policy, reference)?;
    let g = generator(py, mix, n_pmcs)?;
    if end < start {
        return Err(PyValueError::new_err("end < start"));
    }
    let ((c, cached), tally) = run(py, |cancel| {
        on_pool(threads, cancel, || {
            let (c, cached) = compiled(&p, &q, &g)?;
            let tally = walk_range(&c, seed, length, start, end, cancel)?;
            Ok(((c, cached), tally))
        })
    })?;
    (
        tally.traces,
        tally.records,
        tally.diverging,
        class_list(py, &tally.classes)?,
        stats_dict(py, &c.stats, cached)?,
    )
        .into_pyobject(py)
}

/// automaton_walk(policy, reference, seed, index, length, n_pmcs, mix)
///   -> (columns, walk classes, concrete classes, diverged): walk `index` made concrete, the
///   classes the walk showed, and those the concrete models show on its trace.
#[pyfunction]
#[pyo3(signature = (policy, reference, seed, index, length, n_pmcs, mix))]
#[allow(clippy::too_many_arguments)]
pub fn automaton_walk<'py>(
    py: Python<'py>,
    policy: &Bound<'py, PyAny>,
    reference: &Bound<'py, PyAny>,
    seed: u64,
    index: u64,
    length: usize,
    n_pmcs: usize,
    mix: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let (p, q) = policy_pair(policy, reference)?;
    let g = generator(py, mix, n_pmcs)?;
    let (w, concrete) = run(py, |cancel| {
        on_pool(None, cancel, || {
            let (c, _) = compiled(&p, &q, &g)?;
            let w = walk_trace(&c, seed, index, length)?;
            let concrete = try_signatures(&w.trace.as_ref(), &p, &q, n_pmcs)?;
            Ok((w, concrete))
        })
    })?;
    let sigs = |list: &[crate::fuzz::Signature]| -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for s in list {
            out.append(sig_tuple(py, s)?)?;
        }
        Ok(out)
    };
    let (walk, seen) = (sigs(&w.classes)?, sigs(&concrete)?);
    (columns_tuple(py, w.trace)?, walk, seen, w.diverged).into_pyobject(py)
}
