use super::*;
use crate::fuzz::gen::{Generator, Mix, Rng};
use crate::model::{filter, op, EN, GUEST_ONLY, OS, USR};

fn parse_str(s: &str) -> Result<TraceBuf, SyntaxError> {
    parse(s.as_bytes())
}

fn text_of(t: &TraceBuf) -> String {
    let mut out = Vec::new();
    write(&t.as_ref(), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn error(s: &str) -> SyntaxError {
    parse_str(s).expect_err("expected a syntax error")
}

#[test]
fn the_issue_s_examples_read() {
    let t = parse_str(
        "# a scenario\n\
         WRMSR_EVTSEL pmc=0 value=EN|OS|USR|G|event=0xc0\n\
         \n\
         WRMSR_EFER svme=1   # enable SVM\n\
         VMRUN cpl=3\n\
         RUN n=1000 event=0xc0 cpl=3\n\
         READ pmc=0\n",
    )
    .unwrap();
    assert_eq!(
        t.op,
        [
            op::WRMSR_EVTSEL,
            op::WRMSR_EFER,
            op::VMRUN,
            op::RUN,
            op::READ
        ]
    );
    assert_eq!(t.value[0], EN | OS | USR | GUEST_ONLY | 0xc0);
    assert_eq!((t.flag[1], t.cpl[2]), (1, 3));
    assert_eq!((t.value[3], t.key[3], t.cpl[3]), (1000, 0xc0, 3));
}

#[test]
fn the_spec_s_notation_reads() {
    let t = parse_str(
        "RUN(n=1000, key=0x0c0, cpl=3)\nSET_FILTER(allow, key=0x0c0)\nEMULATE(cpl=3, branch)\n\
         WRMSR_EVTSEL(pmc=1, value=0x100004300c0)\nset_nested_state guest_mode=1\n",
    )
    .unwrap();
    assert_eq!((t.value[0], t.key[0], t.cpl[0]), (1000, 0xc0, 3));
    assert_eq!((t.flag[1], t.key[1]), (filter::ALLOW, 0xc0));
    assert_eq!((t.cpl[2], t.flag[2]), (3, 1));
    assert_eq!(t.value[3], 0x100004300c0);
    assert_eq!(t.flag[4], 1);
}

#[test]
fn selectors_read_symbolically_and_as_numbers() {
    let t = parse_str(
        "WRMSR_EVTSEL pmc=0 value=event=0x1c0|umask=0x2|H|INT\n\
         WRMSR_EVTSEL pmc=0 value=0x400000|0x30000\n",
    )
    .unwrap();
    assert_eq!(
        t.value[0],
        0xc0 | 1 << 32 | 0x200 | crate::model::HOST_ONLY | crate::model::INT
    );
    assert_eq!(t.value[1], EN | OS | USR);
}

/// Random columns, including values in the fields an op ignores and the widest values.
fn random_columns(seed: u64, n: usize) -> TraceBuf {
    let mut rng = Rng::for_trace(seed, 0);
    let mut t = TraceBuf::default();
    for _ in 0..n {
        let w = [rng.next_u64(), rng.next_u64(), rng.next_u64()];
        let wide = |x: u64| if w[2] & 1 == 0 { x & 0xFF } else { x };
        t.op.push((w[0] % op::COUNT as u64) as u8);
        t.pmc
            .push((w[0] >> 8) as u8 & if w[2] & 2 == 0 { 7 } else { 0xFF });
        t.cpl
            .push((w[0] >> 16) as u8 & if w[2] & 4 == 0 { 3 } else { 0xFF });
        t.flag
            .push((w[0] >> 24) as u8 & if w[2] & 8 == 0 { 1 } else { 0xFF });
        t.key.push(wide(w[0] >> 32) as u32);
        t.value.push(if w[2] & 16 == 0 { wide(w[1]) } else { 0 });
    }
    t
}

#[test]
fn any_columns_round_trip() {
    for seed in 0..20 {
        let t = random_columns(seed, 2000);
        assert_eq!(parse_str(&text_of(&t)).unwrap(), t, "seed {seed}");
    }
}

#[test]
fn generated_traces_round_trip() {
    for mix in [Mix::default(), Mix::workload()] {
        let g = Generator::new(mix, 6).unwrap();
        for index in 0..20 {
            let t = g.trace(7, index, 500);
            assert_eq!(parse_str(&text_of(&t)).unwrap(), t);
        }
    }
}

#[test]
fn writing_uses_the_named_fields() {
    let t = parse_str(
        "WRMSR_EVTSEL pmc=2 value=0x100004300c0\nRUN n=5 event=0xc2 cpl=0\nEMULATE\n\
         SET_FILTER action=deny event=0xc0\nSET_FILTER action=none\nVMEXIT pmc=3\n",
    )
    .unwrap();
    assert_eq!(
        text_of(&t),
        "# svmpmu text trace\n\
         WRMSR_EVTSEL pmc=2 value=EN|OS|USR|G|event=0xc0\n\
         RUN n=5 event=0xc2 cpl=0\n\
         EMULATE cpl=0\n\
         SET_FILTER action=deny event=0xc0\n\
         SET_FILTER action=none\n\
         VMEXIT pmc=3\n"
    );
}

#[test]
fn an_unknown_op_has_no_text_form() {
    let mut t = random_columns(1, 10);
    t.op[4] = 200;
    assert_eq!(write(&t.as_ref(), &mut Vec::new()), Err(4));
}

#[test]
fn errors_name_the_line_the_column_and_what_was_expected() {
    let e = error("VMEXIT\n  FOO pmc=1\n");
    assert_eq!((e.line, e.column, e.record), (2, 3, 1));
    assert!(e.message.contains("expected an op"), "{}", e.message);

    let e = error("READ pmc=x\n");
    assert_eq!((e.line, e.column), (1, 10));
    assert!(
        e.message.contains("expected a number for pmc"),
        "{}",
        e.message
    );

    let e = error("READ pmc=300");
    assert!(
        e.message.contains("does not fit in the pmc column"),
        "{}",
        e.message
    );

    let e = error("READ pmc=0x");
    assert!(e.message.contains("expected a number"), "{}", e.message);

    let e = error("WRMSR_CTR pmc=0 value=99999999999999999999");
    assert!(
        e.message.contains("does not fit in 64 bits"),
        "{}",
        e.message
    );

    let e = error("RUN n=5 cpl=3");
    assert!(e.message.contains("RUN needs event="), "{}", e.message);
    assert_eq!(e.column, 14);

    let e = error("READ pmc=1 pmc=2");
    assert!(e.message.contains("twice"), "{}", e.message);
    assert_eq!(e.column, 12);

    let e = error("RUN n=1 value=2 event=1 cpl=0");
    assert!(e.message.contains("twice"), "{}", e.message);

    let e = error("READ counter=1");
    assert!(
        e.message
            .contains("unknown field 'counter': READ takes pmc"),
        "{}",
        e.message
    );

    let e = error("VMEXIT reason=1");
    assert!(
        e.message.contains("VMEXIT takes no fields"),
        "{}",
        e.message
    );

    let e = error("READ 1");
    assert!(e.message.contains("expected name=value"), "{}", e.message);

    let e = error("WRMSR_EVTSEL pmc=0 value=EN|FOO");
    assert_eq!(e.column, 29);
    assert!(
        e.message.contains("expected a selector term"),
        "{}",
        e.message
    );

    let e = error("WRMSR_EVTSEL pmc=0 value=EN|event=0x1000");
    assert!(e.message.contains("12 bits"), "{}", e.message);

    let e = error("WRMSR_EVTSEL pmc=0 value=umask=0x100");
    assert!(e.message.contains("8 bits"), "{}", e.message);

    let e = error("WRMSR_EVTSEL pmc=0 value=edge=1");
    assert!(
        e.message.contains("expected event= or umask="),
        "{}",
        e.message
    );

    let e = error("SET_FILTER action=block");
    assert!(
        e.message.contains("expected a filter action"),
        "{}",
        e.message
    );

    let e = error("\u{00e9}VMRUN");
    assert!(e.message.contains("expected an op"), "{}", e.message);
}

#[test]
fn blank_comment_and_crlf_lines_are_ignored() {
    let t = parse_str("\r\n# only a comment\n\t \nVMENTRY\r\n#\nRESET # done\n").unwrap();
    assert_eq!(t.op, [op::VMENTRY, op::RESET]);
    assert!(parse_str("").unwrap().op.is_empty());
}
