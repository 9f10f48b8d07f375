//! The fields of the kvm events the importer maps, read from their printed form across kernel
//! versions (docs/ftrace.md, "Events"): `key: value`, `key value` and `key=value` alike.

/// A kvm event the importer maps, with the fields it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `kvm_entry`; `guest` is the `[guest]` flag of kernels that print it (6.13 on: `None`
    /// when the line cannot tell, i.e. an older kernel's line without `inj`).
    Entry { guest: Option<bool> },
    /// `kvm_exit`.
    Exit,
    /// `kvm_msr`: `msr_write` or `msr_read`, the MSR index, the value, and ` (#GP)`.
    Msr {
        write: bool,
        msr: u32,
        value: u64,
        fault: bool,
    },
    /// `kvm_nested_vmrun` (to 6.0) / `kvm_nested_vmenter` (6.1 on); `vmx` when it is Intel's
    /// (`vmcs:`), which the importer does not map.
    VmRun { vmx: bool },
    /// `kvm_nested_vmexit_inject`; `invalid` when the exit code is SVM_EXIT_ERR (-1).
    VmExitInject { invalid: bool },
    /// `kvm_nested_vmexit`: an exit from L2 that L0 handles (a sign that L2 runs).
    NestedVmexit,
}

/// An event of one line (or one wrapped event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The 1-based line number of its first line.
    pub line: usize,
    pub ts: Option<u64>,
    pub kind: Kind,
}

/// Why an event's fields could not be read.
pub type Malformed = &'static str;

#[inline(always)]
fn is_sep(b: u8) -> bool {
    b == b' ' || b == b'\t' || b == b','
}

/// The tokens of a payload, split on blanks and commas.
#[inline]
pub fn tokens(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(|&b| is_sep(b)).filter(|t| !t.is_empty())
}

/// The value of `key` in `s`: the token after `key` or `key:`, or the rest of `key=value`.
pub fn value_of<'a>(s: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut it = tokens(s);
    while let Some(tok) = it.next() {
        if let Some(rest) = tok.strip_prefix(key) {
            match rest {
                b"" | b":" => return it.next(),
                [b'=', value @ ..] if !value.is_empty() => return Some(value),
                _ => {}
            }
        }
    }
    None
}

/// A decimal number.
pub fn parse_dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// A hexadecimal number, with or without `0x`.
pub fn parse_hex(s: &[u8]) -> Option<u64> {
    let s = s
        .strip_prefix(b"0x")
        .or_else(|| s.strip_prefix(b"0X"))
        .unwrap_or(s);
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        v = v << 4 | u64::from(d);
    }
    Some(v)
}

/// The `vcpu N` field: `Ok(None)` when there is none, `Err` when it is not a number.
pub fn vcpu_of(payload: &[u8]) -> Result<Option<u32>, Malformed> {
    match value_of(payload, b"vcpu") {
        None => Ok(None),
        Some(v) => parse_dec(v.strip_suffix(b":").unwrap_or(v))
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or("a vcpu field that is not a number"),
    }
}

/// Whether `s` holds `needle` (which is short and starts with a byte that `s` rarely holds).
pub fn contains(s: &[u8], needle: &[u8]) -> bool {
    let Some((&first, _)) = needle.split_first() else {
        return true;
    };
    let mut from = 0;
    while let Some(off) = s
        .get(from..)
        .and_then(|t| t.iter().position(|&b| b == first))
    {
        let p = from + off;
        if s.get(p..p + needle.len()) == Some(needle) {
            return true;
        }
        from = p + 1;
    }
    false
}

/// The exit code SVM_EXIT_ERR (-1) as the kernel and trace-cmd print it: the kernel's
/// symbol `invalid_guest_state` (or the number in hex when its table misses the 32-bit
/// value), trace-cmd's plugin `EXIT_ERR` or `UNKNOWN (4294967295)`.
fn is_invalid_exit(reason: &[u8], next: Option<&[u8]>) -> bool {
    const NAMES: [&[u8]; 8] = [
        b"invalid_guest_state",
        b"exit_err",
        b"err",
        b"-1",
        b"0xffffffff",
        b"0xffffffffffffffff",
        b"4294967295",
        b"18446744073709551615",
    ];
    if NAMES.iter().any(|n| reason.eq_ignore_ascii_case(n)) {
        return true;
    }
    reason.eq_ignore_ascii_case(b"unknown")
        && next.is_some_and(|n| {
            let n = n.strip_prefix(b"(").unwrap_or(n);
            let n = n.strip_suffix(b")").unwrap_or(n);
            is_invalid_exit(n, None)
        })
}

/// `kvm_msr`: `msr_write IDX = 0xVALUE[ (#GP)]` (or `msr_read`).
fn msr(payload: &[u8]) -> Result<Kind, Malformed> {
    let mut it = tokens(payload).skip_while(|t| !t.starts_with(b"msr_"));
    let write = match it.next() {
        Some(b"msr_write" | b"msr_write:") => true,
        Some(b"msr_read" | b"msr_read:") => false,
        _ => return Err("no msr_write or msr_read"),
    };
    let msr = it
        .next()
        .and_then(parse_hex)
        .and_then(|m| u32::try_from(m).ok())
        .ok_or("an MSR index that is not a 32-bit hex number")?;
    if it.next() != Some(b"=") {
        return Err("no '=' after the MSR index");
    }
    let value = it
        .next()
        .and_then(parse_hex)
        .ok_or("a value that is not a 64-bit hex number")?;
    let fault = contains(payload, b"(#GP)");
    Ok(Kind::Msr {
        write,
        msr,
        value,
        fault,
    })
}

/// The kind and vCPU of the event `name` with fields `payload`: `Ok(None)` for an event the
/// importer does not map, `Err` for a mapped event whose fields cannot be read.
pub fn parse(name: &[u8], payload: &[u8]) -> Result<Option<(Kind, Option<u32>)>, Malformed> {
    let kind = match name {
        b"kvm_entry" => {
            let guest = if contains(payload, b"[guest]") {
                Some(true)
            } else if value_of(payload, b"inj").is_some() {
                Some(false)
            } else {
                None
            };
            Kind::Entry { guest }
        }
        b"kvm_exit" => Kind::Exit,
        b"kvm_msr" => msr(payload)?,
        b"kvm_nested_vmrun" | b"kvm_nested_vmenter" => Kind::VmRun {
            vmx: value_of(payload, b"vmcs").is_some(),
        },
        b"kvm_nested_vmexit_inject" => {
            let mut it = tokens(payload).skip_while(|t| *t != b"reason" && *t != b"reason:");
            it.next();
            let reason = it.next().ok_or("no exit reason")?;
            Kind::VmExitInject {
                invalid: is_invalid_exit(reason, it.next()),
            }
        }
        b"kvm_nested_vmexit" => Kind::NestedVmexit,
        _ => return Ok(None),
    };
    Ok(Some((kind, vcpu_of(payload)?)))
}
