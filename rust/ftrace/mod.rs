//! Import of KVM's trace events (`trace-cmd report`, tracefs `trace`) into records, one trace
//! per vCPU (issue 15; the mapping is docs/ftrace.md).
//!
//! [`import`] reads the text in one pass: [`lines`] tells what each line is and joins wrapped
//! events, [`fields`] reads the fields of the events that map to records, and [`vcpu`] tracks
//! each vCPU's mode and makes the records. Events without a vCPU field (`kvm_msr`, and
//! `kvm_exit` on older kernels) go to the vCPU of their task, the thread that printed them.

pub mod fields;
pub mod lines;
pub mod vcpu;

#[cfg(feature = "python")]
pub mod py;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use crate::model::{op, INSTRUCTIONS_RETIRED, KEY_LIMIT};
use crate::trace::{TraceBuf, CPL_MAX};
use fields::Event;
use lines::{Head, Line};
pub use vcpu::Start;
use vcpu::{why, Vcpu};

/// How events become records (docs/ftrace.md, "Parameters").
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    /// Events a RUN counts per microsecond of guest time (an estimate: the trace does not say).
    pub rate: f64,
    /// The event key of RUN records.
    pub event: u32,
    /// The CPL of RUN records.
    pub run_cpl: u8,
    /// The CPL at which VMRUN resumes L2 (vmcb12's save.cpl, which the trace does not carry).
    pub vmrun_cpl: u8,
    /// Counter reads become READ records.
    pub reads: bool,
    /// Infer from the first nested events that the capture began with SVME set or in L2.
    pub infer_start: bool,
}

/// The default RUN rate: 1000 events a microsecond (one a nanosecond).
pub const DEFAULT_RATE: f64 = 1000.0;

impl Default for Options {
    fn default() -> Self {
        Options {
            rate: DEFAULT_RATE,
            event: INSTRUCTIONS_RETIRED,
            run_cpl: 3,
            vmrun_cpl: 0,
            reads: true,
            infer_start: true,
        }
    }
}

/// Why a file cannot be imported at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FtraceError {
    /// A trace-cmd binary `trace.dat`: `trace-cmd report` turns it into text.
    TraceDat,
    /// A binary file (a NUL byte in its first 4 KiB).
    Binary,
    /// An option out of its range.
    Options(String),
}

impl std::fmt::Display for FtraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FtraceError::TraceDat => f.write_str(
                "a trace-cmd binary file (trace.dat): run 'trace-cmd report -i FILE > FILE.txt' \
                 and import its text output",
            ),
            FtraceError::Binary => {
                f.write_str("a binary file, not a trace-cmd report or tracefs trace")
            }
            FtraceError::Options(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for FtraceError {}

/// One vCPU's imported trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuTrace {
    pub id: u32,
    pub trace: TraceBuf,
    pub start: Start,
}

/// What an import found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Import {
    /// The vCPUs, by id.
    pub vcpus: Vec<VcpuTrace>,
    /// Lines that map to nothing, by `event` or `event: reason`, most frequent first.
    pub skipped: Vec<(String, u64)>,
    /// Lines that could not be read: 1-based line number and text.
    pub unparsed: Vec<(usize, String)>,
    /// Records made, by op.
    pub mapped: [u64; op::COUNT],
    /// Lines read.
    pub lines: usize,
    /// Events named `kvm_*` (mapped or not).
    pub kvm_events: usize,
}

const TRACE_DAT_MAGIC: &[u8] = b"\x17\x08\x44tracing";

/// Check the options (the Python layer checks them too, with friendlier types).
pub fn check(opts: &Options) -> Result<(), FtraceError> {
    let bad = |m: String| Err(FtraceError::Options(m));
    if !(opts.rate.is_finite() && opts.rate > 0.0) {
        return bad(format!(
            "rate must be a positive number of events per microsecond, got {}",
            opts.rate
        ));
    }
    if opts.event >= KEY_LIMIT {
        return bad(format!("event key {:#x} is wider than 20 bits", opts.event));
    }
    for (name, cpl) in [("run_cpl", opts.run_cpl), ("vmrun_cpl", opts.vmrun_cpl)] {
        if cpl > CPL_MAX {
            return bad(format!("{name} must be 0..3, got {cpl}"));
        }
    }
    Ok(())
}

/// A task (a thread that printed events) and the vCPU it runs.
struct Task<'a> {
    name: &'a [u8],
    vcpu: Option<u32>,
    /// Events printed before the task showed its vCPU.
    waiting: Vec<(Event, &'a [u8])>,
}

/// The vCPU QEMU names a thread after (`CPU 3/KVM-1234`): the last resort for a task that
/// never printed an event with a vCPU field.
fn vcpu_from_comm(task: &[u8]) -> Option<u32> {
    let rest = task.strip_prefix(b"CPU ")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if !rest[digits..].starts_with(b"/KVM") {
        return None;
    }
    fields::parse_dec(&rest[..digits]).and_then(|n| u32::try_from(n).ok())
}

struct Importer<'a> {
    opts: Options,
    tasks: Vec<Task<'a>>,
    task_ids: HashMap<&'a [u8], usize>,
    last_task: Option<usize>,
    vcpus: Vec<Vcpu>,
    vcpu_ids: HashMap<u32, usize>,
    last_vcpu: Option<usize>,
    skipped: HashMap<(&'a [u8], &'static str), u64>,
    unparsed: Vec<(usize, String)>,
    kvm_events: usize,
}

impl<'a> Importer<'a> {
    fn new(opts: Options) -> Self {
        Importer {
            opts,
            tasks: Vec::new(),
            task_ids: HashMap::new(),
            last_task: None,
            vcpus: Vec::new(),
            vcpu_ids: HashMap::new(),
            last_vcpu: None,
            skipped: HashMap::new(),
            unparsed: Vec::new(),
            kvm_events: 0,
        }
    }

    fn skip(&mut self, name: &'a [u8], reason: &'static str) {
        *self.skipped.entry((name, reason)).or_insert(0) += 1;
    }

    fn task(&mut self, name: &'a [u8]) -> usize {
        if let Some(t) = self.last_task {
            if self.tasks[t].name == name {
                return t;
            }
        }
        let t = match self.task_ids.get(name) {
            Some(&t) => t,
            None => {
                self.tasks.push(Task {
                    name,
                    vcpu: None,
                    waiting: Vec::new(),
                });
                self.task_ids.insert(name, self.tasks.len() - 1);
                self.tasks.len() - 1
            }
        };
        self.last_task = Some(t);
        t
    }

    fn vcpu(&mut self, id: u32) -> usize {
        if let Some(v) = self.last_vcpu {
            if self.vcpus[v].id == id {
                return v;
            }
        }
        let v = match self.vcpu_ids.get(&id) {
            Some(&v) => v,
            None => {
                self.vcpus.push(Vcpu::new(id, &self.opts));
                self.vcpu_ids.insert(id, self.vcpus.len() - 1);
                self.vcpus.len() - 1
            }
        };
        self.last_vcpu = Some(v);
        v
    }

    fn apply(&mut self, id: u32, e: &Event, name: &'a [u8]) {
        let v = self.vcpu(id);
        let opts = self.opts;
        if let Err(reason) = self.vcpus[v].event(e, &opts) {
            self.skip(name, reason);
        }
    }

    /// One complete event (its payload joined when it was wrapped).
    fn record(&mut self, line: usize, text: &[u8], head: &Head<'a>, payload: &[u8]) {
        let name = head.name;
        if lines::is_kvm(name) {
            self.kvm_events += 1;
        }
        let (kind, vcpu) = match fields::parse(name, payload) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return self.skip(name, ""),
            Err(_) => {
                self.unparsed
                    .push((line, String::from_utf8_lossy(text).into_owned()));
                return;
            }
        };
        let e = Event {
            line,
            ts: head.ts,
            kind,
        };
        let t = self.task(head.task);
        match (vcpu, self.tasks[t].vcpu) {
            (Some(id), known) => {
                if known != Some(id) {
                    self.tasks[t].vcpu = Some(id);
                    for (w, wname) in std::mem::take(&mut self.tasks[t].waiting) {
                        self.apply(id, &w, wname);
                    }
                }
                self.apply(id, &e, name);
            }
            (None, Some(id)) => self.apply(id, &e, name),
            (None, None) => self.tasks[t].waiting.push((e, name)),
        }
    }

    fn finish(mut self, lines: usize) -> Import {
        for t in 0..self.tasks.len() {
            let waiting = std::mem::take(&mut self.tasks[t].waiting);
            let comm = vcpu_from_comm(self.tasks[t].name);
            for (e, name) in waiting {
                match comm {
                    Some(id) => self.apply(id, &e, name),
                    None => self.skip(name, why::NO_VCPU),
                }
            }
        }
        let mut out = Import {
            lines,
            kvm_events: self.kvm_events,
            unparsed: self.unparsed,
            ..Import::default()
        };
        for v in self.vcpus {
            let prologue = v.prologue();
            let trace = if prologue.is_empty() {
                v.buf
            } else {
                let mut t = TraceBuf::from_records(&prologue);
                t.extend(&v.buf);
                t
            };
            for &o in &trace.op {
                if let Some(m) = out.mapped.get_mut(o as usize) {
                    *m += 1;
                }
            }
            out.vcpus.push(VcpuTrace {
                id: v.id,
                trace,
                start: v.start,
            });
        }
        out.vcpus.sort_by_key(|v| v.id);
        let mut skipped: Vec<(String, u64)> = self
            .skipped
            .into_iter()
            .map(|((name, reason), n)| {
                let name = String::from_utf8_lossy(name);
                let key = if reason.is_empty() {
                    name.into_owned()
                } else {
                    format!("{name}: {reason}")
                };
                (key, n)
            })
            .collect();
        skipped.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.skipped = skipped;
        out
    }
}

/// An event being read: its first line and the lines that continue it.
struct Pending<'a> {
    line: usize,
    text: &'a [u8],
    head: Head<'a>,
    more: Vec<&'a [u8]>,
}

const LOST: &[u8] = b"LOST EVENTS";

/// Hand a complete event to the importer, its wrapped lines joined into `joined`.
fn flush<'a>(im: &mut Importer<'a>, p: Pending<'a>, joined: &mut Vec<u8>) {
    if p.more.is_empty() {
        im.record(p.line, p.text, &p.head, p.head.payload);
        return;
    }
    joined.clear();
    joined.extend_from_slice(p.head.payload);
    for m in &p.more {
        joined.push(b' ');
        joined.extend_from_slice(lines::trim(m));
    }
    im.record(p.line, p.text, &p.head, joined);
}

/// Import the text of a `trace-cmd report` or a tracefs `trace` file.
pub fn import(data: &[u8], opts: &Options) -> Result<Import, FtraceError> {
    check(opts)?;
    if data.starts_with(TRACE_DAT_MAGIC) {
        return Err(FtraceError::TraceDat);
    }
    if data[..data.len().min(4096)].contains(&0) {
        return Err(FtraceError::Binary);
    }
    let n_lines =
        bytecount::count(data, b'\n') + usize::from(data.last().is_some_and(|&b| b != b'\n'));
    let mut im = Importer::new(*opts);
    let mut pending: Option<Pending<'_>> = None;
    let mut joined = Vec::new();
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let kind = lines::classify(raw);
        if let Some(p) = pending.as_mut() {
            if lines::continues(raw, &kind, &p.head) {
                p.more.push(raw);
                continue;
            }
        }
        if let Some(p) = pending.take() {
            flush(&mut im, p, &mut joined);
        }
        match kind {
            Line::Blank | Line::Header => {}
            Line::Lost => im.skip(LOST, ""),
            Line::Event(head) => {
                pending = Some(Pending {
                    line: i + 1,
                    text: raw,
                    head,
                    more: Vec::new(),
                })
            }
            Line::Broken | Line::Other => im
                .unparsed
                .push((i + 1, String::from_utf8_lossy(raw).into_owned())),
        }
    }
    if let Some(p) = pending.take() {
        flush(&mut im, p, &mut joined);
    }
    Ok(im.finish(n_lines))
}
