//! Register bits, event keys, op codes and filter actions (model.md sections 2 and 4): the
//! vocabulary every rule is written in.

pub const USR: u64 = 1 << 16;
pub const OS: u64 = 1 << 17;
pub const INT: u64 = 1 << 20;
pub const EN: u64 = 1 << 22;
pub const GUEST_ONLY: u64 = 1 << 40;
pub const HOST_ONLY: u64 = 1 << 41;
/// Bits a guest write to a selector drops (bits 19, 21, 36..63), H/G included.
pub const RESERVED_BITS: u64 = 0xFFFF_FFF0_0028_0000;
pub const COUNTER_BITS: u32 = 48;
pub const COUNTER_MASK: u64 = (1 << COUNTER_BITS) - 1;
pub const MAX_PMCS: usize = 6;
pub const INSTRUCTIONS_RETIRED: u32 = 0x0C0;
pub const BRANCHES_RETIRED: u32 = 0x0C2;
/// Event keys are 20 bits: a 12-bit event number and an 8-bit unit mask.
pub const KEY_LIMIT: u32 = 1 << 20;

/// Record op codes: the `op` column (docs/semantics.md).
pub mod op {
    pub const WRMSR_EVTSEL: u8 = 0;
    pub const WRMSR_CTR: u8 = 1;
    pub const WRMSR_GLOBAL_CTRL: u8 = 2;
    pub const WRMSR_EFER: u8 = 3;
    pub const VMRUN: u8 = 4;
    pub const VMRUN_FAIL: u8 = 5;
    pub const VMEXIT: u8 = 6;
    pub const FORCED_LEAVE: u8 = 7;
    pub const SET_NESTED_STATE: u8 = 8;
    pub const SET_FILTER: u8 = 9;
    pub const EMULATE: u8 = 10;
    pub const RUN: u8 = 11;
    pub const VMENTRY: u8 = 12;
    pub const READ: u8 = 13;
    pub const RESET: u8 = 14;
    /// Number of op codes.
    pub const COUNT: usize = 15;
    pub const NAMES: [&str; COUNT] = [
        "WRMSR_EVTSEL",
        "WRMSR_CTR",
        "WRMSR_GLOBAL_CTRL",
        "WRMSR_EFER",
        "VMRUN",
        "VMRUN_FAIL",
        "VMEXIT",
        "FORCED_LEAVE",
        "SET_NESTED_STATE",
        "SET_FILTER",
        "EMULATE",
        "RUN",
        "VMENTRY",
        "READ",
        "RESET",
    ];
}

/// SET_FILTER actions (the record's `flag`).
pub mod filter {
    pub const NONE: u8 = 0;
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
}

/// The 20-bit event key a selector counts: event bits 7:0 and 35:32, unit mask 15:8.
#[inline(always)]
pub fn selector_key(sel: u64) -> u32 {
    let event = (sel & 0xFF) | ((sel >> 32) & 0xF) << 8;
    (event | ((sel >> 8) & 0xFF) << 12) as u32
}
