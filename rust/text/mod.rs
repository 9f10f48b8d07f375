//! Text traces: one record per line, as people write them (docs/text-format.md).
//!
//! ```text
//! # comments run to the end of the line; blank lines are ignored
//! WRMSR_EVTSEL pmc=0 value=EN|OS|USR|G|event=0xc0
//! WRMSR_EFER svme=1
//! VMRUN cpl=3
//! RUN n=1000 event=0xc0 cpl=3
//! READ pmc=0
//! ```
//!
//! An op's fields are named as in model.md section 4 ([`named`]); the raw column names (`pmc`,
//! `cpl`, `flag`, `key`, `value`) are accepted on every op, so that any record, even one with
//! values in fields its op ignores, has a text form and [`write`] then [`parse`] give back the
//! very same columns. The spec's own notation (`RUN(n=1000, key=0x0c0, cpl=3)`,
//! `SET_FILTER(allow, key=0x0c0)`, `EMULATE(cpl=3, branch)`) is accepted too. The parser
//! checks syntax and the width of each column; the record rules (a PMC index below `n_pmcs`,
//! the mode rules) are the validator's, as for any trace.

#[cfg(feature = "python")]
pub mod py;
mod write;

pub use write::{write, HEADER};

/// A selector value as the text format writes it: `EN|OS|USR|G|event=0xc0`.
pub fn selector_text(value: u64) -> String {
    let mut out = Vec::new();
    write::selector(&mut out, value);
    String::from_utf8(out).unwrap_or_default()
}

use crate::model::op;
use crate::trace::{uses_cpl, uses_key, uses_pmc, uses_value, TraceBuf};

/// A syntax error: where (1-based line and column, in bytes) and what was expected. `record`
/// is the index the record of that line would have had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub record: usize,
    pub message: String,
}

/// A record column, as a field names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Column {
    Pmc,
    Cpl,
    Flag,
    Key,
    Value,
}

impl Column {
    pub(crate) const ALL: [Column; 5] = [
        Column::Pmc,
        Column::Cpl,
        Column::Flag,
        Column::Key,
        Column::Value,
    ];

    /// The raw name, accepted on every op.
    pub(crate) const fn raw(self) -> &'static str {
        match self {
            Column::Pmc => "pmc",
            Column::Cpl => "cpl",
            Column::Flag => "flag",
            Column::Key => "key",
            Column::Value => "value",
        }
    }

    /// The largest value the column holds.
    const fn max(self) -> u64 {
        match self {
            Column::Pmc | Column::Cpl | Column::Flag => u8::MAX as u64,
            Column::Key => u32::MAX as u64,
            Column::Value => u64::MAX,
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// How a field's value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A number, decimal or `0x` hex.
    Number,
    /// A selector: numbers and the names `EN`, `OS`, `USR`, `INT`, `H`, `G`, `event=N`,
    /// `umask=N`, joined by `|`.
    Selector,
    /// A filter action: `none`, `allow`, `deny` or its number.
    Action,
}

/// A field an op names: its name, its column, how it is written and whether a line must give
/// it (an optional field is 0 when left out).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Named {
    pub name: &'static str,
    pub column: Column,
    pub kind: Kind,
    pub required: bool,
}

const fn field(name: &'static str, column: Column, kind: Kind, required: bool) -> Named {
    Named {
        name,
        column,
        kind,
        required,
    }
}

/// The fields op `o` names, in the order [`write`] writes them. They follow the predicates of
/// `crate::trace` (which op uses which field); only the flag's name is the op's own.
const fn named_fields(o: u8) -> [Option<Named>; 5] {
    let pmc = if uses_pmc(o) {
        Some(field("pmc", Column::Pmc, Kind::Number, true))
    } else {
        None
    };
    let value = if !uses_value(o) {
        None
    } else if o == op::WRMSR_EVTSEL {
        Some(field("value", Column::Value, Kind::Selector, true))
    } else if o == op::RUN {
        Some(field("n", Column::Value, Kind::Number, true))
    } else {
        Some(field("value", Column::Value, Kind::Number, true))
    };
    let flag = match o {
        op::WRMSR_EFER => Some(field("svme", Column::Flag, Kind::Number, true)),
        op::SET_NESTED_STATE => Some(field("guest_mode", Column::Flag, Kind::Number, true)),
        op::SET_FILTER => Some(field("action", Column::Flag, Kind::Action, true)),
        op::EMULATE => Some(field("branch", Column::Flag, Kind::Number, false)),
        _ => None,
    };
    let key = if uses_key(o) {
        Some(field("event", Column::Key, Kind::Number, o == op::RUN))
    } else {
        None
    };
    let cpl = if uses_cpl(o) {
        Some(field("cpl", Column::Cpl, Kind::Number, o == op::RUN))
    } else {
        None
    };
    [pmc, value, flag, key, cpl]
}

/// [`named_fields`] of every op, computed once at compile time.
static NAMED: [[Option<Named>; 5]; op::COUNT] = {
    let mut table = [[None; 5]; op::COUNT];
    let mut o = 0;
    while o < op::COUNT {
        table[o] = named_fields(o as u8);
        o += 1;
    }
    table
};

/// The fields op `o` (a known op) names, in the order [`write`] writes them.
pub(crate) fn named(o: u8) -> impl Iterator<Item = Named> {
    NAMED[o as usize].iter().flatten().copied()
}

/// The names of the filter actions, by flag value.
pub(crate) const ACTIONS: [&str; 3] = ["none", "allow", "deny"];
/// Selector bits with a name, in the order [`write`] writes them.
pub(crate) const SELECTOR_FLAGS: [(&str, u64); 6] = [
    ("EN", crate::model::EN),
    ("OS", crate::model::OS),
    ("USR", crate::model::USR),
    ("INT", crate::model::INT),
    ("H", crate::model::HOST_ONLY),
    ("G", crate::model::GUEST_ONLY),
];

fn op_code(word: &[u8]) -> Option<u8> {
    // The usual spelling first: a match on a byte string is a length test and a compare.
    let exact = match word {
        b"RUN" => Some(op::RUN),
        b"EMULATE" => Some(op::EMULATE),
        b"READ" => Some(op::READ),
        b"WRMSR_EVTSEL" => Some(op::WRMSR_EVTSEL),
        b"VMENTRY" => Some(op::VMENTRY),
        _ => None,
    };
    if exact.is_some() {
        return exact;
    }
    op::NAMES
        .iter()
        .position(|name| name.as_bytes().eq_ignore_ascii_case(word))
        .map(|i| i as u8)
}

/// The error of one line, before its line number is known.
struct At {
    column: usize,
    message: String,
}

fn at(column: usize, message: impl Into<String>) -> At {
    At {
        column,
        message: message.into(),
    }
}

fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() > 24 {
        format!("'{}...'", text.chars().take(24).collect::<String>())
    } else {
        format!("'{text}'")
    }
}

/// A number at `column`: decimal, or hex after `0x`; `_` may separate digits.
fn number(word: &[u8], column: usize, what: &str) -> Result<u64, At> {
    let (digits, radix) = match word {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (word, 10),
    };
    let expected = || {
        at(
            column,
            format!(
                "expected a number for {what} (decimal or 0x hex), found {}",
                show(word)
            ),
        )
    };
    if digits.is_empty() {
        return Err(expected());
    }
    let mut n: u64 = 0;
    for &c in digits {
        let d = match c {
            b'0'..=b'9' => (c - b'0') as u64,
            b'a'..=b'f' if radix == 16 => (c - b'a' + 10) as u64,
            b'A'..=b'F' if radix == 16 => (c - b'A' + 10) as u64,
            b'_' => continue,
            _ => return Err(expected()),
        };
        n = n
            .checked_mul(radix)
            .and_then(|n| n.checked_add(d))
            .ok_or_else(|| {
                at(
                    column,
                    format!("{what}: {} does not fit in 64 bits", show(word)),
                )
            })?;
    }
    Ok(n)
}

/// A selector expression (see [`Kind::Selector`]).
fn selector(word: &[u8], column: usize) -> Result<u64, At> {
    let mut value = 0u64;
    let mut col = column;
    for term in word.split(|&c| c == b'|') {
        if let Some(&(_, bit)) = SELECTOR_FLAGS
            .iter()
            .find(|(name, _)| name.as_bytes().eq_ignore_ascii_case(term))
        {
            value |= bit;
        } else if let Some(eq) = term.iter().position(|&c| c == b'=') {
            let (name, n) = (&term[..eq], &term[eq + 1..]);
            let n_col = col + eq + 1;
            if name.eq_ignore_ascii_case(b"event") {
                let e = number(n, n_col, "event")?;
                if e >= 1 << 12 {
                    return Err(at(n_col, format!("event {e:#x} does not fit in 12 bits")));
                }
                value |= (e & 0xFF) | (e >> 8) << 32;
            } else if name.eq_ignore_ascii_case(b"umask") {
                let u = number(n, n_col, "umask")?;
                if u >= 1 << 8 {
                    return Err(at(n_col, format!("umask {u:#x} does not fit in 8 bits")));
                }
                value |= u << 8;
            } else {
                return Err(at(
                    col,
                    format!(
                        "expected event= or umask= in a selector, found {}",
                        show(name)
                    ),
                ));
            }
        } else if term.first().is_some_and(u8::is_ascii_digit) {
            value |= number(term, col, "a selector")?;
        } else {
            return Err(at(
                col,
                format!(
                    "expected a selector term (a number, EN, OS, USR, INT, H, G, event=N or \
                     umask=N), found {}",
                    show(term)
                ),
            ));
        }
        col += term.len() + 1;
    }
    Ok(value)
}

fn is_space(c: u8) -> bool {
    c == b' ' || c == b'\t' || c == b'\r'
}

fn is_separator(c: u8) -> bool {
    is_space(c) || c == b',' || c == b'(' || c == b')'
}

/// The words of a line (up to a `#`), with their 1-based columns. Commas and parentheses
/// separate words like spaces do, so that the spec's notation reads too.
fn words(line: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let end = line.iter().position(|&c| c == b'#').unwrap_or(line.len());
    let line = &line[..end];
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < line.len() && is_separator(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return None;
        }
        let start = i;
        while i < line.len() && !is_separator(line[i]) {
            i += 1;
        }
        Some((start + 1, &line[start..i]))
    })
}

/// One line's record, or `None` for a blank or comment line.
fn record(line: &[u8]) -> Result<Option<[u64; 6]>, At> {
    let mut words = words(line);
    let Some((col, name)) = words.next() else {
        return Ok(None);
    };
    let o = op_code(name).ok_or_else(|| {
        at(
            col,
            format!(
                "expected an op ({}), found {}",
                op::NAMES.join(", "),
                show(name)
            ),
        )
    })?;
    // op, pmc, cpl, flag, key, value
    let mut rec = [o as u64, 0, 0, 0, 0, 0];
    let mut given = 0u8;
    let mut set = |column: Column, value: u64, col: usize, what: &[u8]| -> Result<(), At> {
        if given & column.bit() != 0 {
            return Err(at(
                col,
                format!("{} sets the {} field twice", show(what), column.raw()),
            ));
        }
        if value > column.max() {
            return Err(at(
                col,
                format!(
                    "{}: {value} does not fit in the {} column (at most {})",
                    show(what),
                    column.raw(),
                    column.max()
                ),
            ));
        }
        given |= column.bit();
        rec[1 + column as usize] = value;
        Ok(())
    };
    for (col, word) in words {
        let Some(eq) = word.iter().position(|&c| c == b'=') else {
            // Bare words of the spec's notation: EMULATE(branch), SET_FILTER(allow).
            if o == op::EMULATE && word.eq_ignore_ascii_case(b"branch") {
                set(Column::Flag, 1, col, word)?;
                continue;
            }
            if o == op::SET_FILTER {
                if let Some(a) = ACTIONS
                    .iter()
                    .position(|a| a.as_bytes().eq_ignore_ascii_case(word))
                {
                    set(Column::Flag, a as u64, col, word)?;
                    continue;
                }
            }
            return Err(at(
                col,
                format!(
                    "expected name=value after {}, found {}",
                    op::NAMES[o as usize],
                    show(word)
                ),
            ));
        };
        let (key, text) = (&word[..eq], &word[eq + 1..]);
        let value_col = col + eq + 1;
        let own = named(o).find(|f| f.name.as_bytes().eq_ignore_ascii_case(key));
        let (column, kind) = match own {
            Some(f) => (f.column, f.kind),
            None => match Column::ALL
                .iter()
                .find(|c| c.raw().as_bytes().eq_ignore_ascii_case(key))
            {
                Some(&c) => (c, Kind::Number),
                None => {
                    let names: Vec<&str> = named(o).map(|f| f.name).collect();
                    let expected = if names.is_empty() {
                        format!("{} takes no fields", op::NAMES[o as usize])
                    } else {
                        format!("{} takes {}", op::NAMES[o as usize], names.join(", "))
                    };
                    return Err(at(col, format!("unknown field {}: {expected}", show(key))));
                }
            },
        };
        let what = String::from_utf8_lossy(key);
        let value = match kind {
            Kind::Number => number(text, value_col, &what)?,
            Kind::Selector => selector(text, value_col)?,
            Kind::Action => match ACTIONS
                .iter()
                .position(|a| a.as_bytes().eq_ignore_ascii_case(text))
            {
                Some(a) => a as u64,
                None if text.first().is_some_and(u8::is_ascii_digit) => {
                    number(text, value_col, "action")?
                }
                None => {
                    return Err(at(
                        value_col,
                        format!(
                            "expected a filter action (none, allow, deny), found {}",
                            show(text)
                        ),
                    ))
                }
            },
        };
        set(column, value, col, key)?;
    }
    if let Some(missing) = named(o).find(|f| f.required && given & f.column.bit() == 0) {
        return Err(at(
            line.len() + 1,
            format!(
                "{} needs {}= ({})",
                op::NAMES[o as usize],
                missing.name,
                named(o)
                    .filter(|f| f.required)
                    .map(|f| format!("{}=", f.name))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ));
    }
    Ok(Some(rec))
}

/// Parse a text trace.
pub fn parse(text: &[u8]) -> Result<TraceBuf, SyntaxError> {
    let mut out = TraceBuf::default();
    let estimate = text.len() / 20;
    out.op.reserve(estimate);
    out.pmc.reserve(estimate);
    out.cpl.reserve(estimate);
    out.flag.reserve(estimate);
    out.key.reserve(estimate);
    out.value.reserve(estimate);
    for (index, line) in text.split(|&c| c == b'\n').enumerate() {
        match record(line) {
            Ok(None) => {}
            Ok(Some([o, pmc, cpl, flag, key, value])) => {
                out.op.push(o as u8);
                out.pmc.push(pmc as u8);
                out.cpl.push(cpl as u8);
                out.flag.push(flag as u8);
                out.key.push(key as u32);
                out.value.push(value);
            }
            Err(At { column, message }) => {
                return Err(SyntaxError {
                    line: index + 1,
                    column,
                    record: out.op.len(),
                    message,
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
