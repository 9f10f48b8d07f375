//! The floor of a per-record dispatch on random ops: the default mix's op sequence through a
//! `match` of 15 arms, each a one-line update, with none of the model's work. What random
//! replay cannot beat while it jumps on each record's op (README "Performance"):
//! `cargo run --release --no-default-features --example dispatch_floor`.
use _core::gen::{Generator, Mix};
use std::time::Instant;

fn main() {
    let n = 10_000_000;
    let buf = Generator::new(Mix::default(), 6)
        .expect("mix")
        .trace(1, 0, n);
    let t = buf.as_ref();
    let (ops, values, keys) = (&t.op[..n], &t.value[..n], &t.key[..n]);
    let mut best = f64::INFINITY;
    let mut acc = [0u64; 16];
    for _ in 0..5 {
        let start = Instant::now();
        for i in 0..n {
            let v = values[i];
            match ops[i] {
                0 => acc[0] = acc[0].wrapping_mul(3) ^ v,
                1 => acc[1] = acc[1].wrapping_add(v) ^ 7,
                2 => acc[2] ^= v.rotate_left(3),
                3 => acc[3] = acc[3].wrapping_sub(v),
                4 => acc[4] = acc[4].wrapping_mul(5).wrapping_add(1),
                5 => acc[5] = acc[5].wrapping_add(2),
                6 => acc[6] = acc[6].rotate_left(1) ^ v,
                7 => acc[7] = acc[7].wrapping_add(v >> 3),
                8 => acc[8] ^= v << 2,
                9 => acc[9] = acc[9].wrapping_add(keys[i] as u64),
                10 => acc[10] = acc[10].wrapping_add(v).rotate_left(7),
                11 => acc[11] = acc[11].wrapping_add(v.wrapping_mul(3)),
                12 => acc[12] ^= 0x55,
                13 => acc[13] = acc[13].wrapping_add(acc[11]),
                _ => acc[14] = 0,
            }
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "dispatch floor: {:.1} M records/s ({:.2} ns a record; checksum {:x})",
        n as f64 / best / 1e6,
        best / n as f64 * 1e9,
        acc.iter().fold(0, |a, &b| a ^ b)
    );
}
