;; nan: makes NaNs with float arithmetic and returns their bits, little-endian, 28 bytes:
;;   [f32 0/0][f32 sqrt(-1)][f32 (sNaN with payload 0x200001) + 1][f64 0/0][f64 inf - inf]
;; On x86 the hardware produces 0xffc00000 for 0/0; with NaN canonicalisation every NaN result
;; is the canonical 0x7fc00000 / 0x7ff8000000000000, the same on every machine and every run.
(module
  (memory (export "memory") 1)
  ;; Bump allocator: hands out len bytes after the previous allocation and grows memory
  ;; when needed; traps (unreachable) if memory cannot grow.
  (global $bump (mut i32) (i32.const 1024))
  (func $alloc (export "alloc") (param $len i32) (result i32)
    (local $ptr i32) (local $end i64) (local $pages i64)
    (local.set $ptr (global.get $bump))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $ptr)) (i64.extend_i32_u (local.get $len))))
    (local.set $pages (i64.shr_u (i64.add (local.get $end) (i64.const 65535)) (i64.const 16)))
    (if (i64.gt_u (local.get $pages) (i64.extend_i32_u (memory.size)))
      (then
        (if (i32.eq
              (memory.grow (i32.wrap_i64 (i64.sub (local.get $pages) (i64.extend_i32_u (memory.size)))))
              (i32.const -1))
          (then unreachable))))
    (global.set $bump (i32.wrap_i64 (local.get $end)))
    (local.get $ptr))
  ;; The ABI result: ptr in the high 32 bits, len in the low 32 bits.
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
            (i64.extend_i32_u (local.get $len))))
  (func (export "run") (param i32 i32 i32 i32) (result i64)
    (local $out i32)
    (local.set $out (call $alloc (i32.const 28)))
    (f32.store offset=0 (local.get $out) (f32.div (f32.const 0) (f32.const 0)))
    (f32.store offset=4 (local.get $out) (f32.sqrt (f32.const -1)))
    (f32.store offset=8 (local.get $out)
      (f32.add (f32.reinterpret_i32 (i32.const 0x7fa00001)) (f32.const 1)))
    (f64.store offset=12 (local.get $out) (f64.div (f64.const 0) (f64.const 0)))
    (f64.store offset=20 (local.get $out) (f64.sub (f64.const inf) (f64.const inf)))
    (call $pack (local.get $out) (i32.const 28))))
