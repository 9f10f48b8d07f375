//! PyO3 glue of the ftrace importer.

use pyo3::exceptions::PyNotImplementedError;
use pyo3::prelude::*;

/// Placeholder until the importer lands.
#[pyfunction]
pub fn read_ftrace(_data: &[u8]) -> PyResult<()> {
    Err(PyNotImplementedError::new_err(
        "read_ftrace is being written",
    ))
}
