//! Writing a trace as text: the op's named fields always, the raw name of any other column
//! that is not zero, so that [`super::parse`] gives back the very same columns.

use std::io::Write as _;

use super::{named, Column, Kind, ACTIONS, SELECTOR_FLAGS};
use crate::model::op;
use crate::trace::TraceRef;

/// The first line [`write`] writes: a comment, which readers also use to recognise the format.
pub const HEADER: &str = "# svmpmu text trace";

fn column(t: &TraceRef<'_>, i: usize, c: Column) -> u64 {
    match c {
        Column::Pmc => t.pmc[i] as u64,
        Column::Cpl => t.cpl[i] as u64,
        Column::Flag => t.flag[i] as u64,
        Column::Key => t.key[i] as u64,
        Column::Value => t.value[i],
    }
}

/// A selector as `EN|OS|USR|G|event=0xc0`: its named bits, its event and unit mask, and any
/// other bits as one hex number.
pub(crate) fn selector(out: &mut Vec<u8>, value: u64) {
    if value == 0 {
        out.push(b'0');
        return;
    }
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b'|');
        }
        first = false;
    };
    for (name, bit) in SELECTOR_FLAGS {
        if value & bit != 0 {
            sep(out);
            out.extend_from_slice(name.as_bytes());
        }
    }
    let event = (value & 0xFF) | ((value >> 32) & 0xF) << 8;
    let umask = (value >> 8) & 0xFF;
    if event != 0 {
        sep(out);
        let _ = write!(out, "event={event:#x}");
    }
    if umask != 0 {
        sep(out);
        let _ = write!(out, "umask={umask:#x}");
    }
    let named: u64 = SELECTOR_FLAGS.iter().map(|&(_, b)| b).sum::<u64>() | 0xF_0000_FFFF;
    let rest = value & !named;
    if rest != 0 {
        sep(out);
        let _ = write!(out, "{rest:#x}");
    }
}

/// How a column is written when it is a number: hex for keys, values other than counts, and
/// selectors written raw; decimal for the rest.
fn hex(o: u8, c: Column) -> bool {
    match c {
        Column::Key => true,
        Column::Value => o != op::RUN,
        _ => false,
    }
}

/// Append the text of `t` to `out`: a header comment, then one line a record. An unknown op
/// has no text form: `Err` gives its record index.
pub fn write(t: &TraceRef<'_>, out: &mut Vec<u8>) -> Result<(), usize> {
    out.reserve(t.len() * 24 + HEADER.len() + 1);
    out.extend_from_slice(HEADER.as_bytes());
    out.push(b'\n');
    for i in 0..t.len() {
        let o = t.op[i];
        let Some(name) = op::NAMES.get(o as usize) else {
            return Err(i);
        };
        out.extend_from_slice(name.as_bytes());
        let mut written = 0u8;
        for f in named(o) {
            let v = column(t, i, f.column);
            written |= f.column.bit();
            if !f.required && v == 0 && f.column == Column::Flag {
                continue; // EMULATE without branch=
            }
            if o == op::SET_FILTER && f.column == Column::Key && v == 0 {
                continue;
            }
            let _ = write!(out, " {}=", f.name);
            match f.kind {
                Kind::Selector => selector(out, v),
                Kind::Action => match ACTIONS.get(v as usize) {
                    Some(a) => out.extend_from_slice(a.as_bytes()),
                    None => {
                        let _ = write!(out, "{v}");
                    }
                },
                Kind::Number if hex(o, f.column) => {
                    let _ = write!(out, "{v:#x}");
                }
                Kind::Number => {
                    let _ = write!(out, "{v}");
                }
            }
        }
        for c in Column::ALL {
            let v = column(t, i, c);
            if written & c.bit() == 0 && v != 0 {
                if hex(o, c) {
                    let _ = write!(out, " {}={v:#x}", c.raw());
                } else {
                    let _ = write!(out, " {}={v}", c.raw());
                }
            }
        }
        out.push(b'\n');
    }
    Ok(())
}
