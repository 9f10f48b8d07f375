//! The lines of a `trace-cmd report` or a tracefs `trace` file: the prefix (task, CPU, flags,
//! timestamp), the event name, and what a line that starts no event is (docs/ftrace.md,
//! "Formats").
//!
//! Every function here takes any bytes and indexes only within bounds: a malformed line is
//! classified, never a panic.

/// The start of an event: what precedes its fields, and the fields of its first line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head<'a> {
    /// The task (`comm-pid`, or perf's `comm pid`), empty when the line has no prefix.
    pub task: &'a [u8],
    /// The timestamp in nanoseconds, when the line has one.
    pub ts: Option<u64>,
    /// The event name, without a `system:` prefix (perf prints `kvm:kvm_msr`).
    pub name: &'a [u8],
    /// The fields on the first line, trimmed.
    pub payload: &'a [u8],
    /// Whether the line has the `task [cpu]` prefix.
    pub prefixed: bool,
    /// Leading blanks of the line.
    pub indent: usize,
}

/// What one line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// Empty or blanks only.
    Blank,
    /// A header or comment: `# ...`, `cpus=N`, `version = N`, `CPU N is empty`.
    Header,
    /// A `CPU:N [LOST M EVENTS]` marker: the ring buffer overflowed.
    Lost,
    /// The start of an event.
    Event(Head<'a>),
    /// A line with a prefix but no event after it (cut short): never a continuation.
    Broken,
    /// Anything else: the continuation of a wrapped event when indented, else garbage.
    Other,
}

#[inline(always)]
fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `s` without leading and trailing blanks (and a trailing `\r`).
pub fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_blank(b)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| !is_blank(b) && b != b'\r')
        .map_or(start, |p| p + 1);
    s.get(start..end.max(start)).unwrap_or(&[])
}

/// The next blank-separated token of `s` and what follows it (leading blanks skipped).
#[inline]
fn next_token(s: &[u8]) -> (&[u8], &[u8]) {
    let start = s.iter().position(|&b| !is_blank(b)).unwrap_or(s.len());
    let s = &s[start..];
    let end = s.iter().position(|&b| is_blank(b)).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// A timestamp token `SECONDS.FRACTION:` (1 to 9 fraction digits) in nanoseconds.
pub fn parse_timestamp(tok: &[u8]) -> Option<u64> {
    let tok = tok.strip_suffix(b":")?;
    let dot = tok.iter().position(|&b| b == b'.')?;
    let (secs, frac) = (&tok[..dot], &tok[dot + 1..]);
    if secs.is_empty() || frac.is_empty() || frac.len() > 9 {
        return None;
    }
    let mut s: u64 = 0;
    for &b in secs {
        if !b.is_ascii_digit() {
            return None;
        }
        s = s.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    let mut f: u64 = 0;
    for &b in frac {
        if !b.is_ascii_digit() {
            return None;
        }
        f = f * 10 + u64::from(b - b'0');
    }
    f *= 10u64.pow(9 - frac.len() as u32);
    s.checked_mul(1_000_000_000)?.checked_add(f)
}

/// Fields of the kvm events that a wrapped line may start with (`int_ctl: 0x...`): such a
/// line continues an event, it does not start one.
const FIELD_NAMES: &[&[u8]] = &[
    b"int_ctl",
    b"event_inj",
    b"nested_rip",
    b"ext_inf1",
    b"ext_inf2",
    b"ext_int",
    b"ext_int_err",
    b"guest_pgd",
    b"guest_cr3",
    b"nested_cr3",
    b"nested_eptp",
    b"nested_npt",
    b"nested_ept",
    b"cr_read",
    b"cr_write",
    b"int_info",
    b"int_info_err",
    b"intr_info",
    b"error_code",
    b"inj_error_code",
    b"exit_code",
    b"exit_info1",
    b"exit_info2",
];

/// The event name of a `name:` token (perf's `system:name:` too), if it is one: letters,
/// digits and `_`, with at least one `_` (every tracepoint of interest has one; `rip:`,
/// `npt:` and `vmcb:` are fields). `None` for anything else.
pub fn event_name(tok: &[u8]) -> Option<&[u8]> {
    let tok = tok.strip_suffix(b":")?;
    let name = match tok.iter().rposition(|&b| b == b':') {
        Some(p) => &tok[p + 1..],
        None => tok,
    };
    let ok = !name.is_empty()
        && name[0].is_ascii_alphabetic()
        && name.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_')
        && name.contains(&b'_')
        && !FIELD_NAMES.contains(&name);
    ok.then_some(name)
}

/// Whether `name` is one of KVM's events (`kvm_*`).
#[inline]
pub fn is_kvm(name: &[u8]) -> bool {
    name.starts_with(b"kvm_")
}

/// The `[NNN]` CPU column: its position, when `s` has one after a task (or at the start).
/// It must come before the first `": "` (else the brackets are in an event's fields), which
/// also keeps the search linear in the line's length.
fn cpu_column(s: &[u8]) -> Option<(usize, usize)> {
    let mut limit = s.len();
    let mut from = 0;
    while let Some(off) = s
        .get(from..)
        .and_then(|t| t.iter().position(|&b| b == b':'))
    {
        let p = from + off;
        if s.get(p + 1) == Some(&b' ') {
            limit = p;
            break;
        }
        from = p + 1;
    }
    let s = &s[..limit];
    let mut from = 0;
    while let Some(off) = s.get(from..)?.iter().position(|&b| b == b'[') {
        let p = from + off;
        let digits = s[p + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
        let close = p + 1 + digits;
        let before_ok = p == 0 || is_blank(s[p - 1]);
        let after_ok = s.get(close + 1).is_none_or(|&b| is_blank(b));
        if digits > 0 && before_ok && s.get(close) == Some(&b']') && after_ok {
            return Some((p, close + 1));
        }
        from = p + 1;
    }
    None
}

/// A task without a trailing `(TGID)` column (`-o record-tgid`: `(   5498)` or `(-----)`).
fn strip_tgid(task: &[u8]) -> &[u8] {
    if task.last() == Some(&b')') {
        if let Some(open) = task.iter().rposition(|&b| b == b'(') {
            let inside = &task[open + 1..task.len() - 1];
            if inside
                .iter()
                .all(|&b| b.is_ascii_digit() || b == b'-' || is_blank(b))
            {
                return trim(&task[..open]);
            }
        }
    }
    task
}

/// The event after a prefix: up to two flag tokens, a timestamp, the `name:`.
fn after_prefix(rest: &[u8]) -> Option<(Option<u64>, &[u8], &[u8])> {
    let mut rest = rest;
    let mut ts = None;
    for _ in 0..4 {
        let (tok, tail) = next_token(rest);
        if tok.is_empty() {
            return None;
        }
        rest = tail;
        if tok.last() != Some(&b':') {
            continue; // the flags column (irqs-off, need-resched, ...)
        }
        if ts.is_none() {
            if let Some(t) = parse_timestamp(tok) {
                ts = Some(t);
                continue;
            }
        }
        return event_name(tok).map(|name| (ts, name, trim(rest)));
    }
    None
}

fn is_header(s: &[u8]) -> bool {
    s.first() == Some(&b'#')
        || s.starts_with(b"cpus=")
        || s.starts_with(b"version =")
        || s.starts_with(b"version=")
        || (s.starts_with(b"CPU ") && s.ends_with(b" is empty"))
}

/// Classify one line (without its `\n`).
pub fn classify(line: &[u8]) -> Line<'_> {
    let indent = line.iter().take_while(|&&b| is_blank(b)).count();
    let s = trim(line);
    if s.is_empty() {
        return Line::Blank;
    }
    if is_header(s) {
        return Line::Header;
    }
    if s.starts_with(b"CPU:") && s.windows(5).any(|w| w == b"[LOST") {
        return Line::Lost;
    }
    if let Some((open, close)) = cpu_column(s) {
        let task = strip_tgid(trim(&s[..open]));
        return match after_prefix(&s[close..]) {
            Some((ts, name, payload)) => Line::Event(Head {
                task,
                ts,
                name,
                payload,
                prefixed: true,
                indent,
            }),
            None => Line::Broken,
        };
    }
    // No prefix: `TIMESTAMP: name: fields` or `name: fields`.
    let (first, rest) = next_token(s);
    let (ts, tok, rest) = match parse_timestamp(first) {
        Some(t) => {
            let (tok, rest) = next_token(rest);
            (Some(t), tok, rest)
        }
        None => (None, first, rest),
    };
    match event_name(tok) {
        Some(name) => Line::Event(Head {
            task: b"",
            ts,
            name,
            payload: trim(rest),
            prefixed: false,
            indent,
        }),
        None if ts.is_some() => Line::Broken,
        None => Line::Other,
    }
}

/// Whether `line` (classified as `kind`) continues the event that `head` started: a wrapped
/// event's later lines are indented and carry no prefix. An indented `kvm_*:` line always
/// starts an event; another `name:` line continues a prefix-less event only when it is
/// indented deeper than that event's first line.
pub fn continues(line: &[u8], kind: &Line<'_>, head: &Head<'_>) -> bool {
    if !line.first().is_some_and(|&b| is_blank(b)) {
        return false;
    }
    match kind {
        Line::Other => true,
        Line::Event(h) if h.prefixed || is_kvm(h.name) || h.ts.is_some() => false,
        Line::Event(h) => head.prefixed || h.indent > head.indent,
        _ => false,
    }
}
