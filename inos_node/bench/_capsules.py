"""Tiny WAT capsules the benchmarks use (the tests ship their own under tests/capsules/)."""

ECHO_WAT = """
(module
  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 1024))
  (func (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get $n)))
    (local.get $p))
  (func (export "run") (param $in i32) (param $len i32) (param $pp i32) (param $pl i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $in)) (i64.const 32)) (i64.extend_i32_u (local.get $len)))))
"""
