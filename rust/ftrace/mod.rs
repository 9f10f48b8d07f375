//! Import of KVM's trace events (`trace-cmd report`, tracefs `trace`) into records.
//!
//! (Being written: see issue 15.)

#[cfg(feature = "python")]
pub mod py;
