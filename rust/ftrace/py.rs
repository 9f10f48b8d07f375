//! PyO3 glue of the ftrace importer: bytes in, one set of columns per vCPU out.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use super::{import, FtraceError, Import, Options};
use crate::model::op;
use crate::python::columns_tuple;

/// read_ftrace(data, rate, event, run_cpl, vmrun_cpl, reads, infer_start)
///   -> ([(vcpu, columns, start)], [(skipped key, count)], [(line, text)],
///       [(op name, records)], lines, kvm_events)
#[pyfunction]
#[pyo3(signature = (data, rate, event, run_cpl, vmrun_cpl, reads, infer_start))]
#[allow(clippy::too_many_arguments)]
pub fn read_ftrace<'py>(
    py: Python<'py>,
    data: &[u8],
    rate: f64,
    event: u32,
    run_cpl: u8,
    vmrun_cpl: u8,
    reads: bool,
    infer_start: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let opts = Options {
        rate,
        event,
        run_cpl,
        vmrun_cpl,
        reads,
        infer_start,
    };
    // A malformed line is data, not a crash: the importer indexes only within bounds, and
    // should it ever panic, the panic ends here as a ValueError, not in Python.
    let result = py.detach(|| std::panic::catch_unwind(|| import(data, &opts)));
    let imported: Import = match result {
        Ok(Ok(imported)) => imported,
        Ok(Err(e @ (FtraceError::TraceDat | FtraceError::Binary))) => {
            let class = py.import("svmpmu.files")?.getattr("TraceFileError")?;
            return Err(PyErr::from_value(class.call1((e.to_string(),))?));
        }
        Ok(Err(e)) => return Err(PyValueError::new_err(e.to_string())),
        Err(_) => {
            return Err(PyValueError::new_err(
                "internal error in the ftrace importer (please report it with the input)",
            ))
        }
    };
    let vcpus = PyList::empty(py);
    for v in imported.vcpus {
        vcpus.append((v.id, columns_tuple(py, v.trace)?, v.start.name()))?;
    }
    let mapped: Vec<(&str, u64)> = op::NAMES
        .iter()
        .zip(imported.mapped)
        .filter(|&(_, n)| n > 0)
        .map(|(&name, n)| (name, n))
        .collect();
    (
        vcpus,
        imported.skipped,
        imported.unparsed,
        mapped,
        imported.lines,
        imported.kvm_events,
    )
        .into_pyobject(py)
}
