//! svmpmu's native core. The model lives in plain-Rust modules (no PyO3 there); this file is
//! the thin PyO3 glue: it borrows numpy columns, releases the GIL, runs the core and maps its
//! errors to the Python exceptions of `svmpmu.errors`.

pub mod error;
pub mod gen;
pub mod model;
pub mod sim;
pub mod trace;

#[cfg(feature = "python")]
mod python {
    use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use pyo3::types::PyTuple;

    use crate::error::CoreError;
    use crate::gen::{Generator, Mix};
    use crate::model::{Policy, KNOBS};
    use crate::sim::{self, SimResult};
    use crate::trace::{self, TraceBuf, TraceRef};

    /// One place where core errors become Python exceptions.
    fn to_py(py: Python<'_>, e: CoreError) -> PyErr {
        let build = |class: &str, args: Bound<'_, PyTuple>| -> PyErr {
            match py
                .import("svmpmu.errors")
                .and_then(|m| m.getattr(class))
                .and_then(|c| c.call1(args))
            {
                Ok(exc) => PyErr::from_value(exc),
                Err(err) => err,
            }
        };
        match e {
            CoreError::Trace { index, reason } => build(
                "TraceError",
                PyTuple::new(
                    py,
                    [
                        index.into_pyobject(py).unwrap().into_any(),
                        reason.into_pyobject(py).unwrap().into_any(),
                    ],
                )
                .unwrap(),
            ),
            CoreError::Policy(msg) => build("PolicyError", PyTuple::new(py, [msg]).unwrap()),
            CoreError::Value(msg) => PyValueError::new_err(msg),
        }
    }

    /// Read a `svmpmu.Policy` (any object with the knob attributes) into the core's policy.
    fn policy_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Policy> {
        let py = obj.py();
        let mut values: [String; 15] = Default::default();
        for (slot, knob) in values.iter_mut().zip(KNOBS) {
            let v = obj.getattr(knob)?;
            *slot = if let Ok(b) = v.cast::<pyo3::types::PyBool>() {
                if b.is_true() { "true" } else { "false" }.to_string()
            } else {
                v.str()?.to_string()
            };
        }
        Policy::from_knobs(&values).map_err(|e| to_py(py, e))
    }

    type Columns<'py> = (
        PyReadonlyArray1<'py, u8>,
        PyReadonlyArray1<'py, u8>,
        PyReadonlyArray1<'py, u8>,
        PyReadonlyArray1<'py, u8>,
        PyReadonlyArray1<'py, u32>,
        PyReadonlyArray1<'py, u64>,
    );

    fn slice<'a, T: numpy::Element>(a: &'a PyReadonlyArray1<'_, T>) -> PyResult<&'a [T]> {
        a.as_slice()
            .map_err(|_| PyValueError::new_err("trace columns must be contiguous"))
    }

    fn borrow<'a>(c: &'a Columns<'_>) -> PyResult<TraceRef<'a>> {
        TraceRef::new(
            slice(&c.0)?,
            slice(&c.1)?,
            slice(&c.2)?,
            slice(&c.3)?,
            slice(&c.4)?,
            slice(&c.5)?,
        )
        .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    fn arr<'py, T: numpy::Element>(py: Python<'py>, v: Vec<T>) -> Bound<'py, PyArray1<T>> {
        v.into_pyarray(py)
    }

    /// A result as the tuple `svmpmu.Result` is built from.
    fn result_tuple<'py>(py: Python<'py>, r: SimResult) -> PyResult<Bound<'py, PyTuple>> {
        let (hw, svme, guest) = match r.timeline {
            Some(t) => (
                arr(py, t.hw_enabled).into_any(),
                arr(py, t.svme).into_any(),
                arr(py, t.guest_mode).into_any(),
            ),
            None => (
                py.None().into_bound(py),
                py.None().into_bound(py),
                py.None().into_bound(py),
            ),
        };
        PyTuple::new(
            py,
            [
                arr(py, r.counters).into_any(),
                arr(py, r.eventsel_hw).into_any(),
                arr(py, r.overflows).into_any(),
                arr(py, r.pmis).into_any(),
                arr(py, r.reads).into_any(),
                hw,
                svme,
                guest,
            ],
        )
    }

    /// simulate(columns, policy, n_pmcs, timeline) -> result tuple
    #[pyfunction]
    fn simulate<'py>(
        py: Python<'py>,
        columns: Columns<'py>,
        policy: &Bound<'py, PyAny>,
        n_pmcs: usize,
        timeline: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let p = policy_from_py(policy)?;
        let t = borrow(&columns)?;
        let r = py
            .detach(|| sim::simulate(&t, &p, n_pmcs, timeline))
            .map_err(|e| to_py(py, e))?;
        result_tuple(py, r)
    }

    /// compare(columns, policy, reference, n_pmcs) -> (diverges, first, policy, reference)
    #[pyfunction]
    fn compare<'py>(
        py: Python<'py>,
        columns: Columns<'py>,
        policy: &Bound<'py, PyAny>,
        reference: &Bound<'py, PyAny>,
        n_pmcs: usize,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let p = policy_from_py(policy)?;
        let q = policy_from_py(reference)?;
        let t = borrow(&columns)?;
        let c = py
            .detach(|| sim::compare(&t, &p, &q, n_pmcs))
            .map_err(|e| to_py(py, e))?;
        PyTuple::new(
            py,
            [
                c.diverges.into_pyobject(py)?.to_owned().into_any(),
                c.first_divergence.into_pyobject(py)?.into_any(),
                result_tuple(py, c.policy)?.into_any(),
                result_tuple(py, c.reference)?.into_any(),
            ],
        )
    }

    /// validate(columns, n_pmcs): raise TraceError for the first invalid record.
    #[pyfunction]
    fn validate(py: Python<'_>, columns: Columns<'_>, n_pmcs: usize) -> PyResult<()> {
        let t = borrow(&columns)?;
        py.detach(|| trace::validate(&t, n_pmcs))
            .map_err(|e| to_py(py, e))
    }

    /// generate(n_traces, length, seed, n_pmcs) -> (columns..., offsets)
    #[pyfunction]
    fn generate<'py>(
        py: Python<'py>,
        n_traces: usize,
        length: usize,
        seed: u64,
        n_pmcs: usize,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let total = n_traces
            .checked_mul(length)
            .ok_or_else(|| PyValueError::new_err("n_traces * length overflows"))?;
        let g = Generator::new(Mix::default(), n_pmcs).map_err(|e| to_py(py, e))?;
        let buf = py.detach(|| {
            let mut buf = TraceBuf::with_capacity(total);
            for i in 0..n_traces {
                g.trace_into(&mut buf, seed, i as u64, length);
            }
            buf
        });
        let offsets: Vec<u64> = (0..=n_traces).map(|i| (i * length) as u64).collect();
        PyTuple::new(
            py,
            [
                arr(py, buf.op).into_any(),
                arr(py, buf.pmc).into_any(),
                arr(py, buf.cpl).into_any(),
                arr(py, buf.flag).into_any(),
                arr(py, buf.key).into_any(),
                arr(py, buf.value).into_any(),
                arr(py, offsets).into_any(),
            ],
        )
    }

    #[pymodule(gil_used = false)]
    mod _core {
        #[pymodule_export]
        use super::{compare, generate, simulate, validate};

        #[pymodule_init]
        fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
            use pyo3::types::PyModuleMethods;
            m.add("__version__", env!("CARGO_PKG_VERSION"))
        }
    }
}
