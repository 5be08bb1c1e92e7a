//! Compile-time diagnostics of the attribute macros (trybuild). Every
//! `fail/` case has a `.stderr` with the exact message and span; every
//! `pass/` case must build and run. The `.stderr` files are written for the
//! toolchain in `rust-toolchain`-less CI (rustc 1.95): regenerate them with
//! `TRYBUILD=overwrite cargo test --test ui` after a compiler upgrade and
//! review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*/fail/*.rs");
    t.pass("tests/ui/*/pass/*.rs");
}
