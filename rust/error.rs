//! The core's one error type; the Python glue maps each variant to one exception.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoreError {
    /// An invalid record (model.md section 4): its index and the rule it breaks.
    Trace { index: usize, reason: String },
    /// An unknown preset or knob value.
    Policy(String),
    /// Any other bad argument (column lengths, n_pmcs, offsets).
    Value(String),
    /// An allocation the arguments asked for failed (a trace too long for the memory).
    Memory(String),
    /// The call was asked to stop between two of its chunks (`crate::cancel`): in Python, a
    /// signal handler raised (SIGINT's raises KeyboardInterrupt), and that exception is the
    /// call's.
    Interrupted,
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Trace { index, reason } => write!(f, "record {index}: {reason}"),
            CoreError::Policy(msg) | CoreError::Value(msg) | CoreError::Memory(msg) => {
                f.write_str(msg)
            }
            CoreError::Interrupted => f.write_str("interrupted"),
        }
    }
}

impl std::error::Error for CoreError {}
