//! Unit tests of the importer: line formats, fields, the per-vCPU mapping, and a property test
//! that every trace imported from mutated captures is valid and that nothing panics.

use super::fields::{self, Kind};
use super::lines::{self, classify, Line};
use super::vcpu::{why, Start};
use super::*;
use crate::model::op;
use crate::trace;

const FIXTURES: [&str; 4] = [
    include_str!("../../tests/fixtures/ftrace/trace-cmd-6.13.txt"),
    include_str!("../../tests/fixtures/ftrace/tracefs-4.19.txt"),
    include_str!("../../tests/fixtures/ftrace/tracefs-5.15-wrapped.txt"),
    include_str!("../../tests/fixtures/ftrace/mail-quote-5.13.txt"),
];

fn head(line: &str) -> lines::Head<'_> {
    match classify(line.as_bytes()) {
        Line::Event(h) => h,
        other => panic!("{line:?} is {other:?}"),
    }
}

#[test]
fn prefixes_of_every_format() {
    let h =
        head(" qemu-system-x86-613   [001] ....  1165.185227: kvm_msr: msr_read 40000083 = 0x0");
    assert_eq!(h.task, b"qemu-system-x86-613");
    assert_eq!(h.ts, Some(1_165_185_227_000));
    assert_eq!(h.name, b"kvm_msr");
    assert_eq!(h.payload, b"msr_read 40000083 = 0x0");
    assert!(h.prefixed);
    // 6.x flags, a task with a blank and a slash.
    let h = head("   CPU 0/KVM-16856   [007] .......   380.398695: kvm_msr: msr_read 3a = 0x0");
    assert_eq!(
        (h.task, h.ts),
        (&b"CPU 0/KVM-16856"[..], Some(380_398_695_000))
    );
    // The TGID column.
    let h = head("  CPU 1/KVM-6021  (   6012) [005] d..1. 3107.500102: kvm_entry: vcpu 1");
    assert_eq!(h.task, b"CPU 1/KVM-6021");
    // trace-cmd report: no flags, the name padded.
    let h = head("  CPU 0/KVM-4188  [002]  5121.384500: kvm_entry:            vcpu 0, rip 0x1");
    assert_eq!(
        (h.name, h.payload),
        (&b"kvm_entry"[..], &b"vcpu 0, rip 0x1"[..])
    );
    // perf script: `comm pid`, the system before the name, nanoseconds.
    let h = head("CPU 0/KVM 1821753 [015] 4831258.258053123: kvm:kvm_msr: msr_write 6e0 = 0x1");
    assert_eq!(h.task, b"CPU 0/KVM 1821753");
    assert_eq!(h.ts, Some(4_831_258_258_053_123));
    assert_eq!(h.name, b"kvm_msr");
    // No prefix at all, and a timestamp alone.
    let h = head("  kvm_exit:             reason EXIT_RSM rip 0x7ffbb280 info 0 0");
    assert_eq!(
        (h.task, h.ts, h.prefixed, h.indent),
        (&b""[..], None, false, 2)
    );
    let h = head("12.5: kvm_entry: vcpu 3");
    assert_eq!((h.ts, h.name), (Some(12_500_000_000), &b"kvm_entry"[..]));
    // Brackets in an event's fields are not a CPU column.
    let h = head("kvm_inj_virq: IRQ 0xec [reinjected] [3] x");
    assert_eq!(h.name, b"kvm_inj_virq");
    // An idle task.
    assert_eq!(
        head("    <idle>-0     [001] d..2 1.000001: sched_switch: x").task,
        b"<idle>-0"
    );
}

#[test]
fn lines_that_start_no_event() {
    for header in [
        "# tracer: nop",
        "cpus=4",
        "version = 6",
        "CPU 3 is empty",
        "#  | |",
    ] {
        assert_eq!(classify(header.as_bytes()), Line::Header, "{header}");
    }
    assert_eq!(classify(b"   \t"), Line::Blank);
    assert_eq!(classify(b"CPU:2 [LOST 8 EVENTS]"), Line::Lost);
    // A prefix cut short, a timestamp without an event.
    assert_eq!(classify(b" qemu-2301  [003] ....   812.3106"), Line::Broken);
    assert_eq!(classify(b"12.5: not-an-event"), Line::Broken);
    // Fields a wrapped event continues with, and garbage.
    for other in [
        "    nrip: 0xffff",
        "    int_ctl: 0x0 event_inj: 0x0",
        "    200000006 1ab000",
        "hello",
    ] {
        assert_eq!(classify(other.as_bytes()), Line::Other, "{other}");
    }
}

#[test]
fn timestamps() {
    assert_eq!(lines::parse_timestamp(b"1.000001:"), Some(1_000_001_000));
    assert_eq!(lines::parse_timestamp(b"0.123456789:"), Some(123_456_789));
    for bad in [
        &b"1.0"[..],
        b"1.:",
        b".5:",
        b"1.0123456789:",
        b"1a.0:",
        b"99999999999999999999.0:",
    ] {
        assert_eq!(lines::parse_timestamp(bad), None, "{bad:?}");
    }
}

#[test]
fn continuation_lines() {
    let first = head("  kvm_nested_vmrun:     rip: 0x1 vmcb: 0x2");
    let more = |l: &str| lines::continues(l.as_bytes(), &classify(l.as_bytes()), &first);
    assert!(more("    nrip: 0x3 int_ctl: 0x0"));
    assert!(more("    npt: on"));
    assert!(more(
        "    some_event: deeper than the event, so a continuation"
    ));
    assert!(!more("  kvm_entry: vcpu 0"));
    assert!(!more("  sched_switch: as deep as the event: a new one"));
    assert!(!more("unindented text"));
    let prefixed = head(" qemu-1 [000] .... 1.0: kvm_msr: msr_write c0010200 =");
    let more = |l: &str| lines::continues(l.as_bytes(), &classify(l.as_bytes()), &prefixed);
    assert!(more("        0xffff (#GP)"));
    assert!(!more(" qemu-1 [000] .... 1.1: kvm_exit: reason hlt"));
    assert!(!more("        kvm_exit: reason hlt"));
}

#[test]
fn fields_across_versions() {
    let msr = |p: &str| fields::parse(b"kvm_msr", p.as_bytes()).unwrap().unwrap().0;
    assert_eq!(
        msr("msr_write c0010200 = 0x100004300c0"),
        Kind::Msr {
            write: true,
            msr: 0xC001_0200,
            value: 0x0100_0043_00c0,
            fault: false
        }
    );
    assert_eq!(
        msr("msr_read  1a6 = 0x0    (#GP)"),
        Kind::Msr {
            write: false,
            msr: 0x1a6,
            value: 0,
            fault: true
        }
    );
    assert_eq!(
        msr("msr_read 3a = 0x0        <debug_before_write>"),
        Kind::Msr {
            write: false,
            msr: 0x3a,
            value: 0,
            fault: false
        }
    );
    for bad in [
        "msr_write CTR1 = 0x1",
        "msr_write c0010200 =",
        "msr_write c0010200 0x1",
        "x",
    ] {
        assert!(fields::parse(b"kvm_msr", bad.as_bytes()).is_err(), "{bad}");
    }
    let parse = |n: &str, p: &str| fields::parse(n.as_bytes(), p.as_bytes()).unwrap().unwrap();
    assert_eq!(
        parse("kvm_entry", "vcpu 3"),
        (Kind::Entry { guest: None }, Some(3))
    );
    assert_eq!(
        parse(
            "kvm_entry",
            "vcpu 0, rip 0x1 inj 0x00000000 inj_error_code 0x0[immediate exit][guest]"
        ),
        (Kind::Entry { guest: Some(true) }, Some(0))
    );
    assert_eq!(
        parse(
            "kvm_entry",
            "vcpu 0, rip 0x1 inj 0x00000000 inj_error_code 0x00000000"
        ),
        (Kind::Entry { guest: Some(false) }, Some(0))
    );
    assert_eq!(
        parse("kvm_exit", "reason EXIT_MSR rip 0x1 info 1 0"),
        (Kind::Exit, None)
    );
    assert_eq!(
        parse("kvm_exit", "vcpu 12 reason msr rip 0x1"),
        (Kind::Exit, Some(12))
    );
    assert_eq!(
        parse("kvm_exit", "vcpu=7 reason msr"),
        (Kind::Exit, Some(7))
    );
    assert!(fields::parse(b"kvm_exit", b"vcpu x reason msr").is_err());
    let vmenter = "rip: 0x1 vmcb: 0x2 nested_rip: 0x3 int_ctl: 0x0 event_inj: 0x0 nested_npt=y";
    assert_eq!(
        parse("kvm_nested_vmenter", vmenter).0,
        Kind::VmRun { vmx: false }
    );
    assert_eq!(
        parse("kvm_nested_vmenter", "rip: 0x1 vmcs: 0x2").0,
        Kind::VmRun { vmx: true }
    );
    assert_eq!(
        parse("kvm_nested_vmrun", "rip: 0x1 vmcb: 0x2 npt: on").0,
        Kind::VmRun { vmx: false }
    );
    let inject = |p: &str| parse("kvm_nested_vmexit_inject", p).0;
    for invalid in [
        "reason EXIT_ERR info1 0 info2 0 int_info 0 int_info_err 0",
        "reason: invalid_guest_state ext_inf1: 0x0",
        "reason: 0xffffffff ext_inf1: 0x0",
        "reason UNKNOWN (4294967295) info1 0",
    ] {
        assert_eq!(
            inject(invalid),
            Kind::VmExitInject { invalid: true },
            "{invalid}"
        );
    }
    for valid in [
        "reason: interrupt ext_inf1: 0x0",
        "reason EXIT_NPF info1 200000006",
        "reason UNKNOWN (5)",
    ] {
        assert_eq!(
            inject(valid),
            Kind::VmExitInject { invalid: false },
            "{valid}"
        );
    }
    assert!(fields::parse(b"kvm_nested_vmexit_inject", b"ext_inf1: 0x0").is_err());
    assert_eq!(fields::parse(b"kvm_fpu", b"load"), Ok(None));
}

fn run(text: &str, opts: &Options) -> Import {
    import(text.as_bytes(), opts).unwrap()
}

fn ops(im: &Import, vcpu: u32) -> Vec<&'static str> {
    let v = im.vcpus.iter().find(|v| v.id == vcpu).unwrap();
    v.trace.op.iter().map(|&o| op::NAMES[o as usize]).collect()
}

fn skipped(im: &Import, key: &str) -> u64 {
    im.skipped
        .iter()
        .find(|(k, _)| k == key)
        .map_or(0, |(_, n)| *n)
}

const VMRUN: &str =
    "kvm_nested_vmrun: rip: 0x1 vmcb: 0x2 nrip: 0x3 int_ctl: 0x0 event_inj: 0x0 npt: on";

#[test]
fn svme_and_mode_rules() {
    let o = Options::default();
    // SVME known to be 0 (an EFER write cleared it): the VMRUN is skipped (#UD).
    let im = run(
        &format!("kvm_entry: vcpu 0\nkvm_msr: msr_write c0000080 = 0xd01\n{VMRUN}\n"),
        &o,
    );
    assert_eq!(ops(&im, 0), ["VMENTRY", "WRMSR_EFER"]);
    assert_eq!(
        skipped(&im, &format!("kvm_nested_vmrun: {}", why::NO_SVME)),
        1
    );
    // Nothing known: the capture began with SVME set.
    let im = run(
        &format!("kvm_entry: vcpu 0\n{VMRUN}\nkvm_nested_vmrun: rip: 0x1\n"),
        &o,
    );
    assert_eq!(ops(&im, 0), ["WRMSR_EFER", "VMENTRY", "VMRUN"]);
    assert_eq!(im.vcpus[0].start, Start::Svme);
    assert_eq!(
        skipped(&im, &format!("kvm_nested_vmrun: {}", why::IN_L2)),
        1
    );
    // The first nested event is an L2 exit: the capture began in L2.
    let text = "kvm_entry: vcpu 0\nkvm_nested_vmexit: vcpu 0 reason npf\n\
                kvm_nested_vmexit_inject: reason: npf\nkvm_nested_vmexit_inject: reason: npf\n\
                kvm_msr: msr_write c0000080 = 0x0\n";
    let im = run(text, &o);
    assert_eq!(im.vcpus[0].start, Start::Guest);
    assert_eq!(
        ops(&im, 0),
        [
            "WRMSR_EFER",
            "SET_NESTED_STATE",
            "VMENTRY",
            "VMEXIT",
            "WRMSR_EFER"
        ]
    );
    assert_eq!(
        skipped(&im, &format!("kvm_nested_vmexit_inject: {}", why::IN_L1)),
        1
    );
    // Without inference, the same capture keeps the reset state and skips what needs more.
    let im = run(
        text,
        &Options {
            infer_start: false,
            ..o
        },
    );
    assert_eq!(ops(&im, 0), ["VMENTRY", "WRMSR_EFER"]);
    assert_eq!(im.vcpus[0].start, Start::Reset);
    // [guest] on a kvm_entry is evidence too; L2's EFER write is skipped. Later, a kvm_entry
    // without [guest] in L2 is a forced leave, one with [guest] in L1 a restored nested state.
    let g = "kvm_entry: vcpu 0, rip 0x1 inj 0x0 inj_error_code 0x0[guest]\n";
    let h = "kvm_entry: vcpu 0, rip 0x1 inj 0x0 inj_error_code 0x0\n";
    let text = format!(
        "{g}kvm_msr: msr_write c0000080 = 0x1d01\n{h}{g}{h}kvm_msr: msr_write c0000080 = 0x0\n{g}"
    );
    let im = run(&text, &o);
    assert_eq!(
        ops(&im, 0),
        [
            "WRMSR_EFER",
            "SET_NESTED_STATE",
            "VMENTRY",
            "FORCED_LEAVE",
            "VMENTRY",
            "SET_NESTED_STATE",
            "VMENTRY",
            "FORCED_LEAVE",
            "VMENTRY",
            "WRMSR_EFER",
        ]
    );
    assert_eq!(skipped(&im, &format!("kvm_msr: {}", why::EFER_IN_L2)), 1);
    assert_eq!(skipped(&im, &format!("kvm_entry: {}", why::GUEST_FLAG)), 1);
}

#[test]
fn failed_vmrun_and_runs() {
    let o = Options::default();
    let text = format!(
        "q-1 [0] .... 1.000000: kvm_entry: vcpu 0\n\
         q-1 [0] .... 1.000010: kvm_exit: reason vmrun\n\
         q-1 [0] .... 1.000011: {VMRUN}\n\
         q-1 [0] .... 1.000011: kvm_nested_vmexit_inject: reason: invalid_guest_state ext_inf1: 0x0\n\
         q-1 [0] .... 1.000012: kvm_entry: vcpu 0\n\
         q-1 [0] .... 1.000012: kvm_exit: reason hlt\n\
         q-1 [0] .... 1.000013: kvm_exit: reason hlt\n\
         q-1 [0] .... 1.000014: kvm_entry: vcpu 0\n\
         q-1 [0] .... 1.000013: kvm_exit: reason hlt\n"
    );
    let im = run(&text, &o);
    assert_eq!(
        ops(&im, 0),
        [
            "WRMSR_EFER",
            "VMENTRY",
            "RUN",
            "VMRUN_FAIL",
            "VMENTRY",
            "VMENTRY"
        ]
    );
    assert_eq!(im.vcpus[0].trace.value[2], 10_000);
    assert_eq!(skipped(&im, &format!("kvm_exit: {}", why::SHORT)), 1);
    assert_eq!(skipped(&im, &format!("kvm_exit: {}", why::NO_ENTRY)), 1);
    assert_eq!(skipped(&im, &format!("kvm_exit: {}", why::BACKWARDS)), 1);
    // The rate, the event, the CPLs and reads are options.
    let o = Options {
        rate: 0.25,
        event: 0xC2,
        run_cpl: 0,
        vmrun_cpl: 3,
        reads: false,
        ..o
    };
    let im = run(
        &format!("{text}q-1 [0] .... 1.000020: kvm_msr: msr_read c0010201 = 0x1\n"),
        &o,
    );
    let t = &im.vcpus[0].trace;
    assert_eq!((t.value[2], t.key[2], t.cpl[2]), (3, 0xC2, 0)); // 10 us * 0.25, rounded
    assert_eq!(skipped(&im, &format!("kvm_msr: {}", why::COUNTER_READ)), 1);
}

#[test]
fn pmu_msrs() {
    let text = "kvm_entry: vcpu 0\n\
                kvm_msr: msr_write c0010003 = 0x1\nkvm_msr: msr_write c0010007 = 0x2\n\
                kvm_msr: msr_write c001020a = 0x3\nkvm_msr: msr_write c001020b = 0x4\n\
                kvm_msr: msr_write c001020c = 0x5\nkvm_msr: msr_write c0000301 = 0x3f\n\
                kvm_msr: msr_read c0010200 = 0x0\nkvm_msr: msr_read c001020b = 0x0\n\
                kvm_msr: msr_write c0000300 = 0x0\n";
    let im = run(text, &Options::default());
    let t = &im.vcpus[0].trace;
    let got: Vec<_> =
        t.op.iter()
            .zip(&t.pmc)
            .map(|(&o, &p)| (op::NAMES[o as usize], p))
            .collect();
    assert_eq!(
        got,
        [
            ("VMENTRY", 0),
            ("WRMSR_EVTSEL", 3),
            ("WRMSR_CTR", 3),
            ("WRMSR_EVTSEL", 5),
            ("WRMSR_CTR", 5),
            ("WRMSR_GLOBAL_CTRL", 0),
            ("READ", 5)
        ]
    );
    assert_eq!(skipped(&im, &format!("kvm_msr: {}", why::NOT_MODELLED)), 2);
    assert_eq!(skipped(&im, &format!("kvm_msr: {}", why::READ)), 1);
}

#[test]
fn tasks_give_vcpus() {
    let o = Options::default();
    // An event before its task shows its vCPU waits for it; QEMU's thread name is the last
    // resort; a task that never shows one has its events skipped.
    let text = "  t-7 [1] .... 1.0: kvm_msr: msr_write c0010200 = 0x1\n\
                  t-8 [1] .... 1.0: kvm_msr: msr_write c0010200 = 0x2\n\
                  t-7 [1] .... 1.1: kvm_entry: vcpu 4\n\
                  t-7 [1] .... 1.2: kvm_msr: msr_write c0010200 = 0x3\n\
                  CPU 2/KVM-9 [1] .... 1.3: kvm_msr: msr_write c0010200 = 0x4\n";
    let im = run(text, &o);
    assert_eq!(im.vcpus.iter().map(|v| v.id).collect::<Vec<_>>(), [2, 4]);
    assert_eq!(ops(&im, 4), ["WRMSR_EVTSEL", "VMENTRY", "WRMSR_EVTSEL"]);
    assert_eq!(im.vcpus[1].trace.value, [1, 0, 3]);
    assert_eq!(im.vcpus[0].trace.value, [4]);
    assert_eq!(skipped(&im, &format!("kvm_msr: {}", why::NO_VCPU)), 1);
    assert_eq!(im.kvm_events, 5);
}

#[test]
fn whole_files() {
    let o = Options::default();
    assert_eq!(
        import(b"\x17\x08\x44tracing6\0", &o),
        Err(FtraceError::TraceDat)
    );
    assert_eq!(
        import(b"kvm_entry: vcpu 0\n\0", &o),
        Err(FtraceError::Binary)
    );
    for bad in [
        Options { rate: 0.0, ..o },
        Options {
            rate: f64::NAN,
            ..o
        },
        Options {
            event: 1 << 20,
            ..o
        },
        Options { run_cpl: 4, ..o },
        Options { vmrun_cpl: 9, ..o },
    ] {
        assert!(
            matches!(import(b"", &bad), Err(FtraceError::Options(_))),
            "{bad:?}"
        );
    }
    let im = run("", &o);
    assert_eq!((im.lines, im.kvm_events, im.vcpus.len()), (0, 0, 0));
    // A long line full of brackets and colons stays linear.
    let long = "[1 ".repeat(1 << 18) + &": [2] ".repeat(1 << 16);
    assert_eq!(run(&long, &o).unparsed.len(), 1);
    let im = run("a\r\nb", &o);
    assert_eq!(im.lines, 2);
    assert_eq!(im.unparsed, [(1, "a".to_string()), (2, "b".to_string())]);
    let im = run(FIXTURES[0], &o);
    assert_eq!(im.lines, FIXTURES[0].lines().count());
    assert_eq!(
        im.mapped.iter().sum::<u64>(),
        im.vcpus.iter().map(|v| v.trace.len() as u64).sum::<u64>()
    );
}

/// A small deterministic generator (the tests need no crate for it).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_captures_import_to_valid_traces() {
    // Lines of every fixture, shuffled, dropped, duplicated, cut and byte-flipped: every vCPU
    // trace the importer makes validates, and nothing panics.
    let pool: Vec<&str> = FIXTURES.iter().flat_map(|f| f.lines()).collect();
    let mut rng = Lcg(15);
    for round in 0..400 {
        let mut text = Vec::new();
        for _ in 0..rng.below(80) {
            let line = pool[rng.below(pool.len())].as_bytes();
            let mut line = line.to_vec();
            match rng.below(6) {
                0 => line.truncate(rng.below(line.len() + 1)),
                1 if !line.is_empty() => {
                    let i = rng.below(line.len());
                    let junk = b" :[]0x-.#\tz\xff";
                    line[i] = junk[rng.below(junk.len())];
                }
                _ => {}
            }
            text.extend_from_slice(&line);
            text.push(b'\n');
        }
        let opts = Options {
            infer_start: round % 2 == 0,
            ..Options::default()
        };
        let im = import(&text, &opts).unwrap();
        for v in &im.vcpus {
            let t = v.trace.as_ref();
            if let Err(e) = trace::validate(&t, 6) {
                panic!(
                    "round {round}, vCPU {}: {e}\n{}",
                    v.id,
                    String::from_utf8_lossy(&text)
                );
            }
        }
    }
}
