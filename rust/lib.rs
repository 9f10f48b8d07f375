//! svmpmu's native core. The model lives in plain-Rust modules (no PyO3 there); this file is
//! the thin PyO3 glue: it borrows numpy columns, releases the GIL, runs the core and maps its
//! errors to the Python exceptions of `svmpmu.errors`. Every call into the core goes through
//! [`python::run`]: no panic reaches Python, and a long call stops at a signal.

pub mod automaton;
pub mod cancel;
pub mod error;
pub mod explain;
pub mod ftrace;
pub mod fuzz;
pub mod memory;
pub mod model;
pub mod replay;
pub mod text;
pub mod trace;
pub mod verify;

#[cfg(feature = "python")]
pub(crate) mod python {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::Mutex;

    use numpy::{IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1};
    use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyTypeError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::pybacked::PyBackedStr;
    use pyo3::types::{PyDict, PyList, PyTuple};

    use crate::cancel::Cancel;
    use crate::error::CoreError;
    use crate::fuzz::gen::{self, Generator, Mix};
    use crate::fuzz::{self, FuzzSpec, Signature};
    use crate::model::op;
    use crate::model::{Policy, KNOBS, PRESETS};
    use crate::replay::pool::Pool;
    use crate::replay::{self, batch, split, SimResult};
    use crate::trace::{self, TraceBuf, TraceRef};
    use crate::verify::VerifySpec;

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
            CoreError::Memory(msg) => pyo3::exceptions::PyMemoryError::new_err(msg),
            CoreError::Interrupted => PyKeyboardInterrupt::new_err(()),
        }
    }

    /// Run `f`, a call into the core, with the GIL released:
    ///
    /// - its [`Cancel`] polls Python's signal handlers (`check_signals`, on this thread, at
    ///   most every 10 ms, each time `f` checks it between two of its chunks or while it waits
    ///   for a pool): when a handler raises (SIGINT's raises KeyboardInterrupt), `f` stops
    ///   at its next check and the call raises that exception, whatever `f` returned;
    /// - a panic in `f`, on this thread or on a thread of a pool (rayon hands those to the
    ///   thread that waits on them), becomes a RuntimeError, never a PanicException;
    /// - a core error becomes its exception ([`to_py`]).
    pub(crate) fn run<T: Send>(
        py: Python<'_>,
        f: impl for<'c> FnOnce(&Cancel<'c>) -> Result<T, CoreError> + Send,
    ) -> PyResult<T> {
        let raised: Mutex<Option<PyErr>> = Mutex::new(None);
        let poll = || {
            Python::attach(|py| match py.check_signals() {
                Ok(()) => false,
                Err(e) => {
                    if let Ok(mut slot) = raised.lock() {
                        slot.get_or_insert(e);
                    }
                    true
                }
            })
        };
        let out = py.detach(|| {
            let cancel = Cancel::new(&poll);
            catch_unwind(AssertUnwindSafe(|| f(&cancel)))
        });
        if let Some(e) = raised.into_inner().ok().flatten() {
            return Err(e);
        }
        match out {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(to_py(py, e)),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(PyRuntimeError::new_err(format!(
                    "internal error in svmpmu's core: {what} (please report it)"
                )))
            }
        }
    }

    /// Read a policy as `svmpmu.Policy._core_knobs` gives it (its 15 knob values as strings,
    /// in the order of [`KNOBS`]; booleans as "true"/"false") into the core's policy. A tuple
    /// of strings, made once per `Policy`: reading the knob attributes of the `Policy` itself
    /// took 1.2 us a call.
    fn policy_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Policy> {
        let py = obj.py();
        let knobs = obj.cast::<PyTuple>().map_err(|_| {
            PyTypeError::new_err(
                "a policy crosses as the tuple of its knob values (svmpmu.Policy._core_knobs)",
            )
        })?;
        let knobs: [PyBackedStr; 15] = knobs.extract().map_err(|_| {
            PyValueError::new_err(format!(
                "a policy is {} knob values, as strings",
                KNOBS.len()
            ))
        })?;
        let values: [&str; 15] = std::array::from_fn(|i| &*knobs[i]);
        Policy::from_knobs(&values).map_err(|e| to_py(py, e))
    }

    /// The policy and the reference of a comparison.
    pub(crate) fn policy_pair(
        p: &Bound<'_, PyAny>,
        q: &Bound<'_, PyAny>,
    ) -> PyResult<(Policy, Policy)> {
        Ok((policy_from_py(p)?, policy_from_py(q)?))
    }

    pub(crate) type Columns<'py> = (
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

    pub(crate) fn borrow<'a>(c: &'a Columns<'_>) -> PyResult<TraceRef<'a>> {
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

    /// Borrow the columns and validate them for `n_pmcs` (TraceError on the first bad record).
    pub(crate) fn borrow_valid<'a>(
        py: Python<'_>,
        c: &'a Columns<'_>,
        n_pmcs: usize,
    ) -> PyResult<TraceRef<'a>> {
        let t = borrow(c)?;
        trace::validate(&t, n_pmcs).map_err(|e| to_py(py, e))?;
        Ok(t)
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

    /// simulate(columns, policy, n_pmcs, timeline, threads) -> result tuple
    #[pyfunction]
    #[pyo3(signature = (columns, policy, n_pmcs, timeline, threads=None))]
    fn simulate<'py>(
        py: Python<'py>,
        columns: Columns<'py>,
        policy: &Bound<'py, PyAny>,
        n_pmcs: usize,
        timeline: bool,
        threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let p = policy_from_py(policy)?;
        let t = borrow(&columns)?;
        // By default, as many threads as the pool has (RAYON_NUM_THREADS or cores).
        let n = threads.unwrap_or(usize::MAX);
        let r = run(py, |cancel| {
            split::simulate_on_with(&t, &p, n_pmcs, timeline, n, cancel)
        })?;
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
        let (p, q) = policy_pair(policy, reference)?;
        let t = borrow(&columns)?;
        let c = run(py, |cancel| {
            replay::compare_with(&t, &p, &q, n_pmcs, cancel)
        })?;
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

    /// count_masks(columns, policy, n_pmcs) -> uint8 array: per record, the PMCs it counted on.
    #[pyfunction]
    fn count_masks<'py>(
        py: Python<'py>,
        columns: Columns<'py>,
        policy: &Bound<'py, PyAny>,
        n_pmcs: usize,
    ) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let p = policy_from_py(policy)?;
        let t = borrow_valid(py, &columns, n_pmcs)?;
        let masks = run(py, |_| replay::try_count_masks(&t, &p, n_pmcs))?;
        Ok(arr(py, masks))
    }

    /// validate(columns, n_pmcs): raise TraceError for the first invalid record.
    #[pyfunction]
    fn validate(py: Python<'_>, columns: Columns<'_>, n_pmcs: usize) -> PyResult<()> {
        let t = borrow(&columns)?;
        run(py, |cancel| trace::validate_with(&t, n_pmcs, cancel))
    }

    /// `f` on a pool of `threads` threads ([`Pool::new`]: the global one by default, the
    /// calling thread alone when no thread can start), the calling thread polling `cancel`
    /// meanwhile.
    pub(crate) fn on_pool<T: Send>(
        threads: Option<usize>,
        cancel: &Cancel<'_>,
        f: impl FnOnce() -> Result<T, CoreError> + Send,
    ) -> Result<T, CoreError> {
        Pool::new(threads)?.run(cancel, f)
    }

    /// The generator's default mix (or, with `workload`, the workload-like one), as a dict
    /// of field name to value.
    #[pyfunction]
    #[pyo3(signature = (workload=false))]
    fn default_mix(py: Python<'_>, workload: bool) -> PyResult<Bound<'_, PyDict>> {
        let m = if workload {
            Mix::workload()
        } else {
            Mix::default()
        };
        let d = PyDict::new(py);
        let ops = PyDict::new(py);
        for (name, w) in op::NAMES.iter().zip(m.ops) {
            ops.set_item(*name, w)?;
        }
        d.set_item("ops", ops)?;
        d.set_item("hg", m.hg.to_vec())?;
        d.set_item("events", m.events.to_vec())?;
        d.set_item("cpl_bits", m.cpl_bits.to_vec())?;
        d.set_item("filter", m.filter.to_vec())?;
        for (name, v) in m.permille_fields() {
            d.set_item(name, v)?;
        }
        d.set_item("run_max", m.run_max)?;
        Ok(d)
    }

    fn weights<const N: usize>(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<[u32; N]> {
        let v: Vec<u32> = obj.getattr(name)?.extract()?;
        v.try_into().map_err(|v: Vec<u32>| {
            PyValueError::new_err(format!("mix: {name} needs {N} weights, got {}", v.len()))
        })
    }

    /// Read a `svmpmu.Mix` into the core's mix.
    fn mix_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Mix> {
        let mut m = Mix::default();
        let ops = obj.getattr("ops")?;
        for (i, name) in op::NAMES.iter().enumerate() {
            m.ops[i] = ops.get_item(*name)?.extract()?;
        }
        m.hg = weights(obj, "hg")?;
        m.events = weights(obj, "events")?;
        m.cpl_bits = weights(obj, "cpl_bits")?;
        m.filter = weights(obj, "filter")?;
        for (name, slot) in m.permille_fields_mut() {
            *slot = obj.getattr(name)?.extract()?;
        }
        m.run_max = obj.getattr("run_max")?.extract()?;
        Ok(m)
    }

    pub(crate) fn generator(
        py: Python<'_>,
        mix: Option<&Bound<'_, PyAny>>,
        n_pmcs: usize,
    ) -> PyResult<Generator> {
        let mix = match mix {
            Some(m) => mix_from_py(m)?,
            None => Mix::default(),
        };
        Generator::new(mix, n_pmcs).map_err(|e| to_py(py, e))
    }

    pub(crate) fn columns_tuple<'py>(
        py: Python<'py>,
        buf: TraceBuf,
    ) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(
            py,
            [
                arr(py, buf.op).into_any(),
                arr(py, buf.pmc).into_any(),
                arr(py, buf.cpl).into_any(),
                arr(py, buf.flag).into_any(),
                arr(py, buf.key).into_any(),
                arr(py, buf.value).into_any(),
            ],
        )
    }

    /// generate(n_traces, length, seed, n_pmcs, mix, threads) -> (columns, offsets)
    #[pyfunction]
    #[pyo3(signature = (n_traces, length, seed, n_pmcs, mix=None, threads=None))]
    fn generate<'py>(
        py: Python<'py>,
        n_traces: usize,
        length: usize,
        seed: u64,
        n_pmcs: usize,
        mix: Option<&Bound<'py, PyAny>>,
        threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let g = generator(py, mix, n_pmcs)?;
        let (buf, offsets) = run(py, |cancel| {
            // The offsets first: an impossible count fails before any record is drawn.
            let offsets = gen::batch_offsets(n_traces, length)?;
            let buf = on_pool(threads, cancel, || {
                g.batch_with(seed, n_traces, length, cancel)
            })?;
            Ok((buf, offsets))
        })?;
        PyTuple::new(
            py,
            [
                columns_tuple(py, buf)?.into_any(),
                arr(py, offsets).into_any(),
            ],
        )
    }

    /// generate_one(seed, index, length, n_pmcs, mix) -> columns: trace `index` of a run.
    #[pyfunction]
    fn generate_one<'py>(
        py: Python<'py>,
        seed: u64,
        index: u64,
        length: usize,
        n_pmcs: usize,
        mix: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let g = generator(py, mix, n_pmcs)?;
        let buf = run(py, |cancel| g.try_trace_with(seed, index, length, cancel))?;
        columns_tuple(py, buf)
    }

    /// simulate_batch(columns, offsets, policy, n_pmcs, threads)
    ///   -> (counters, eventsel_hw, overflows, pmis, reads, read_offsets)
    #[pyfunction]
    #[pyo3(signature = (columns, offsets, policy, n_pmcs, threads=None))]
    fn simulate_batch<'py>(
        py: Python<'py>,
        columns: Columns<'py>,
        offsets: PyReadonlyArray1<'py, u64>,
        policy: &Bound<'py, PyAny>,
        n_pmcs: usize,
        threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let p = policy_from_py(policy)?;
        let t = borrow(&columns)?;
        let off = slice(&offsets)?;
        let out = run(py, |cancel| {
            on_pool(threads, cancel, || {
                batch::simulate_batch_with(&t, off, &p, n_pmcs, cancel)
            })
        })?;
        let n = out.n_traces;
        let shape = [n, n_pmcs];
        let two_d = |v: Vec<u64>| -> PyResult<Bound<'py, PyAny>> {
            Ok(arr(py, v).reshape(shape)?.into_any())
        };
        PyTuple::new(
            py,
            [
                two_d(out.counters)?,
                two_d(out.eventsel_hw)?,
                two_d(out.overflows)?,
                two_d(out.pmis)?,
                arr(py, out.reads).into_any(),
                arr(py, out.read_offsets).into_any(),
            ],
        )
    }

    pub(crate) fn sig_tuple<'py>(py: Python<'py>, s: &Signature) -> PyResult<Bound<'py, PyTuple>> {
        (s.op, s.hg, s.before, s.after, s.policy_counts).into_pyobject(py)
    }

    fn sig_from(t: (u8, u8, u8, u8, bool)) -> Signature {
        Signature {
            op: t.0,
            hg: t.1,
            before: t.2,
            after: t.3,
            policy_counts: t.4,
        }
    }

    /// fuzz_range(policy, reference, seed, length, n_pmcs, mix, start, end, threads)
    ///   -> (traces, records, diverging, [(signature, count, first_trace)])
    #[pyfunction]
    #[pyo3(signature = (policy, reference, seed, length, n_pmcs, mix, start, end, threads=None, baseline=None))]
    #[allow(clippy::too_many_arguments)]
    fn fuzz_range<'py>(
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
        baseline: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (policy, reference) = policy_pair(policy, reference)?;
        let spec = FuzzSpec {
            policy,
            reference,
            generator: generator(py, mix, n_pmcs)?,
            seed,
            length,
            baseline: baseline.map(policy_from_py).transpose()?,
        };
        if end < start {
            return Err(PyValueError::new_err("end < start"));
        }
        let tally = run(py, |cancel| {
            on_pool(threads, cancel, || {
                fuzz::fuzz_range_with(&spec, start, end, cancel)
            })
        })?;
        (
            tally.traces,
            tally.records,
            tally.diverging,
            class_list(py, &tally.classes)?,
            class_list(py, &tally.gone)?,
        )
            .into_pyobject(py)
    }

    /// A tally's classes as a list of `(signature, count, first_trace)`.
    pub(crate) fn class_list<'py>(
        py: Python<'py>,
        classes: &std::collections::BTreeMap<Signature, fuzz::ClassTally>,
    ) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for (sig, c) in classes {
            out.append((sig_tuple(py, sig)?, c.count, c.first_trace))?;
        }
        Ok(out)
    }

    /// verify(policy, reference, n_pmcs, ignore, max_states, progress, threads) ->
    /// (equivalent, bounded, states, depth, transitions, [(signature, columns, transitions,
    /// ignored)]); `progress(states, depth)` is called once a breadth-first layer.
    #[pyfunction]
    #[pyo3(signature = (policy, reference, n_pmcs, ignore, max_states=None, progress=None, threads=None))]
    #[allow(clippy::too_many_arguments)]
    fn verify<'py>(
        py: Python<'py>,
        policy: &Bound<'py, PyAny>,
        reference: &Bound<'py, PyAny>,
        n_pmcs: usize,
        ignore: Vec<(u8, u8, u8, u8, bool)>,
        max_states: Option<usize>,
        progress: Option<Py<PyAny>>,
        threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (policy, reference) = policy_pair(policy, reference)?;
        trace::check_n_pmcs(n_pmcs).map_err(|e| to_py(py, e))?;
        let spec = VerifySpec {
            policy,
            reference,
            n_pmcs,
            letters: crate::verify::alphabet::letters(n_pmcs),
            ignore: ignore.into_iter().map(sig_from).collect(),
            max_states,
        };
        // Progress calls back into Python; an exception there is kept and raised at the end
        // (the exploration goes on: it is short).
        let failed: std::sync::Mutex<Option<PyErr>> = std::sync::Mutex::new(None);
        let report = |states: usize, depth: usize| {
            if let Some(cb) = &progress {
                Python::attach(|py| {
                    if let Err(e) = cb.call1(py, (states, depth)) {
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(e);
                        }
                    }
                });
            }
        };
        let verdict = run(py, |_| {
            crate::replay::pool::with_threads(threads, || crate::verify::verify(&spec, &report))?
        })?;
        if let Some(e) = failed.into_inner().ok().flatten() {
            return Err(e);
        }
        let classes = PyList::empty(py);
        for c in verdict.classes {
            let sig = sig_tuple(py, &c.signature)?;
            classes.append((sig, columns_tuple(py, c.witness)?, c.transitions, c.ignored))?;
        }
        (
            verdict.equivalent,
            verdict.bounded,
            verdict.states,
            verdict.depth,
            verdict.transitions,
            classes,
        )
            .into_pyobject(py)
    }

    /// signatures(columns, policy, reference, n_pmcs) -> [signature]
    #[pyfunction]
    fn signatures<'py>(
        py: Python<'py>,
        columns: Columns<'py>,
        policy: &Bound<'py, PyAny>,
        reference: &Bound<'py, PyAny>,
        n_pmcs: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let (p, q) = policy_pair(policy, reference)?;
        let t = borrow_valid(py, &columns, n_pmcs)?;
        let sigs = run(py, |_| fuzz::try_signatures(&t, &p, &q, n_pmcs))?;
        let out = PyList::empty(py);
        for s in &sigs {
            out.append(sig_tuple(py, s)?)?;
        }
        Ok(out)
    }

    /// shrink(columns, signature, policy, reference, n_pmcs, baseline=None) -> columns; with a
    /// baseline, the shrunk trace also keeps the baseline from showing the class.
    #[pyfunction]
    #[pyo3(signature = (columns, signature, policy, reference, n_pmcs, baseline=None))]
    fn shrink<'py>(
        py: Python<'py>,
        columns: Columns<'py>,
        signature: (u8, u8, u8, u8, bool),
        policy: &Bound<'py, PyAny>,
        reference: &Bound<'py, PyAny>,
        n_pmcs: usize,
        baseline: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (p, q) = policy_pair(policy, reference)?;
        let b = baseline.map(policy_from_py).transpose()?;
        let t = borrow_valid(py, &columns, n_pmcs)?;
        let sig = sig_from(signature);
        let buf = run(py, |_| {
            Ok(fuzz::shrink_against(&t, sig, &p, &q, b.as_ref(), n_pmcs))
        })?;
        columns_tuple(py, buf)
    }

    /// `KNOBS`: every knob and its values, in the order a policy crosses into the core
    /// (`crate::model::KNOBS`), as a tuple of `(name, (value, ...))`.
    fn knob_table(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
        PyTuple::new(
            py,
            KNOBS.map(|(name, values)| (name, PyTuple::new(py, values).unwrap())),
        )
    }

    /// `PRESETS`: the presets of model.md section 7 (`crate::model::PRESETS`), as a dict from
    /// name to the tuple of its knob values, in the order of `KNOBS`.
    fn preset_table(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
        let d = PyDict::new(py);
        for (name, knobs) in PRESETS {
            d.set_item(name, PyTuple::new(py, knobs.strings())?)?;
        }
        Ok(d)
    }

    #[pymodule(gil_used = false)]
    mod _core {
        #[pymodule_export]
        use super::{
            compare, count_masks, default_mix, fuzz_range, generate, generate_one, shrink,
            signatures, simulate, simulate_batch, validate, verify,
        };
        #[pymodule_export]
        use crate::automaton::py::{automaton_range, automaton_walk};
        #[pymodule_export]
        use crate::explain::py::explain;
        #[pymodule_export]
        use crate::ftrace::py::read_ftrace;
        #[pymodule_export]
        use crate::text::py::{read_text, selector_text, write_text};

        #[pymodule_init]
        fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
            use pyo3::types::PyModuleMethods;
            m.add("__version__", env!("CARGO_PKG_VERSION"))?;
            m.add("KNOBS", super::knob_table(m.py())?)?;
            m.add("PRESETS", super::preset_table(m.py())?)
        }
    }
}
